"""Reports: clarify → plan → research → write → references, in Markdown and a self-contained visual HTML
report (PDF by headless Chromium), every kept citation verified against what the research agent was shown.

The package sits above the agent, citations and tools, and below the commands::

    from sleuth.report import ReportConfig, clarify, run_report, write_pdf
    questions = clarify(request, policy, cfg)                 # [] when the request is specific
    report = run_report(request, policy=policy, env=env, cfg=cfg, run_dir=Path("runs/report-x"),
                        answers=[...], on_event=print_event, cancel=threading.Event())
    report.markdown, report.html, report.references, report.stats, report.to_dict()
    write_pdf(Path("runs/report-x/report.html"), Path("runs/report-x/report.pdf"))
"""

from __future__ import annotations

from typing import Any

from sleuth.report.config import ReportConfig
from sleuth.report.llm import Usage
from sleuth.report.pdf import write_pdf
from sleuth.report.pipeline import Report, ReportCancelled, run_report
from sleuth.report.plan import clarify as _clarify


def clarify(request: str, policy: Any, cfg: ReportConfig | None = None) -> list[str]:
    """Questions to ask the user before researching ``request``: none when it is specific (or clarification
    is off in ``cfg``), else 1 to ``cfg.max_clarify_questions``."""
    return _clarify(request, policy, cfg or ReportConfig())


__all__ = ["Report", "ReportCancelled", "ReportConfig", "Usage", "clarify", "run_report", "write_pdf"]
