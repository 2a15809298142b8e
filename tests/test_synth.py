"""The synthesis engine on small hand-written corpora: link graph, generators, every funnel stage."""

from __future__ import annotations

import json
import random

import pytest

from sleuth.search.corpus import Passage
from sleuth.synth.generate import (Fact, GenStats, GraphConfig, LinkGraph, Mention, ask, generate_bridges,
                                   generate_comparisons, generate_lookups, profile, relation_of)
from sleuth.synth.pipeline import SynthConfig, parse_mix, synthesize, write_outputs
from sleuth.synth.reasoning import generate_reasoning, run_program, run_programs
from sleuth.synth.validate import (EvalIndex, SynthError, _tokens, check_closed_book, check_dedup, check_leak,
                                   check_pass_at_n, check_span, check_unique)
from sleuth.tasks.task import Task

P = Passage


def film_corpus() -> list[Passage]:
    return [
        P("f1", "Harbor Lights", "Harbor Lights is a 1931 American drama film directed by Walter Brenton. "
                                 "It stars Marion Kell and Oscar Delmar."),
        P("f2", "Silent Tide", "Silent Tide is a 1927 American silent film directed by Walter Brenton. "
                               "It was shot near Port Alden."),
        P("w1", "Walter Brenton", "Walter Brenton (2 May 1890 – 7 July 1955) was an American film director. "
                                  "He directed Harbor Lights."),
        P("m1", "Marion Kell", "Marion Kell (12 March 1901 – 4 June 1968) was an American actress. "
                               "She grew up in Port Alden."),
        P("o1", "Oscar Delmar", "Oscar Delmar (9 October 1895 – 24 April 1960) was a Canadian stage actor. "
                                "He was born in Lake Verity."),
        P("t1", "Port Alden", "Port Alden is a town in Grey County, Ontario. The population was 4,512 at the "
                              "2011 census."),
        P("t2", "Lake Verity", "Lake Verity is a town in Bruce County, Ontario. The population was 1,208 at the "
                               "2011 census."),
        P("r1", "Alden River", "The Alden River is a river in Ontario. It is 120 km long and flows through "
                               "Port Alden."),
    ]


@pytest.fixture(scope="module")
def graph() -> LinkGraph:
    return LinkGraph(film_corpus())


def no_eval() -> list[tuple[str, str]]:
    return [("e1", "What is the capital of France?")]


def quiet(**kw) -> SynthConfig:
    kw.setdefault("progress", False)
    return SynthConfig(**kw)


# ------------------------------------------------------------------------------------------ link graph
def test_link_graph_exact_title_mentions(graph):
    assert {m.title for m in graph.linked("f1")} == {"Walter Brenton", "Marion Kell", "Oscar Delmar"}
    assert {m.title for m in graph.linked("m1")} == {"Port Alden"}
    assert sorted(graph.inbound["Walter Brenton"]) == ["f1", "f2"]
    men = graph.linked("o1")[0]
    assert graph.passages["o1"].text[men.start:men.end] == "Lake Verity"


def test_link_graph_word_boundaries_case_length_and_common_words():
    ps = [P("a", "Marion Kell", "Marion Kell was an American actress."),
          P("b", "Notes", "Marion Kellerman and marion kell are other people. Ox and Water are here."),
          P("c", "Ox", "Ox is a river."),
          P("d", "Water", "Water is a liquid. Most water is salty; water boils; water freezes."),
          P("e", "Blue Harbor (film)", "Blue Harbor is a film."),
          P("f", "Orbits", "Blue Harbor orbits the Sun. Blue Harbor (film) is close.")]
    g = LinkGraph(ps)
    assert g.linked("b") == []          # no partial word, no lower case, "Ox" too short, "Water" common
    assert "Ox" not in g.surfaces and "Water" not in g.surfaces and "Marion Kell" in g.surfaces
    assert "Orbits" not in g.surfaces     # "orbits" occurs in lower case: a common word, not a name
    # A disambiguated title is mentioned by its surface form, once per passage.
    assert [m.title for m in g.linked("f")] == ["Blue Harbor (film)"]


