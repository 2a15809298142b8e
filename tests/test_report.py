"""Reports against a scripted OpenAI-format server on loopback (tests/replay_servers.py) over a real bm25s index:
429 / 5xx retried, malformed outlines and drafts re-asked, a failed section reported with the rest kept, the
fallback outline and extractive sections stated, every kept citation verified against what the agent was
shown, a kill -9 resumed from the saved stages, the request's language, tokens and cost; the HTML looked at
in headless Chromium and the PDF through pdftoppm."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from replay_servers import api_error, completion, tool_calls

from sleuth.policy.openai_policy import OpenAIPolicy
from sleuth.report import Report, ReportCancelled, ReportConfig, clarify, run_report, write_pdf

OUTLINE = ("# Jane Austen\n## Life\n- Where was Jane Austen born?\n"
           "## Works\n- What novels did Jane Austen write?")


def text(content: str, cost: float | None = None) -> dict:
    body = completion({"content": content})
    if cost is not None:
        body["usage"]["cost"] = cost       # OpenRouter-style price per request
    return body


def research_replies(srv, query: str, answer: str) -> None:
    srv.add(200, tool_calls(("search", {"queries": [query]})))
    srv.add(200, tool_calls(("finish", {"answer": answer})))


def cfg(**kw) -> ReportConfig:
    base = dict(words=120, max_sections=2, min_sections=2, questions_per_section=1, max_steps=3, research_batch=1,
                plan_retries=2, section_retries=1, charts=True)
    return ReportConfig(**{**base, **kw})


def policy_for(srv, retries: int = 2) -> OpenAIPolicy:
    return OpenAIPolicy("gpt-test", base_url=srv.url, max_retries=retries)


def audit(report: Report, run_dir: Path) -> None:
    """Every kept citation quotes text the agent was shown at that URL (an independent re-check)."""
    seen: dict[str, str] = {}
    for line in (run_dir / "research.jsonl").read_text().splitlines():
        for url, t in json.loads(line)["seen"].items():
            seen[url] = seen.get(url, "") + "\n" + t
    norm = lambda s: " ".join(s.split()).lower()  # noqa: E731
    for ref in report.references:
        assert ref["url"] in seen
        for q in ref["quotes"]:
            assert norm(q) in norm(seen[ref["url"]]), (ref["url"], q)
    assert report.stats["citations_kept"] >= 1


@pytest.fixture(scope="module")
def scripted_report(env, tmp_path_factory):
    """One report through every fault: a 429 and a 500 (retried), a malformed outline (re-asked), an empty
    draft (re-asked), an unsupported sentence (marked), and a section whose server keeps failing (reported)."""
    from replay_servers import ChatReplayServer

    srv = ChatReplayServer()
    srv.add(429, api_error("Rate limit reached", "rate_limit_error", "rate_limit_exceeded"), {"retry-after": "0"})
    srv.add(200, text("Sure! Jane Austen is a great topic.", cost=0.001))
    srv.add(500, api_error("upstream overloaded", "server_error", None), {"retry-after-ms": "10"})
    srv.add(200, text(OUTLINE, cost=0.002))
    research_replies(srv, "Jane Austen born", "Steventon, Hampshire")
    research_replies(srv, "Pride and Prejudice novel", "Pride and Prejudice")
    srv.add(200, text(""))                                              # section 1: empty draft, re-asked
    srv.add(200, text("Jane Austen was born in Steventon, Hampshire [1]. "
                      "Jane Austen wrote her novels on the Moon with robots [1]."))
    for _ in range(3):                                                  # section 2: 1 try + 2 retries fail
        srv.add(503, api_error("The server is overloaded", "server_error", None), {"retry-after-ms": "10"})
    run_dir = tmp_path_factory.mktemp("report")
    events: list[tuple[str, dict]] = []
    t0 = time.time()
    report = run_report("Write a report on Jane Austen", policy=policy_for(srv), env=env, cfg=cfg(),
                        run_dir=run_dir, on_event=lambda k, d: events.append((k, d)))
    yield report, run_dir, events, srv, time.time() - t0
    srv.close()


def test_faults_are_retried_repaired_and_a_failed_section_keeps_the_rest(scripted_report):
    report, run_dir, events, srv, _ = scripted_report
    assert len(srv.requests) == 13 and not srv.script          # every scripted reply was used, nothing more
    plan = report.plan
    assert plan["source"] == "model" and plan["attempts"] == 2 and "no section" in plan["problems"][0]
    life, works = report.sections
    assert life["status"] == "written" and life["attempts"] == 2
    assert works["status"] == "failed" and "503" in works["error"]
    s_ok, s_bad = life["sentences"]
    assert s_ok["status"] == "verified" and s_ok["cites"][0]["url"] == "corpus://t/p1"
    assert "Steventon, Hampshire" in s_ok["cites"][0]["quote"]
    assert s_bad["status"] == "unverified" and not s_bad["cites"]
    md = report.markdown
    assert "Jane Austen was born in Steventon, Hampshire[1]." in md
    assert "on the Moon with robots. **[unverified]**" in md
    assert "**This section could not be written:**" in md and "503" in md
    assert "## References" in md and "[1] Jane Austen — <corpus://t/p1>" in md
    st = report.stats
    assert st["sections"] == 2 and st["sections_failed"] == 1 and st["unverified_sentences"] == 1
    assert st["citations_written"] == 2 and st["citations_verified"] == 1 and st["citations_kept"] == 1
    assert st["unique_sources"] == 1 and st["research_questions"] == 2
    assert st["cost"] == pytest.approx(0.003)
    assert st["tokens"]["prompt_tokens"] > 0 and st["tokens"]["completion_tokens"] > 0
    audit(report, run_dir)
    kinds = [k for k, _ in events]
    assert [d["name"] for k, d in events if k == "stage"] == ["clarify", "plan", "research", "write", "references"]
    assert kinds.count("question") == 2 and kinds.count("section") == 2 and kinds[-1] == "done"
    assert any(k == "step" and d["kind"] == "action" and d["tool"] == "search" for k, d in events)
    for name in ("request.json", "plan.json", "research.jsonl", "sections/00.json", "sections/01.json",
                 "report.md", "report.html", "report.json", "events.jsonl", "trajectories.jsonl"):
        assert (run_dir / name).exists(), name
    assert Report.load(run_dir).markdown == md


def test_html_report_shows_mind_map_chart_tables_and_sources(scripted_report, browser, tmp_path):
    report, run_dir, _, _, _ = scripted_report
    html = report.html
    assert "<script src" not in html and "https://cdn" not in html     # self-contained
    # the years in the verified quote (1775, 1817) become a timeline; its figures come from the code tool
    charts = json.loads((run_dir / "charts.json").read_text())["charts"]
    assert charts and charts[0]["unit"] == "year" and charts[0]["derived"]["range"] == 42.0
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((run_dir / "report.html").as_uri())
    page.wait_for_timeout(300)
    assert errors == []
    nodes = page.locator("#mindmap jmnode")
    assert nodes.count() >= 5                                  # title, 2 sections, questions, findings
    topics = nodes.all_inner_texts()
    assert "Jane Austen" in topics and "Life" in topics and "Where was Jane Austen born?" in topics
    frame = page.locator("#mindmap").bounding_box()
    for i in range(nodes.count()):              # every node drawn, and inside the map's frame (none cut off)
        box = nodes.nth(i).bounding_box()
        assert box and box["width"] > 10 and box["height"] > 8
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"] + 1
        assert frame["y"] <= box["y"] and box["y"] + box["height"] <= frame["y"] + frame["height"] + 1
    canvas = page.locator("#chart0")
    cbox = canvas.bounding_box()
    assert cbox and cbox["width"] > 300 and cbox["height"] > 150
    # the chart drew something: its canvas has coloured (non-white, non-transparent) pixels
    coloured = page.evaluate("""() => { const c = document.getElementById('chart0');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i+3] > 0 && (d[i] < 200 || d[i+1] < 200)) n++; return n; }""")
    assert coloured > 200
    assert page.locator("#references .card").count() == 1
    assert "Steventon, Hampshire" in page.locator("#references .card").inner_text()
    assert page.locator(".s.unverified .flag").count() == 1
    assert page.locator("#questions tbody tr").count() == 2
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    _assert_not_blank(shot)
    os.makedirs("runs/test-shots", exist_ok=True)
    Path("runs/test-shots/report.png").write_bytes(shot.read_bytes())   # kept for a person to look at


def _assert_not_blank(png: Path) -> None:
    from PIL import Image

    img = Image.open(png).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100
    hist = img.histogram()
    assert sum(hist[:200]) > 0.01 * img.width * img.height      # plenty of non-white pixels (text, map, chart)


def test_pdf_export_renders_pages_with_the_report(scripted_report, tmp_path):
    from pypdf import PdfReader

    report, run_dir, _, _, _ = scripted_report
    pdf = write_pdf(run_dir / "report.html", tmp_path / "report.pdf")
    reader = PdfReader(str(pdf))
    txt = " ".join(p.extract_text() for p in reader.pages)
    assert "Jane Austen was born in Steventon" in txt and "References" in txt
    subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
                   check=True, timeout=60)
    first = sorted(tmp_path.glob("page*.png"))[0]
    _assert_not_blank(first)
    Path("runs/test-shots").mkdir(parents=True, exist_ok=True)
    Path("runs/test-shots/report-pdf-page1.png").write_bytes(first.read_bytes())


def test_unusable_outlines_fall_back_to_one_built_from_the_request_and_say_so(env, chat_server, tmp_path):
    for _ in range(2):
        chat_server.add(200, text("I cannot help with outlines."))
    # the fallback outline: Overview / History, one question each
    research_replies(chat_server, "Jane Austen", "an English novelist")
    research_replies(chat_server, "Steventon village Hampshire", "Steventon")
    chat_server.add(200, text("Bananas are yellow and rich in potassium [1]."))   # unsupported: extractive
    chat_server.add(200, text("Steventon is a village and civil parish in Hampshire, England [1]."))
    report = run_report("Write a report on Jane Austen", policy=policy_for(chat_server, 0), env=env,
                        cfg=cfg(plan_retries=1, section_retries=0, unverified="remove", charts=False),
                        run_dir=tmp_path / "r")
    assert report.plan["source"] == "fallback" and report.plan["attempts"] == 2
    assert [s["title"] for s in report.sections] == ["Overview", "History"]
    assert report.plan["sections"][0]["questions"] == ["What is Jane Austen?"]
    assert "Outline: built by sleuth from the request" in report.markdown
    overview, history = report.sections
    assert overview["status"] == "extractive" and "Written extractively by sleuth" in report.markdown
    assert overview["sentences"] and all(s["how"] == "extractive" and s["cites"] for s in overview["sentences"])
    assert history["status"] == "written" and history["removed"] == []
    assert report.stats["unverified_sentences"] == 0
    audit(report, tmp_path / "r")


def test_report_is_written_in_the_requests_language(env, chat_server, tmp_path):
    chat_server.add(200, text("# Jane Austen\n## Vie\n- Où est née Jane Austen ?\n## Oeuvre\n- Quels romans Jane Austen a-t-elle écrits ?"))
    research_replies(chat_server, "Jane Austen", "Steventon")
    research_replies(chat_server, "Pride and Prejudice", "Pride and Prejudice")
    chat_server.add(200, text("Jane Austen was born in Steventon, Hampshire [1]."))
    chat_server.add(200, text("Pride and Prejudice is an 1813 novel of manners by Jane Austen [1]."))
    report = run_report("Rédigez un rapport sur la vie et les romans de Jane Austen", policy=policy_for(chat_server, 0),
                        env=env, cfg=cfg(), run_dir=tmp_path / "fr")
    assert report.language == "fr"
    assert "## Références" in report.markdown and '<html lang="fr">' in report.html and "Carte mentale" in report.html
    plan_req, write_req = chat_server.requests[0]["json"], chat_server.requests[-1]["json"]
    assert "in French" in plan_req["messages"][0]["content"] and "in French" in write_req["messages"][0]["content"]
    assert report.stats["citations_kept"] == 2


def test_clarify_asks_only_when_the_request_is_vague(chat_server):
    policy = policy_for(chat_server, 0)
    assert clarify("Compare the Eiffel Tower and Tokyo Tower: height, age and visitors", policy) == []
    assert chat_server.requests == []                                # a specific request costs no call
    chat_server.add(200, text("1. Which period of history?\n2. Which country?\nThanks"))
    assert clarify("history", policy) == ["Which period of history?", "Which country?"]
    assert clarify("history", policy, ReportConfig(clarify=False)) == []


def test_cancel_then_resume_in_process(env, chat_server, tmp_path):
    chat_server.add(200, text(OUTLINE))
    research_replies(chat_server, "Jane Austen born", "Steventon")
    cancel = threading.Event()

    def on_event(kind, d):
        if kind == "finding":
            cancel.set()                     # stop after the first research batch

    with pytest.raises(ReportCancelled):
        run_report("Write a report on Jane Austen", policy=policy_for(chat_server, 0), env=env, cfg=cfg(),
                   run_dir=tmp_path / "c", on_event=on_event, cancel=cancel)
    assert len((tmp_path / "c" / "research.jsonl").read_text().splitlines()) == 1
    n = len(chat_server.requests)
    research_replies(chat_server, "Pride and Prejudice", "Pride and Prejudice")
    chat_server.add(200, text("Jane Austen was born in Steventon, Hampshire [1]."))
    chat_server.add(200, text("Pride and Prejudice is an 1813 novel of manners by Jane Austen [1]."))
    report = run_report("Write a report on Jane Austen", policy=policy_for(chat_server, 0), env=env, cfg=cfg(),
                        run_dir=tmp_path / "c")
    assert len(chat_server.requests) - n == 4                         # plan and question 1 were not redone
    assert report.stats["sections_failed"] == 0 and report.stats["research_questions"] == 2
    with pytest.raises(ValueError, match="another request"):
        run_report("Something else", policy=policy_for(chat_server, 0), env=env, cfg=cfg(), run_dir=tmp_path / "c")


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sleuth.agent import Environment
    from sleuth.policy.openai_policy import OpenAIPolicy
    from sleuth.report import ReportConfig, run_report
    env = Environment.from_index("t", engine="lexical", tools=("search", "browse"))
    cfg = ReportConfig(words=120, max_sections=2, min_sections=2, questions_per_section=1, max_steps=3,
                       research_batch=1, charts=False)
    run_report("Write a report on Jane Austen", policy=OpenAIPolicy("gpt-test", base_url=sys.argv[1], max_retries=0,
               timeout=120), env=env, cfg=cfg, run_dir=Path(sys.argv[2]))
""")


