"""The `sleuth` command. Each sub-command lives in sleuth/commands/<name>.py and exposes register(app)."""

from __future__ import annotations

import importlib
import os

# Offline is the default mode: never let a library reach for a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep instead of spinning between ops: on a busy small CPU an 8-query MiniLM encode
# took ~920 ms with spinning and ~90 ms without (benchmarks/retrieval.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch threads: SLEUTH_THREADS=1 is much faster when other jobs share a small machine (measured here:
# two threads under contention were several times slower than one).
if os.environ.get("SLEUTH_THREADS"):
    import torch

    torch.set_num_threads(int(os.environ["SLEUTH_THREADS"]))

import typer  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="sleuth — research agents trained end-to-end with reinforcement learning.")

COMMANDS = ["index", "search", "ask", "eval", "synth", "train", "serve_openai", "serve", "mcp", "report", "serve_search", "export_gguf"]

for _name in COMMANDS:
    try:
        _mod = importlib.import_module(f"sleuth.commands.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"sleuth.commands.{_name}":
            raise
        continue
    _mod.register(app)


if __name__ == "__main__":
    app()