def test_link_graph_ignores_matches_inside_longer_names():
    ps = [P("a", "Port Alden", "Port Alden is a town."),
          P("b", "Gulf Wars (1990 film)", "Gulf Wars is a film."),
          P("c", "Farewell (2009 film)", "Farewell is a film."),
          P("d", "Notes", "The Port Alden Harbour and A Farewell to Arms and Old Port Alden are elsewhere."),
          P("e", "Trip", "Port Alden lies north. In Port Alden, Gulf Wars was shot. We left Port Alden.")]
    g = LinkGraph(ps)
    assert g.linked("d") == []
    assert "Farewell" not in g.surfaces                  # one bare word with a disambiguation: too vague
    assert [m.title for m in g.linked("e")] == ["Port Alden", "Gulf Wars (1990 film)"]


def test_link_graph_hub_cutoff():
    ps = [P(f"p{i}", f"Town Number {i}", f"Town Number {i} is a town in Big Country.") for i in range(30)]
    ps.append(P("bc", "Big Country", "Big Country is a country."))
    assert len(LinkGraph(ps, GraphConfig(max_df=1.0)).inbound["Big Country"]) == 30
    assert "Big Country" not in LinkGraph(ps, GraphConfig(max_df=0.1)).inbound   # 30 > max(20, 3.1)


def test_profiles_extract_definitions_and_facts(graph):
    f1 = graph.profiles["f1"]
    assert f1.type_phrase == "American drama film"                  # the year is dropped: it would leak
    assert f1.facts["release_year"].value == "1931" and f1.facts["release_year"].verb == "released"
    assert f1.facts["creator"].value == "Walter Brenton"
    o1 = graph.profiles["o1"]
    assert o1.is_person and o1.type_phrase == "Canadian stage actor"
    assert o1.facts["birth_date"].parsed == (1895, 10, 9) and o1.facts["death_year"].value == "1960"
    t1 = graph.profiles["t1"]
    assert t1.facts["location"].value == "Grey County"
    assert "Grey County, Ontario" in t1.facts["location"].extra["alternatives"]
    assert t1.facts["population"].parsed == 4512 and t1.facts["population"].extra["census"] == "2011"
    assert graph.profiles["r1"].facts["length"].parsed == 120.0
    # Every fact value is the exact span at its offset.
    for pid, pr in graph.profiles.items():
        for f in pr.facts.values():
            assert graph.passages[pid].text[f.start:f.start + len(f.value)] == f.value
    # Uncertain lifespans give no dates.
    assert "birth_year" not in profile(P("x", "Old Man", "Old Man (c. 1300 – 1369) was a prince.")).facts


# ------------------------------------------------------------------------------------------ generators
def test_bridge_questions_hide_the_path_and_cite_the_last_passage(graph):
    tasks = list(generate_bridges(graph, 10, 2, random.Random(0), GenStats()))
    assert tasks
    for t in tasks:
        last = graph.passages[t.metadata["answer_pid"]]
        assert t.answers[0] in last.text
        assert last.title not in t.question                      # the bridge entity is only described
        assert t.question.startswith(("When", "In what", "Who", "Where", "What"))
        assert graph.passages[t.metadata["supporting_ids"][0]].title in t.question
        assert t.dataset == "synth-bridge-2hop" and t.metadata["hops"] == 2


def test_relation_phrasing_names_the_hidden_entity_by_its_role(graph):
    text = "Harbor Lights is a 1931 film directed by Walter Brenton. It stars Marion Kell and Oscar Delmar."
    at = lambda title: Mention(title, text.index(title), text.index(title) + len(title))  # noqa: E731
    assert relation_of(text, at("Walter Brenton")) == "director"
    assert relation_of(text, at("Marion Kell")) is None            # "stars" names no single role
    listed = "Dusk is a novel written by Ann Loy and Ben Marr."
    assert relation_of(listed, Mention("Ann Loy", 26, 33)) is None  # one of several writers
    assert relation_of("Dusk is a 1990 novel by Ann Loy.", Mention("Ann Loy", 24, 31)) == "author"

    tasks = list(generate_bridges(graph, 10, 2, random.Random(0), GenStats(), phrasing="relation"))
    assert tasks
    for t in tasks:   # only the directed-by link reads as a role: every question asks about Walter Brenton
        assert "the director of " in t.question and "Walter Brenton" not in t.question
        assert t.metadata["supporting_titles"][1] == "Walter Brenton"
        assert t.answers[0] in ("2 May 1890", "7 July 1955")
        assert t.metadata["pattern"]["refs"][0]["hops"] == [{"type": None, "cloze": None, "relation": "director"}]
        # the funnel's uniqueness check executes the role-based pattern over the graph
        assert check_unique([t], graph)[1].n_out == 1
    # the type-phrased generator (the default) never records a role
    assert all("relation" not in h for t in generate_bridges(graph, 10, 2, random.Random(0), GenStats())
               for h in t.metadata["pattern"]["refs"][0]["hops"])
    with pytest.raises(ValueError, match="phrasing"):
        SynthConfig(phrasing="natural").check()


