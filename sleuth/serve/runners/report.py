"""The ``report`` run kind: a cited research report, after clarifying questions (``sleuth.report``).

Registered only when ``sleuth.report`` imports (``available()``), so the server runs without it. The flow:
the policy proposes clarifying questions for the request; when there are any and the request did not bring
answers, the run shows them (``question`` events, status ``waiting``) and waits for the person's answers
(or ``answer_timeout_s``, then goes on without them); then ``run_report`` writes the report, its events
(``stage``, ``question``, ``step``, ``section``, ``done``) passed through as they come. The report's HTML
and Markdown are kept as the run's artifacts (served at ``/api/runs/{id}/report.html``).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleuth.serve.runs import Cancelled, Emitter, Kind, ParamError, check_fields

MAX_REQUEST_CHARS = 4000


def available() -> bool:
    try:
        importlib.import_module("sleuth.report")
    except ImportError:
        return False
    return True


@dataclass
class ReportSettings:
    runs_dir: Path
    """Where each report run keeps its working files (``<runs_dir>/<run id>``); server-side only."""
    answer_timeout_s: float = 1800.0
    max_answers: int = 10
    config: Any = None
    """The server's ``sleuth.report.ReportConfig`` (None: its defaults); requests cannot change it."""


def check(settings: ReportSettings):
    def check_params(params: Any) -> dict[str, Any]:
        p = check_fields(params, {"request": str, "answers": list, "clarify": bool}, ("request",))
        p["request"] = p["request"].strip()
        if not p["request"]:
            raise ParamError("params.request is empty")
        if len(p["request"]) > MAX_REQUEST_CHARS:
            raise ParamError(f"params.request is longer than {MAX_REQUEST_CHARS} characters")
        answers = p.get("answers")
        if answers is not None and (len(answers) > settings.max_answers or
                                    not all(isinstance(a, str) and len(a) <= 2000 for a in answers)):
            raise ParamError(f"params.answers must be at most {settings.max_answers} strings of up to 2000 characters")
        return p
    return check_params


def _headline(markdown: str) -> str:
    for line in markdown.splitlines():
        if line.strip():
            return line.lstrip("# ").strip()[:200]
    return ""


def make_runner(policy: Any, env: Any, settings: ReportSettings):
    def run(params: dict[str, Any], emit: Emitter, cancel: threading.Event) -> dict[str, Any]:
        from sleuth.report import ReportConfig, clarify, run_report

        cfg = settings.config or ReportConfig()
        request, answers = params["request"], params.get("answers")
        if answers is None and params.get("clarify", True):
            emit("stage", {"stage": "clarify"})
            questions = [q for q in clarify(request, policy, cfg) if isinstance(q, str) and q.strip()]
            if cancel.is_set():
                raise Cancelled()
            if questions:
                answers = emit.ask(questions, timeout_s=settings.answer_timeout_s)

        def on_event(*args: Any) -> None:
            # (kind, data); a trailing pair is taken so a callback that also passes its source still fits
            kind, data = args[-2], args[-1]
            emit(str(kind), data if isinstance(data, dict) else {"value": data})
            if cancel.is_set():
                raise Cancelled()

        run_dir = settings.runs_dir / emit.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            report = run_report(request, policy=policy, env=env, cfg=cfg, run_dir=run_dir, answers=answers,
                                on_event=on_event, cancel=cancel)
        except Exception:
            if cancel.is_set():   # however the writer stops when cancelled, the run counts as cancelled
                raise Cancelled()
            raise
        if cancel.is_set():
            raise Cancelled()
        body = report.to_dict()
        result = {k: v for k, v in body.items() if k not in ("html",)}
        result.update({"request": request, "answers": answers or [], "answer": _headline(report.markdown),
                       "markdown": report.markdown, "stats": getattr(report, "stats", {}),
                       "artifacts": {"report.html": ["text/html", report.html],
                                     "report.md": ["text/markdown", report.markdown]}})
        return result
    return run


def kind(policy: Any, env: Any, settings: ReportSettings) -> Kind:
    return Kind("report", make_runner(policy, env, settings), check(settings),
                title=lambda p: p["request"], restartable=False,
                description="A cited research report; may ask clarifying questions first.")
