"""A report run: plan → research → write → references, each stage saved in the run directory as it ends, so
a run that was killed (or cancelled) continues from its saved stages when started again on the same
directory. Clarification happens before (``plan.clarify``); its answers come in with the request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sleuth.agent import AgentConfig
from sleuth.policy.loader import agent_settings
from sleuth.report import numbers, render
from sleuth.report.config import ReportConfig
from sleuth.report.lang import detect
from sleuth.report.llm import Usage
from sleuth.report.plan import Plan, make_plan, with_answers
from sleuth.report.research import Finding, passages_of, research, seen_union
from sleuth.report.store import RunStore
from sleuth.report.write import SectionResult, rank_passages, write_section
from sleuth.trajectory import save_jsonl

OnEvent = Callable[[str, dict[str, Any]], None]


class ReportCancelled(RuntimeError):
    """The run was cancelled; everything finished so far is saved and a later run on the directory resumes."""


@dataclass
class Report:
    request: str
    title: str
    language: str
    markdown: str
    html: str
    references: list[dict[str, Any]]      # [{n, url, title, quotes, sections}] in order of first citation
    sections: list[dict[str, Any]]        # SectionResult dicts (sentences with their verified citations)
    stats: dict[str, Any]
    plan: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"request": self.request, "title": self.title, "language": self.language,
                "markdown": self.markdown, "html": self.html, "references": self.references,
                "sections": self.sections, "stats": self.stats, "plan": self.plan, "run_dir": self.run_dir}

    @classmethod
    def load(cls, run_dir: Path) -> "Report":
        """The finished report saved in ``run_dir`` (``report.json``)."""
        d = RunStore(run_dir).read_json("report.json")
        if d is None:
            raise FileNotFoundError(f"no finished report in {run_dir}")
        d.pop("html_file", None)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def run_report(request: str, *, policy: Any, env: Any, cfg: ReportConfig | None = None, run_dir: Path,
               answers: list[str] | None = None, on_event: OnEvent | None = None,
               cancel: threading.Event | None = None) -> Report:
    """Research and write a report on ``request``; resumes from whatever ``run_dir`` already holds for the
    same request. Events: stage {name}, plan {...}, question {section, question}, step {section, question,
    kind, ...}, section {index, title, status, markdown}, done {stats, ...}. Raises ReportCancelled when
    ``cancel`` is set (between research batches and sections); ValueError when ``run_dir`` holds another
    request's run."""
    cfg = cfg or ReportConfig()
    request = request.strip()
    if not request:
        raise ValueError("the report request is empty")
    store = RunStore(run_dir)
    t_start = time.time()

    def emit(kind: str, data: dict[str, Any]) -> None:
        store.append("events.jsonl", {"time": round(time.time(), 3), "kind": kind, **data})
        if on_event is not None:
            on_event(kind, data)

    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            emit("cancelled", {"run_dir": str(store.dir)})
            raise ReportCancelled(f"report cancelled; its saved stages are in {store.dir}")

    # ---- the request (and its clarifications) this directory belongs to
    saved = store.read_json("request.json")
    if saved is not None:
        if saved["request"] != request:
            raise ValueError(f"{store.dir} holds a report run for another request ({saved['request'][:80]!r}); "
                             "use a new run directory")
        answers = saved.get("answers") if answers is None else answers
    language = cfg.language or (saved or {}).get("language") or detect(request)
    store.write_json("request.json", {"request": request, "answers": answers or [], "language": language,
                                      "config": cfg.to_dict(), "created": (saved or {}).get("created", t_start)})
    full_request = with_answers(request, [], answers)
    emit("stage", {"name": "clarify", "answers": answers or [], "language": language})

    # ---- plan
    check_cancel()
    emit("stage", {"name": "plan"})
    pd = store.read_json("plan.json")
    if pd is not None:
        plan = Plan.from_dict(pd["plan"])
        emit("plan", {"resumed": True, **plan.to_dict()})
    else:
        t0, usage = time.time(), Usage()
        plan = make_plan(full_request, policy, cfg, language, usage,
                         on_attempt=lambda n, why: emit("plan_retry", {"attempt": n, "problem": why}))
        pd = {"plan": plan.to_dict(), "usage": usage.to_dict(), "seconds": round(time.time() - t0, 3)}
        store.write_json("plan.json", pd)
        emit("plan", {"resumed": False, **plan.to_dict()})

    # ---- research
    emit("stage", {"name": "research"})
    findings = [Finding.from_dict(d) for d in store.read_lines("research.jsonl")]
    done = {(f.section, f.question) for f in findings}
    todo = [(i, q) for i, s in enumerate(plan.sections) for q in s.questions if (i, q) not in done]
    settings = agent_settings(policy, {"max_steps": cfg.max_steps, "prompt": cfg.prompt,
                                       "max_new_tokens": cfg.agent_max_new_tokens, "search_k": cfg.search_k},
                              {"max_steps": 10, "prompt": "short-fewshot",
                               "max_new_tokens": AgentConfig.max_new_tokens, "search_k": env.search_k})
    env.search_k = settings["search_k"]
    agent_cfg = AgentConfig(max_steps=settings["max_steps"], prompt=settings["prompt"],
                            max_new_tokens=settings["max_new_tokens"], temperature=cfg.agent_temperature,
                            context_window=cfg.context_window, tools=env.tool_names)
    for start in range(0, len(todo), cfg.research_batch):
        check_cancel()
        batch = todo[start:start + cfg.research_batch]
        for sec, q in batch:
            emit("question", {"section": sec, "question": q})

        def on_done(f: Finding, traj: Any) -> None:
            findings.append(f)
            store.append("research.jsonl", f.to_dict())
            save_jsonl([traj], store.path("trajectories.jsonl"))
            emit("finding", {"section": f.section, "question": f.question, "answer": f.answer,
                             "sources": len(f.seen), "finish_reason": f.finish_reason, "error": f.error})

        research(policy, env, agent_cfg, batch, cfg.research_batch,
                 on_step=lambda sec, q, kind, data: emit("step", {"section": sec, "question": q, "kind": kind,
                                                                   **_small(data)}),
                 on_done=on_done, cancelled=lambda: bool(cancel is not None and cancel.is_set()))
    check_cancel()
    order = {(i, q): k for k, (i, q) in enumerate((i, q) for i, s in enumerate(plan.sections) for q in s.questions)}
    findings.sort(key=lambda f: order.get((f.section, f.question), len(order)))

    # ---- write
    emit("stage", {"name": "write"})
    passages = passages_of(findings)
    seen = seen_union(findings)
    per_section = max(60, cfg.words // max(1, len(plan.sections)))
    sections: list[SectionResult] = []
    used: set[str] = set()       # sentences said so far: a later section does not repeat them
    for i, sp in enumerate(plan.sections):
        check_cancel()
        d = store.read_json(store.section_name(i))
        if d is not None:
            sec = SectionResult.from_dict(d["section"])
            used.update(x.text for x in sec.sentences)
        else:
            t0, usage = time.time(), Usage()
            own = [u for f in findings if f.section == i for u in f.seen]
            answers_text = " ".join(f.answer or "" for f in findings if f.section == i)
            sources = rank_passages(sp, own, passages, cfg.passages_per_section, answers_text)
            sec = write_section(i, sp, full_request, sources, seen, policy, cfg, language, per_section, usage, used)
            sec.seconds = round(time.time() - t0, 3)
            store.write_json(store.section_name(i), {"section": sec.to_dict(), "usage": usage.to_dict(),
                                                     "sources": [p.url for p in sources]})
        sections.append(sec)
        emit("section", {"index": i, "title": sec.title, "status": sec.status, "error": sec.error,
                         "markdown": _section_md(sec)})

    # ---- references, numbers, outputs
    emit("stage", {"name": "references"})
    refs = render.references(sections, passages)
    t0 = time.time()
    facts = numbers.extract([{**r, "text": seen.get(r["url"], "")} for r in refs]) if cfg.charts else []
    cd = store.read_json("charts.json")
    if cd is None or cd.get("facts") != facts:
        cd = {"facts": facts, "charts": numbers.charts(facts) if facts else []}
        store.write_json("charts.json", cd)
    stats = _stats(store, plan, findings, sections, refs, t_start)
    md = render.markdown(plan.title, request, plan, sections, refs, stats, language)
    html = render.html_report(plan.title, request, plan, sections, refs, findings, cd["charts"], facts, stats,
                              language)
    store.write_text("report.md", md)
    store.write_text("report.html", html)
    report = Report(request=request, title=plan.title, language=language, markdown=md, html=html, references=refs,
                    sections=[s.to_dict() for s in sections], stats=stats, plan=plan.to_dict(),
                    run_dir=str(store.dir))
    store.write_json("report.json", report.to_dict())
    emit("done", {"title": plan.title, "stats": stats, "markdown_file": str(store.path("report.md")),
                  "html_file": str(store.path("report.html")), "seconds_this_run": round(time.time() - t_start, 3)})
    return report


def _small(data: dict[str, Any]) -> dict[str, Any]:
    """An agent event as forwarded: long values cut, so progress stays light."""
    out = {}
    for k, v in data.items():
        if isinstance(v, str) and len(v) > 300:
            v = v[:300] + "…"
        elif isinstance(v, dict):
            v = {kk: (vv[:300] + "…" if isinstance(vv, str) and len(vv) > 300 else vv) for kk, vv in v.items()}
        out[k] = v
    return out


def _section_md(sec: SectionResult) -> str:
    """The section alone, for progress (citations shown by URL; the report numbers them)."""
    if sec.status == "failed":
        return f"## {sec.title}\n\n**This section could not be written:** {sec.error}\n"
    body = " ".join(s.text + ("" if s.status == "verified" else " [unverified]") for s in sec.sentences)
    return f"## {sec.title}\n\n" + (f"*{sec.note}*\n\n" if sec.note else "") + body + "\n"


def _stats(store: RunStore, plan: Plan, findings: list[Finding], sections: list[SectionResult],
           refs: list[dict[str, Any]], t_start: float) -> dict[str, Any]:
    usage = Usage()
    pd = store.read_json("plan.json") or {}
    usage.merge(pd.get("usage", {}))
    seconds = float(pd.get("seconds", 0))
    for f in findings:
        usage.add(f.prompt_tokens, f.generated_tokens, f.cost, calls=f.steps)
        seconds += f.seconds
    for i in range(len(sections)):
        d = store.read_json(store.section_name(i)) or {}
        usage.merge(d.get("usage", {}))
        seconds += float(d.get("section", {}).get("seconds", 0))
    kept = sum(len(s.cites) for sec in sections for s in sec.sentences)
    return {
        "words": sum(sec.markdown_words for sec in sections),
        "sections": len(sections),
        "sections_failed": sum(sec.status == "failed" for sec in sections),
        "sections_extractive": sum(sec.status == "extractive" for sec in sections),
        "plan_source": plan.source, "plan_attempts": plan.attempts,
        "citations_written": sum(sec.citations_written for sec in sections),
        "citations_verified": sum(sec.citations_verified for sec in sections),
        "citations_kept": kept,
        "citations_reattributed": sum(len(s.cites) for sec in sections for s in sec.sentences
                                      if s.how == "reattributed"),
        "unverified_sentences": sum(s.status == "unverified" for sec in sections for s in sec.sentences),
        "removed_sentences": sum(len(sec.removed) for sec in sections),
        "unique_sources": len(refs),
        "research_questions": len(findings),
        "search_queries": sum(len(f.queries) for f in findings),
        "research_errors": sum(bool(f.error) for f in findings),
        "tokens": {k: v for k, v in usage.to_dict().items() if k != "cost"},
        "cost": usage.cost,
        "seconds": round(seconds, 3),
    }
