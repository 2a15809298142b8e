"""The agent's search tool over a real (BM25) index: batching, dedupe, budget, argument errors,
and backend failures rendered as observations."""

from __future__ import annotations

import json

import pytest

from sleuth.search.index import build_index, open_index
from sleuth.search.base import SearchEngine, SearchError, SearchResponse
from sleuth.tools.search import SearchTool

ROWS = [
    {"id": f"r{i}", "title": t, "text": x} for i, (t, x) in enumerate([
        ("Nile", "The Nile is a major river in northeastern Africa, flowing into the Mediterranean Sea."),
        ("Amazon River", "The Amazon River in South America is the largest river by discharge volume."),
        ("Danube", "The Danube is the second-longest river in Europe, flowing through Vienna and Budapest."),
        ("Mississippi River", "The Mississippi River is the main river of the largest drainage basin in "
                              "North America."),
        ("Yangtze", "The Yangtze is the longest river in Asia and flows through China."),
        ("Rhine", "The Rhine is a river in Europe that begins in the Swiss Alps and flows to the North Sea."),
        ("Volga", "The Volga is the longest river in Europe, flowing through Russia into the Caspian Sea."),
        ("Mount Fuji", "Mount Fuji is an active volcano and the highest mountain in Japan."),
        ("Kilimanjaro", "Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa."),
    ])
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLEUTH_HOME", str(home))
    src = home / "rivers.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    build_index(src, dense=False, progress=False)  # BM25 only: these tests are about the tool, not the model
    yield open_index("rivers").engine("lexical")
    mp.undo()


def test_schema_and_batch(engine):
    tool = SearchTool(engine, k_per_query=2, max_queries=4)
    fn = tool.schema()["function"]
    assert fn["name"] == "search" and fn["parameters"]["required"] == ["queries"]
    assert fn["parameters"]["properties"]["queries"]["maxItems"] == 4
    res = tool({"queries": ["highest mountain in Japan", "river flowing through Vienna"]})
    assert res.ok, res.text
    assert res.text.startswith('Query 1: "highest mountain in Japan"\n[1] Mount Fuji\n    corpus://rivers/r7\n')
    assert 'Query 2: "river flowing through Vienna"\n[3] Danube' in res.text
    assert res.data["queries"] == ["highest mountain in Japan", "river flowing through Vienna"]
    assert res.data["urls"][0] == "corpus://rivers/r7" and res.data["urls"][2] == "corpus://rivers/r2"
    assert len(res.data["urls"]) == 4 and res.seconds > 0


def test_dedupe_across_queries(engine):
    tool = SearchTool(engine, k_per_query=3)
    res = tool({"queries": ["longest river in Europe", "Volga river Russia", "longest river in Europe"]})
    urls = res.data["urls"]
    assert len(urls) == len(set(urls))
    assert urls.count("corpus://rivers/r6") == 1            # the Volga, shown once under query 1
    first_q2 = res.text.index('Query 2')
    assert res.text.index("corpus://rivers/r6") < first_q2
    assert "(also matched [" in res.text[first_q2:]          # query 2 says it found an earlier result
    assert "(same as query 1)" in res.text                  # the repeated query is not run again


def test_result_budget_round_robin(engine):
    tool = SearchTool(engine, k_per_query=3, max_results=4)
    res = tool({"queries": ["river Europe", "volcano mountain"]})
    assert len(res.data["urls"]) == 4
    by_query = [r["query"] for r in res.data["results"]]
    assert by_query.count(0) == 2 and by_query.count(1) == 2  # both queries get a share of the budget
    assert "more results not shown: at most 4 per call" in res.text


def test_no_results_query(engine):
    res = SearchTool(engine)({"queries": ["zzyzx qwertyuiop", "Kilimanjaro"]})
    assert res.ok
    assert 'Query 1: "zzyzx qwertyuiop"\n(no results)' in res.text
    assert "Kilimanjaro" in res.text


@pytest.mark.parametrize("args,message", [
    ("highest mountain", "JSON object"),
    ({"query": "highest mountain"}, '"queries": a list of strings'),
    ({"queries": "highest mountain"}, "must be array"),
    ({"queries": []}, "at least one query"),
    ({"queries": ["a"] * 9}, "at most 8 queries"),
    ({"queries": ["ok", 3]}, "every item of 'queries' must be string"),
    ({"queries": ["ok", "  "]}, "query 2 is empty"),
    ({"queries": ["ok"], "k": 3}, "no argument 'k'"),
    ({}, "missing required argument 'queries'"),
])
def test_bad_arguments_are_clear_errors(engine, args, message):
    res = SearchTool(engine)(args)
    assert not res.ok and res.error == "bad_arguments"
    assert message in res.text, res.text


class FlakyEngine(SearchEngine):
    """A backend whose queries containing 'boom' fail, the way a web API returns a 5xx."""
    name = "flaky"

    def __init__(self, inner):
        self.inner = inner

    def search(self, query, k=10):
        if "boom" in query:
            raise SearchError("HTTP 503 from backend")
        return self.inner.search(query, k)


class BrokenEngine(SearchEngine):
    name = "broken"

    def search_batch(self, queries, k=10) -> list[SearchResponse]:
        raise ConnectionError("connection refused")


def test_backend_errors_are_observations(engine):
    res = SearchTool(FlakyEngine(engine))({"queries": ["boom query", "highest mountain in Africa"]})
    assert res.ok  # one query still worked
    assert 'Query 1: "boom query"\n(search failed: HTTP 503 from backend)' in res.text
    assert "Kilimanjaro" in res.text and res.data["urls"]

    res = SearchTool(BrokenEngine())({"queries": ["a", "b"]})
    assert not res.ok and res.error == "backend_error"
    assert res.text.count("(search failed: ConnectionError: connection refused)") == 2
    assert res.data["urls"] == []


def test_prompt_examples_show_observations_exactly_as_the_tool_renders_them():
    """A worked example whose observations look different from real ones teaches the wrong place to look."""
    import re

    from sleuth.agent import load_prompt
    from sleuth.search.base import SearchResult

    msgs = load_prompt("short-2shot")
    for i, m in enumerate(msgs):
        if m["role"] != "user" or not m["content"].startswith("<observation>"):
            continue
        body = m["content"][len("<observation>\n"):-len("\n</observation>")]
        query = re.search(r'<search>(.*)</search>', msgs[i - 1]["content"]).group(1)
        shown = re.findall(r"\[\d+\] (.*)\n    (\S+)\n    (.*)", body)
        assert shown, body

        class Replay(SearchEngine):
            def search(self, q, k=10):
                return [SearchResult(t, u, s) for t, u, s in shown] if q == query else []

        assert SearchTool(Replay(), k_per_query=3)({"queries": [query]}).text == body