def test_three_hop_bridge():
    ps = film_corpus()
    ps[3] = P("m1", "Marion Kell", "Marion Kell (12 March 1901 – 4 June 1968) was an American actress. "
                                   "She grew up in Port Alden.")
    g = LinkGraph(ps)
    tasks = list(generate_bridges(g, 5, 3, random.Random(1), GenStats()))
    assert tasks
    for t in tasks:
        assert len(t.metadata["supporting_ids"]) == 3
        assert t.question.count("The article on") == 2
        for title in t.metadata["supporting_titles"][1:]:
            assert title not in t.question


def test_lookup_questions_name_the_entity_and_its_passage_states_the_answer(graph):
    tasks = list(generate_lookups(graph, 20, random.Random(0), GenStats()))
    assert tasks and len({t.id for t in tasks}) == len(tasks)
    for t in tasks:
        p = graph.passages[t.metadata["answer_pid"]]
        assert p.title in t.question and t.answers[0] in p.text          # one hop: search the name, read
        assert t.dataset == "synth-lookup" and t.metadata["hops"] == 1
        assert t.metadata["supporting_ids"] == [p.id]
        if t.metadata["fact"].startswith(("birth", "death")):
            assert graph.profiles[p.id].is_person                       # no "when did that town die?"
    facts = {(t.metadata["supporting_titles"][0], t.metadata["fact"]): t.answers for t in tasks}
    if ("Marion Kell", "birth_date") in facts:
        assert "12 March 1901" in facts[("Marion Kell", "birth_date")]


def test_creator_questions_use_the_active_verb():
    f = Fact("creator", "Ann Lee", 0, "entity", verb="written")
    assert ask(f, "Blue Road") == "Who wrote Blue Road?"
    assert ask(Fact("creator", "Ann Lee", 0, "entity", verb="directed"), "Blue Road") == "Who directed Blue Road?"


def test_mix_parsing_and_lookup_only_pipeline():
    assert parse_mix("lookup=1") == {"lookup": 1.0}
    assert parse_mix("bridge=0.5, comparison=0.5") == {"bridge": 0.5, "comparison": 0.5}
    for bad in ("lookup", "lookup=x"):
        with pytest.raises(ValueError, match="type=share"):
            parse_mix(bad)
    with pytest.raises(ValueError, match="mix"):
        quiet(mix={"trivia": 1.0}).check()
    tasks, funnel = synthesize(film_corpus(), quiet(n=10, mix={"lookup": 1.0}), eval_questions=no_eval())
    assert tasks and {t.dataset for t in tasks} == {"synth-lookup"}
    assert funnel.generation["quotas"] == {"lookup": 10, "bridge": 0}


def test_comparison_answer_is_the_earlier_entity(graph):
    tasks = list(generate_comparisons(graph, 20, random.Random(0), GenStats()))
    assert tasks
    births = {"Walter Brenton": 1890, "Marion Kell": 1901, "Oscar Delmar": 1895}
    for t in tasks:
        if t.metadata["fact"] == "birth" and "first" in t.question:
            a, b = t.metadata["supporting_titles"]
            assert t.answers[0] == min((a, b), key=births.get)


def test_reasoning_answers_are_computed_by_running_code(graph):
    stats = GenStats()
    tasks = generate_reasoning(graph, 12, random.Random(0), stats)
    kinds = {t.metadata["kind"] for t in tasks}
    assert {"age", "years-between", "difference", "conversion"} <= kinds, stats.rejected
    age = {"Walter Brenton": "65", "Marion Kell": "67", "Oscar Delmar": "64"}   # Delmar's birthday not reached
    years = {"Harbor Lights": 1931, "Silent Tide": 1927, "Walter Brenton": 1890, "Marion Kell": 1901,
             "Oscar Delmar": 1895}
    for t in tasks:
        kind, facts = t.metadata["kind"], t.metadata["facts"]
        assert run_program(t.metadata["program"]) == t.metadata["program_output"] == t.answers[0]
        if kind == "age":
            assert t.answers[0] == age[facts[0]["title"]]
        elif kind == "years-between":
            assert t.answers[0] == str(abs(years[facts[0]["title"]] - years[facts[1]["title"]]))
        elif kind == "difference":
            assert t.answers == ["3304", "3,304"]
        elif kind == "conversion":
            assert t.answers == ["75"] and "miles" in t.question       # 120 km = 74.56 mi