def test_killed_run_resumes_from_its_saved_stages(env, chat_server, tmp_path):
    chat_server.add(200, text(OUTLINE))
    research_replies(chat_server, "Jane Austen born", "Steventon")
    research_replies(chat_server, "Pride and Prejudice novel", "Pride and Prejudice")
    chat_server.add(200, text("Jane Austen was born in Steventon, Hampshire [1]."))
    chat_server.add(200, text("never sent"), delay=60)                 # the process is killed while waiting
    script, run_dir = tmp_path / "run.py", tmp_path / "k"
    script.write_text(KILL_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(script), chat_server.url, str(run_dir)], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, start_new_session=True)
    try:
        deadline = time.time() + 120          # the child imports torch: slow on a busy machine
        while len(chat_server.requests) < 7 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(chat_server.requests) == 7 and (run_dir / "sections" / "00.json").exists()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (run_dir / "sections" / "01.json").exists()
    chat_server.script.clear()
    chat_server.add(200, text("Pride and Prejudice is an 1813 novel of manners by Jane Austen [1]."))
    report = run_report("Write a report on Jane Austen", policy=policy_for(chat_server, 0), env=env,
                        cfg=cfg(charts=False), run_dir=run_dir)
    assert len(chat_server.requests) == 8                             # only the missing section was asked for
    assert [s["status"] for s in report.sections] == ["written", "written"]
    assert report.stats["citations_kept"] == 2 and report.stats["unique_sources"] == 2
    audit(report, run_dir)


