"""Run kinds the service offers. ``ask`` always; ``report`` when ``sleuth.report`` is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleuth.serve.runners import ask, report
from sleuth.serve.runs import Registry


def default_registry(policy: Any, env: Any, ask_settings: ask.AskSettings, data_dir: Path) -> Registry:
    registry = Registry()
    registry.add(ask.kind(policy, env, ask_settings))
    if report.available():
        registry.add(report.kind(policy, env, report.ReportSettings(runs_dir=data_dir / "reports")))
    return registry