def test_program_runner_survives_bad_programs():
    assert run_programs(["print(6 * 7)", "raise SystemExit(3)", "while True: pass", "print('ok')"],
                        timeout=0.5) == ["42", None, None, "ok"]
    assert run_program("import sys; print(sys.flags.isolated)") == "1"


# ------------------------------------------------------------------------------------------ the funnel
def _task(question: str, answers: list[str], pid: str, span: str, **meta) -> Task:
    md = {"type": "bridge", "evidence": [{"pid": pid, "span": span, "role": "answer"}], **meta}
    return Task(id=f"t-{abs(hash(question)) % 10**8}", question=question, answers=answers, dataset="synth-x",
                metadata=md)


def test_span_stage(graph):
    good = _task("When was the director born?", ["2 May 1890"], "w1", "2 May 1890")
    bad = _task("When was the actress born?", ["12 May 1901"], "m1", "12 May 1901")
    wrong_answer = _task("Which year?", ["1931"], "f1", "American")
    kept, st = check_span([good, bad, wrong_answer], graph.passages)
    assert kept == [good] and st.n_in == 3 and st.n_out == 1
    assert st.rejected == {"answer not a span of its passage": 2}
    link = _task("When?", ["2 May 1890"], "w1", "2 May 1890")
    link.metadata["evidence"].insert(0, {"pid": "f1", "span": "Walter Brentano", "role": "link"})
    assert check_span([link], graph.passages)[1].rejected == {"link not a span of its passage": 1}


def test_unique_stage_rejects_ambiguous_descriptions():
    ps = film_corpus()
    ps[0] = P("f1", "Harbor Lights", "Harbor Lights is a 1931 American drama film directed by Walter Brenton. "
                                     "It stars Marion Kell and Ruth Vane.")
    ps.append(P("v1", "Ruth Vane", "Ruth Vane (3 January 1899 – 1 May 1970) was an American actress."))
    g = LinkGraph(ps)
    q = "When was the American actress mentioned in the article on Harbor Lights born?"
    vague = _task(q, ["12 March 1901"], "m1", "12 March 1901", pattern={
        "refs": [{"start": "Harbor Lights", "hops": [{"type": "American actress", "cloze": None}]}],
        "facts": ["birth_date"]})
    clued = _task(q + " (clued)", ["12 March 1901"], "m1", "12 March 1901", pattern={
        "refs": [{"start": "Harbor Lights", "hops": [{"type": "American actress", "cloze": "It stars ___ and"}]}],
        "facts": ["birth_date"]})
    kept, st = check_unique([vague, clued], g)
    assert kept == [clued]
    assert st.rejected == {"ambiguous: several answers fit the description": 1}
    # The generator itself adds the clue when the type alone is ambiguous ...
    auto = [t for t in generate_bridges(g, 40, 2, random.Random(0), GenStats(), cloze_mode="auto")
            if "American actress" in t.question]
    assert auto and all("in the words" in t.question for t in auto)
    assert check_unique(auto, g)[1].n_out == len(auto)
    # ... and without it the funnel catches the ambiguity.
    never = [t for t in generate_bridges(g, 40, 2, random.Random(0), GenStats(), cloze_mode="never")
             if "American actress" in t.question]
    assert never and check_unique(never, g)[1].n_out == 0


def test_unique_stage_rejects_a_title_whose_passages_disagree():
    ps = film_corpus() + [P("w2", "Walter Brenton", "Walter Brenton (3 May 1891 – 7 July 1955) was an "
                                                     "American film director.")]
    g = LinkGraph(ps)
    t = _task("When was Walter Brenton born?", ["2 May 1890"], "w1", "2 May 1890",
              pattern={"refs": [{"start": "Walter Brenton", "hops": []}], "facts": ["birth_date"]})
    kept, st = check_unique([t], g)
    assert kept == [] and st.rejected == {"ambiguous: same title, different values": 1}