def test_web_search_backends_are_reachable_from_ask(chat_server, monkeypatch, tmp_path):
    """--web searxng: the agent's searches go to a SearXNG instance (a loopback replay of its JSON API)."""
    from replay_servers import ReplayServer
    from typer.testing import CliRunner

    from sleuth.cli import app

    with ReplayServer() as web:
        monkeypatch.setenv("SEARXNG_URL", web.url)
        chat_server.add(200, tool_calls(("search", {"queries": ["Eiffel Tower height"]})))
        chat_server.add(200, tool_calls(("finish", {"answer": "Gustave Eiffel", "citations": [
            {"url": "https://en.wikipedia.org/wiki/Eiffel_Tower", "quote": "named after the engineer Gustave Eiffel"}]})))
        res = CliRunner().invoke(app, ["ask", "Who is the Eiffel Tower named after?", "--web", "searxng",
                                       "--base-url", chat_server.url, "--model", "gpt-test", "--max-retries", "0",
                                       "--json", "--save", str(tmp_path / "t.jsonl")])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout[res.stdout.index("{"):])
        assert out["answer"] == "Gustave Eiffel" and out["citations"][0]["verified"]
        assert any(r["path"].startswith("/search?") for r in web.requests)
    for cmd in ("ask", "eval", "report"):
        help_text = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--web" in help_text and "--online" in help_text, cmd


