"""Steps reached in an 8k-token window with and without the context manager, on a long research task.

The task: a research session that keeps searching and opening pages (real index, real tools, real SmolLM2
tokenizer, so token counts are exact). The replies are a fixed research script — search a dev question,
open its top result, search the next one, ... for up to --max-steps steps — so both runs make the same
moves and only the context handling differs. Without the manager the trajectory ends when the window is
full; with it, older documents are compressed to stubs and the agent keeps going.

    .venv/bin/python benchmarks/context_budget.py [--index passages] [--window 8192] [--max-steps 120]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleuth.agent import Agent, AgentConfig, Environment  # noqa: E402
from sleuth.context import ContextConfig  # noqa: E402
from sleuth.search.index import default_index_name, open_index  # noqa: E402
from sleuth.policy.base import Generation  # noqa: E402


class ScriptPolicy:
    name = "research-script"
    version = 0

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies = tokenizer, list(replies)

    def generate(self, prompts, params):
        text = self.replies.pop(0)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [Generation(ids, [0.0] * len(ids), text, "stop")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default=None)
    ap.add_argument("--window", type=int, default=8192)
    ap.add_argument("--max-steps", type=int, default=120)
    ap.add_argument("--out", default="benchmarks/results/context_budget.json")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from sleuth.tasks.loaders import load_benchmark
    from sleuth.policy.hf import ensure_embedded_checkpoint

    tok = AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())
    index = open_index(args.index or default_index_name())
    engine = index.engine("lexical")
    env = Environment(engine, {index.name: index.docs}, tools=("search", "browse"))
    questions = [t.question for t in load_benchmark("dev", seed=0)][: args.max_steps]
    replies = []
    for q, resp in zip(questions, engine.search_batch(questions, 1)):
        replies.append(f"<search>{q}</search>")
        if resp.results:
            replies.append(f"<browse>{resp.results[0].url}</browse>")
    replies = replies[: args.max_steps]

    rows = {}
    for enabled in (False, True):
        cfg = AgentConfig(max_steps=args.max_steps, context_window=args.window, max_new_tokens=256,
                          context=ContextConfig(enabled=enabled))
        t0 = time.time()
        traj = Agent(ScriptPolicy(tok, replies), env, cfg).run("Research these topics thoroughly.")
        rows["with_manager" if enabled else "without_manager"] = {
            "steps": traj.steps, "finish_reason": traj.finish_reason,
            "context_events": len(traj.context_events), "segments": len(traj.segments),
            "final_context_tokens": len(traj.segments[-1].token_ids), "seconds": round(time.time() - t0, 2)}
    ratio = rows["with_manager"]["steps"] / max(1, rows["without_manager"]["steps"])
    result = {"window": args.window, "max_steps": args.max_steps, "index": index.name, **rows,
              "steps_ratio": round(ratio, 2), "target_ratio": 5.0}
    for k in ("without_manager", "with_manager"):
        r = rows[k]
        print(f"{k:16s} steps {r['steps']:4d}  ended: {r['finish_reason']:10s} "
              f"context events {r['context_events']:3d}  final context {r['final_context_tokens']} tokens")
    print(f"steps ratio: {ratio:.1f}x (target >= 5x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