def test_leak_stage():
    leaky = _task("When was the man born on 2 May 1890 born?", ["2 May 1890"], "w1", "2 May 1890")
    hidden = _task("When was the director of Walter Brenton's film born?", ["1890"], "w1", "1890",
                   hidden=["Walter Brenton"])
    fine = _task("When was the American film director mentioned in the article on Harbor Lights born?",
                 ["2 May 1890"], "w1", "2 May 1890", hidden=["Walter Brenton"])
    cmp_ok = _task("Who was born first, Marion Kell or Oscar Delmar?", ["Oscar Delmar"], "o1", "Oscar Delmar",
                   type="comparison", hidden=["1901", "1895"])
    cmp_leak = _task("Who was born first, Marion Kell (1901) or Oscar Delmar?", ["Oscar Delmar"], "o1",
                     "Oscar Delmar", type="comparison", hidden=["1901", "1895"])
    kept, st = check_leak([leaky, hidden, fine, cmp_ok, cmp_leak])
    assert kept == [fine, cmp_ok]
    assert st.rejected == {"answer in question": 1, "hidden entity or value in question": 2}


def test_closed_book_stage_rejects_what_the_model_knows():
    a = _task("When was the director born?", ["2 May 1890", "May 2, 1890"], "w1", "2 May 1890")
    b = _task("How far is it?", ["75"], "r1", "120")
    knows = {a.question: "He was born on May 2, 1890.", b.question: "about 80"}
    kept, st = check_closed_book([a, b], lambda qs: [knows[q] for q in qs])
    assert kept == [b] and st.rejected == {"answered without tools": 1}
    assert a.metadata["funnel"]["closed_book"]["correct"] is True
    with pytest.raises(SynthError, match="1 answers for 2"):
        check_closed_book([a, b], lambda qs: ["x"])
    with pytest.raises(SynthError, match="closed-book solver failed"):
        check_closed_book([a, b], lambda qs: 1 / 0)


def test_pass_at_n_thresholds_with_scripted_solver():
    tasks = [_task(f"Question number {k}?", ["right"], "w1", "x") for k in range(5)]
    script = {t.question: ["right"] * k + ["wrong"] * (4 - k) for k, t in enumerate(tasks)}   # k of 4 solved
    solver = lambda qs, n: [script[q][:n] for q in qs]  # noqa: E731
    kept, st = check_pass_at_n(tasks, solver, 4, 0.25, 0.75)
    assert [t.metadata["funnel"]["pass_at_n"]["solved"] for t in kept] == [1, 2, 3]
    assert st.rejected == {"too hard (pass rate below minimum)": 1, "too easy (pass rate above maximum)": 1}
    kept, _ = check_pass_at_n(tasks, solver, 4, 0.5, 1.0)
    assert [t.metadata["funnel"]["pass_at_n"]["solved"] for t in kept] == [2, 3, 4]
    with pytest.raises(SynthError, match="4 answers for each"):
        check_pass_at_n(tasks, lambda qs, n: [["right"]] * len(qs), 4, 0.25, 0.75)
    with pytest.raises(ValueError):
        check_pass_at_n(tasks, solver, 4, 0.8, 0.2)


def test_dedup_against_an_eval_set():
    evals = [("dev-1", "When was the American film director of Harbor Lights born?", ["2 May 1890"]),
             ("dev-2", "Who was born first, Marion Kell or Oscar Delmar?", ["Oscar Delmar"]),
             ("dev-3", "What is the capital of France?", ["Paris"])]
    index = EvalIndex(evals, threshold=0.6)
    exact = _task("Who was born first, Marion Kell or Oscar Delmar?", ["Oscar Delmar"], "o1", "Oscar Delmar")
    near = _task("Who was born earlier, Marion Kell or Oscar Delmar?", ["Oscar Delmar"], "o1", "Oscar Delmar")
    rephrased = _task("When was the director mentioned in the article on Harbor Lights born?", ["2 May 1890"],
                      "w1", "2 May 1890")
    other = _task("How old was Marion Kell at the time of death?", ["67"], "m1", "1901")
    kept, st = check_dedup([exact, near, rephrased, other], index)
    assert kept == [other]
    assert st.rejected["near-duplicate of an evaluation question"] == 2
    assert exact.metadata["funnel"]["dedup"] == {"nearest_eval": "dev-2", "jaccard": 1.0}
    assert rephrased.metadata["funnel"]["dedup"]["same_answer_eval"] == "dev-1"