def test_draft_parsing_and_verification_rules(env):
    from sleuth.report.research import Passage
    from sleuth.report.write import check_draft, parse_draft

    draft = parse_draft("## Heading\n- Jane Austen was born in Steventon. [1]\nShe died in 1820 in Bath [1][2].\n"
                        "<search>x</search>Pride and Prejudice is an 1813 novel [2].")
    assert draft == [("Jane Austen was born in Steventon.", [1]), ("She died in 1820 in Bath.", [1, 2]),
                     ("Pride and Prejudice is an 1813 novel.", [2])]
    seen = {"corpus://t/p1": "Jane Austen\nJane Austen (16 December 1775 – 18 July 1817) was an English novelist. "
                             "She was born in Steventon, Hampshire.",
            "corpus://t/p2": "Pride and Prejudice\nPride and Prejudice is an 1813 novel of manners by Jane Austen."}
    sources = [Passage(u, t.splitlines()[0], t) for u, t in seen.items()]
    kept, written, verified, removed = check_draft(draft, sources, seen, ReportConfig())
    assert [s.status for s in kept] == ["verified", "unverified", "verified"]
    assert written == 4 and verified == 2                  # a wrong year is never supported, wherever it points
    kept, *_ = check_draft([("Pride and Prejudice is an 1813 novel.", [1])], sources, seen, ReportConfig())
    assert kept[0].how == "reattributed" and kept[0].cites[0]["url"] == "corpus://t/p2"
    assert not re.search(r"1820", " ".join(c["quote"] for s in kept for c in s.cites))


TOWERS = [
    ("t1", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in "
     "1889 and is 330 metres tall. It was designed by the company of the engineer Gustave Eiffel."),
    ("t2", "Tokyo Tower", "Tokyo Tower is a communications and observation tower in Tokyo, Japan. It was completed "
     "in 1958 and is 333 metres tall. Its design was inspired by the Eiffel Tower."),
    ("t3", "CN Tower", "The CN Tower is a concrete communications tower in Toronto, Canada. It was completed in "
     "1976 and is 553 metres tall."),
]


@pytest.mark.slow
def test_embedded_model_writes_a_verified_report_end_to_end(env, browser, tmp_path):
    """`sleuth report` with the shipped 135M policy on a three-passage index: whatever the model writes, the
    structure holds, every kept citation is verified, and the HTML and PDF render."""
    from typer.testing import CliRunner

    from sleuth.cli import app
    from sleuth.search.corpus import Passage
    from sleuth.search.index import build_index

    src = tmp_path / "towers.jsonl"
    src.write_text("".join(json.dumps(Passage(i, t, x, "test").to_dict()) + "\n" for i, t, x in TOWERS))
    build_index(src, "towers", dense=False, progress=False)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["report", "Compare the Eiffel Tower and Tokyo Tower", "--index", "towers",
                                   "--engine", "lexical", "--words", "60", "--sections", "1", "--questions", "1",
                                   "--max-steps", "2", "--max-new-tokens", "40", "--no-clarify", "--out", str(out),
                                   "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout[res.stdout.index("{"):])
    report = Report.load(out)
    assert len(report.sections) == 1 and report.plan["sections"][0]["questions"]
    assert all(s["status"] in ("written", "extractive") for s in report.sections)   # sources exist for each
    assert all(c for s in report.sections for x in s["sentences"] if x["status"] == "verified" for c in x["cites"])
    audit(report, out)
    assert rec["stats"]["tokens"]["total_tokens"] > 0 and rec["stats"]["seconds"] > 0
    assert "## References" in report.markdown and "corpus://towers/" in report.markdown
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto((out / "report.html").as_uri())
    page.wait_for_timeout(300)
    assert page.locator("#mindmap jmnode").count() >= 3
    page.screenshot(path=str(tmp_path / "e2e.png"), full_page=True)
    page.close()
    _assert_not_blank(tmp_path / "e2e.png")
    pdf = Path(rec["files"]["pdf"])
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "p")],
                   check=True, timeout=60)
    _assert_not_blank(sorted(tmp_path.glob("p*.png"))[0])
    Path("runs/test-shots").mkdir(parents=True, exist_ok=True)
    Path("runs/test-shots/report-e2e.png").write_bytes((tmp_path / "e2e.png").read_bytes())