def test_dedup_drops_repeated_generated_questions():
    index = EvalIndex([("dev-3", "What is the capital of France?", ["Paris"])], threshold=0.6)
    a = _task("How old was Marion Kell at the time of death?", ["67"], "m1", "1901")
    b = _task("How old was  marion kell at the time of death?", ["67"], "m1", "1901")   # same question again
    kept, st = check_dedup([a, b], index)
    assert kept == [a]
    assert st.rejected["repeats an earlier generated question"] == 1


def test_prefix_filtered_jaccard_equals_brute_force():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    evals = [(f"e{i}", " ".join(rng.sample(vocab, rng.randint(3, 12)))) for i in range(200)]
    for threshold in (0.3, 0.6, 0.9):
        index = EvalIndex(evals, threshold)
        for _ in range(60):
            q = " ".join(rng.sample(vocab, rng.randint(3, 12)))
            s = _tokens(q)
            best = max(len(s & _tokens(e)) / len(s | _tokens(e)) for _, e in evals)
            j, _ = index.nearest(q)
            assert (j > 0) == (best >= threshold) and (j == 0 or abs(j - best) < 1e-12)


# ------------------------------------------------------------------------------------------ the pipeline
def test_pipeline_offline_records_skipped_stages(tmp_path):
    tasks, funnel = synthesize(film_corpus(), quiet(n=30, seed=0), eval_questions=no_eval())
    assert tasks and funnel.candidates >= len(tasks)
    st = {s.name: s for s in funnel.stages}
    assert [s.name for s in funnel.stages] == ["span", "unique", "leak", "dedup", "hops", "closed_book", "pass_at_n"]
    assert st["hops"].status == st["closed_book"].status == st["pass_at_n"].status == "skipped"
    for t in tasks:
        assert t.metadata["seed"] == 0 and t.metadata["funnel"]["closed_book"] == "skipped"
        assert t.metadata["supporting_ids"] and t.metadata["generator"].startswith("sleuth.synth")
    out, summary = write_outputs(tasks, funnel, tmp_path / "tasks.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [t.id for t in tasks]
    s = json.loads(summary.read_text())
    assert summary.name == "tasks.funnel.json"
    assert s["skipped_stages"] == ["hops", "closed_book", "pass_at_n"] and s["difficulty_filtered"] is False
    assert s["kept"] == len(tasks) and sum(s["kept_by_dataset"].values()) == len(tasks)


def test_pipeline_is_deterministic_given_the_seed():
    a, _ = synthesize(film_corpus(), quiet(n=30, seed=7), eval_questions=no_eval())
    b, _ = synthesize(film_corpus(), quiet(n=30, seed=7), eval_questions=no_eval())
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]


def test_pipeline_runs_the_solver_stages():
    tasks, funnel = synthesize(film_corpus(), quiet(n=30, seed=0, pass_n=2, pass_min=0.5, pass_max=0.5),
                               closed_book_solver=lambda qs: ["I do not know"] * len(qs),
                               tool_solver=lambda qs, n: [["1931", "no idea"] for _ in qs],
                               eval_questions=no_eval())
    st = {s.name: s for s in funnel.stages}
    assert st["closed_book"].status == "ran" and st["closed_book"].n_out == st["closed_book"].n_in
    assert st["pass_at_n"].status == "ran"
    assert tasks and all(t.answers[0] == "1931" or "1931" in t.answers for t in tasks)   # solved 1 of 2


def test_bad_config_and_corpus_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="hops"):
        synthesize(film_corpus(), quiet(hops=(5,)), eval_questions=no_eval())
    with pytest.raises(SynthError, match="no passages"):
        synthesize([], quiet(), eval_questions=no_eval())
    with pytest.raises(FileNotFoundError):
        synthesize(tmp_path / "missing.jsonl", quiet(), eval_questions=no_eval())


def test_cli_writes_tasks_and_summary(tmp_path):
    from typer.testing import CliRunner

    from sleuth.cli import app

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in film_corpus()))
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"id": "q1", "question": "What is the capital of France?", "answers": ["Paris"]}))
    out = tmp_path / "t.jsonl"
    r = CliRunner().invoke(app, ["synth", "--corpus", str(corpus), "--n", "20", "--out", str(out), "--hops", "2",
                                 "--no-closed-book", "--eval-set", str(evals)])
    assert r.exit_code == 0, r.output
    assert out.read_text().strip() and (tmp_path / "t.funnel.json").is_file()
    r = CliRunner().invoke(app, ["synth", "--corpus", str(corpus), "--hops", "7", "--out", str(out)])
    assert r.exit_code != 0 and "hops" in r.output


def test_a_venue_date_range_is_not_a_lifespan():
    pr = profile(P("n1", "The Rat Cellar", "The Rat Cellar (1977 – 2003) was a punk rock nightclub in Boston."))
    assert not pr.is_person and not {"birth_year", "death_year"} & set(pr.facts)
    pr = profile(P("p1", "Ann Gray", "Ann Gray (1977 – 2003) was an American punk rock singer."))
    assert pr.is_person and pr.facts["death_year"].value == "2003"


@pytest.fixture(scope="module")
def wiki_graph() -> LinkGraph:
    """A link graph over the first 6,000 real passages of the shared corpus (skipped without it)."""
    from sleuth.search.corpus import load_jsonl
    from sleuth.paths import shared_data

    path = shared_data() / "corpus" / "passages.jsonl.gz"
    if not path.is_file():
        pytest.skip("shared corpus not present")
    passages = [p for _, p in zip(range(6000), load_jsonl(path))]
    return LinkGraph(passages)


def test_balanced_lookups_ask_each_kind_of_fact_alike(wiki_graph):
    from collections import Counter

    from sleuth.synth.generate import FACT_KINDS

    def kinds(balance: bool) -> Counter:
        tasks = generate_lookups(wiki_graph, 200, random.Random(0), GenStats(), balance=balance)
        return Counter(FACT_KINDS[t.metadata["fact"]] for t in tasks)

    plain, balanced = kinds(False), kinds(True)
    assert sum(plain.values()) == sum(balanced.values()) == 200
    assert plain["date"] > 100                          # as the corpus states facts: mostly dates
    assert set(balanced) == set(plain) and len(balanced) == 4
    assert max(balanced.values()) < 2 * min(balanced.values())   # each kind about a quarter


# ------------------------------------------------------------------------------------- hops (real index)
@pytest.fixture
def film_engine(tmp_path, monkeypatch):
    """A real lexical index of the film corpus (BM25 over titles and text)."""
    from sleuth.search.index import build_index, open_index

    monkeypatch.setenv("SLEUTH_HOME", str(tmp_path / "home"))
    src = tmp_path / "films.jsonl"
    src.write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n"
                           for p in film_corpus()))
    build_index(src, name="films", dense=False, progress=False)
    return open_index("films").engine("lexical")


def test_hops_stage_keeps_bridges_that_need_every_hop(graph, film_engine):
    from sleuth.synth.validate import check_hops
    from sleuth.tasks.judges import mentions

    bridges = list(generate_bridges(graph, 20, 2, random.Random(0), GenStats()))
    lookups = list(generate_lookups(graph, 3, random.Random(0), GenStats()))
    assert bridges and lookups
    kept, st = check_hops(bridges + lookups, film_engine, k=1)
    assert st.n_in == len(bridges) + len(lookups)
    assert all(t in kept for t in lookups)                       # only bridges are checked
    kept_bridges = [t for t in kept if t.metadata["type"] == "bridge"]
    assert kept_bridges and len(kept_bridges) < len(bridges)     # this corpus has both kinds
    top1 = lambda q: " ".join(f"{r.title} {r.snippet}" for r in film_engine.search_batch([q], k=1)[0].results)
    for t in kept_bridges:                                       # re-check the recorded path independently
        first, bridge = t.metadata["search_path"]
        assert not mentions(top1(t.question), t.answers)
        assert bridge == t.metadata["supporting_titles"][1] and mentions(top1(first), [bridge])
        assert mentions(top1(bridge), t.answers)
    for t in bridges:
        if t not in kept:
            assert "search_path" not in t.metadata
    # with every passage shown, one search always shows the answer: nothing needs a second hop
    kept_all, st_all = check_hops(bridges, film_engine, k=len(film_corpus()))
    assert kept_all == [] and st_all.rejected == {"searching the question shows the answer": len(bridges)}
    with pytest.raises(ValueError):
        check_hops(bridges, film_engine, k=0)


def test_pipeline_hops_stage_needs_a_search_engine():
    with pytest.raises(SynthError, match="search engine"):
        synthesize(film_corpus(), quiet(n=10, hops=(2,), mix={"bridge": 1}, hops_k=2), eval_questions=no_eval())