@pytest.mark.slow
def test_report_through_an_openai_server_with_the_shipped_policy_behind_it(tmp_path, one_thread):
    """The same command against a real model over HTTP: `sleuth serve-openai`'s app serving the shipped policy on
    loopback, `sleuth report --base-url` driving it with native tool calls."""
    import socket

    import uvicorn
    from typer.testing import CliRunner

    from sleuth.cli import app
    from sleuth.policy.loader import load_policy
    from sleuth.search.corpus import Passage
    from sleuth.search.index import build_index
    from sleuth.serve.openai_api import create_app

    src = tmp_path / "towers.jsonl"
    src.write_text("".join(json.dumps(Passage(i, t, x, "test").to_dict()) + "\n" for i, t, x in TOWERS))
    build_index(src, "towers", dense=False, progress=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(load_policy(None), name="sleuth-135m-rl"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.time()
    while not server.started and time.time() - t0 < 60:
        time.sleep(0.05)
    out = tmp_path / "run"
    try:
        res = CliRunner().invoke(app, ["report", "Compare the Eiffel Tower and Tokyo Tower", "--index", "towers",
                                       "--engine", "lexical", "--base-url",
                                       f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "--model", "sleuth-135m-rl",
                                       "--words", "60", "--sections", "1", "--questions", "1", "--max-steps", "2",
                                       "--max-new-tokens", "40", "--no-clarify", "--no-pdf", "--out", str(out),
                                       "--json"])
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
    assert res.exit_code == 0, res.output
    report = Report.load(out)
    assert len(report.sections) == 1 and all(s["status"] in ("written", "extractive") for s in report.sections)
    audit(report, out)
    assert report.stats["tokens"]["total_tokens"] > 0 and "corpus://towers/" in report.markdown


def test_too_few_sections_are_topped_up_and_the_outline_marked_repaired(chat_server):
    from sleuth.report.plan import make_plan

    chat_server.add(200, text("# Jane Austen\n## Her novels\n- What novels did Jane Austen write?"))
    plan = make_plan("Write a report on Jane Austen", policy_for(chat_server, 0), cfg(plan_retries=0), "en")
    assert plan.source == "repaired" and [s.title for s in plan.sections] == ["Her novels", "Overview"]
    assert plan.sections[0].questions == ["What novels did Jane Austen write?"]


def test_eval_searches_the_web_backend_it_is_given(chat_server, monkeypatch, tmp_path):
    """`sleuth eval --web brave`: the agent's searches go to the Brave API (a loopback replay of its JSON)."""
    from replay_servers import API_KEY, ReplayServer

    from sleuth.evals.run import EvalConfig, run_eval
    from sleuth.search.web import BraveEngine

    bench = tmp_path / "q.jsonl"
    bench.write_text(json.dumps({"question": "Who is the Eiffel Tower named after?", "answer": "Gustave Eiffel"}) + "\n")
    with ReplayServer() as web:
        monkeypatch.setenv("BRAVE_API_KEY", API_KEY)
        monkeypatch.setattr(BraveEngine.__init__, "__defaults__", (None, web.url))   # the replay stands in for the API
        chat_server.add(200, tool_calls(("search", {"queries": ["Eiffel Tower"]})))
        chat_server.add(200, tool_calls(("finish", {"answer": "Gustave Eiffel"})))
        res = run_eval(EvalConfig(benchmark=str(bench), mode="agent", base_url=chat_server.url, model="gpt-test",
                                  web="brave", max_steps=3, temperature=0.0), tmp_path / "ev", progress=False)
        assert any(r["path"].startswith("/res/v1/web/search") for r in web.requests)
    assert res["overall"]["scores"]["cover"] == 1.0
    rec = json.loads((tmp_path / "ev" / "records.jsonl").read_text().splitlines()[0])
    assert rec["grounded"] and rec["citations"][0]["url"] == "https://en.wikipedia.org/wiki/Eiffel_Tower"


def test_numbers_are_read_from_shown_text_and_only_comparable_ones_are_charted():
    from sleuth.report.numbers import charts, extract

    refs = [{"n": 1, "title": "Eiffel Tower", "quotes": [], "text": "Eiffel Tower\nIt is 330 metres tall. It opened in 1889."},
            {"n": 2, "title": "Tokyo Tower", "quotes": [], "text": "Tokyo Tower\nIt is 333 m tall."},
            {"n": 3, "title": "Paris", "quotes": [], "text": "Paris\nParis has 2.1 million inhabitants."}]
    facts = extract(refs)
    assert {(f["label"], f["value"], f["unit"]) for f in facts} == {
        ("Eiffel Tower", 330.0, "m"), ("Eiffel Tower", 1889.0, "year"), ("Tokyo Tower", 333.0, "m"),
        ("Paris", 2_100_000.0, "people")}
    (bar,) = charts(facts)                      # one year and one population: nothing to compare, table only
    assert bar["unit"] == "m" and bar["labels"] == ["Eiffel Tower", "Tokyo Tower"]
    assert bar["derived"] == {"max": 333.0, "max_label": "Tokyo Tower", "min": 330.0, "min_label": "Eiffel Tower",
                              "range": 3.0, "mean": 331.5, "ratio": 1.009}     # computed in the code sandbox
