"""Prefix KV cache: the real agent on dev questions, with and without reusing the previous step's KV.

Every agent step's prompt is the previous prompt + the tokens the policy generated + a tool observation.
Without the cache each step prefills the whole context again; with it, only the new observation. Greedy
decoding, so both runs must produce the same trajectories (checked: same answers, same generated tokens);
they alternate (off, on, off, on, ...) in one process so machine noise hits both alike. Two workloads:

* agent: the real agent (search + browse over the offline corpus) on a batch of dev questions, as it is —
  the untrained policy answers within a few steps, so contexts stay short;
* long: the same policy continued for `--long-steps` steps per row, each step `--long-tokens` generated
  tokens + a real passage (~120 tokens) as the observation — the shape of a 20+ step research trajectory.

    .venv/bin/python benchmarks/prefix_cache.py [--n 8] [--steps 6] [--long-steps 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sleuth.agent import Agent, AgentConfig, Environment, load_prompt  # noqa: E402
from sleuth.tasks.loaders import load_tasks  # noqa: E402
from sleuth.policy.hf import HFPolicy  # noqa: E402
from sleuth.policy.kvcache import PrefixCache  # noqa: E402


def run(agent: Agent, policy: HFPolicy, tasks, cache: bool) -> dict:
    policy.prefix_cache = PrefixCache() if cache else None
    t0 = time.perf_counter()
    trajs = agent.run_batch([t.question for t in tasks], [t.id for t in tasks])
    dt = time.perf_counter() - t0
    pc = policy.prefix_cache
    return {"seconds": dt, "generated_tokens": sum(t.generated_tokens for t in trajs),
            "steps": sum(t.steps for t in trajs), "answers": [t.answer for t in trajs],
            "token_ids": [[i for s in t.segments for i in s.token_ids] for t in trajs],
            "prompt_tokens_reused": pc.hits if pc else 0, "prompt_tokens_prefilled": pc.misses if pc else None}


def run_long(policy: HFPolicy, prompts: list[list[int]], observations: list[list[int]], steps: int,
             new_tokens: int, cache: bool) -> dict:
    from sleuth.policy.base import SamplingParams

    policy.prefix_cache = PrefixCache() if cache else None
    seqs, outs = [list(p) for p in prompts], []
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    t0 = time.perf_counter()
    for step in range(steps):
        for i, g in enumerate(policy.generate(seqs, params)):
            outs.append(g.token_ids)
            seqs[i] += g.token_ids + observations[(i + step) % len(observations)]
    dt = time.perf_counter() - t0
    pc = policy.prefix_cache
    return {"seconds": dt, "generated_tokens": sum(len(o) for o in outs), "final_context": max(map(len, seqs)),
            "token_ids": outs, "prompt_tokens_reused": pc.hits if pc else 0,
            "prompt_tokens_prefilled": pc.misses if pc else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="dev questions (one batch)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="short-2shot")
    ap.add_argument("--index", default="passages")
    ap.add_argument("--long-steps", type=int, default=16)
    ap.add_argument("--long-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/prefix_cache.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = HFPolicy.load()
    env = Environment.from_index(args.index, engine="hybrid", search_k=3, tools=("search", "browse"))
    agent = Agent(policy, env, AgentConfig(max_steps=args.steps, max_new_tokens=args.max_new_tokens,
                                           temperature=0.0, prompt=args.prompt))
    tasks = load_tasks("dev", limit=args.n, seed=1)
    tok = policy.tokenizer
    head = load_prompt(args.prompt, ("search", "browse"))
    prompts = [list(tok.apply_chat_template(head + [{"role": "user", "content": t.question}],
                                            add_generation_prompt=True, tokenize=True)["input_ids"]) for t in tasks]
    passages = [r.snippet for r in env.search_engine.search(tasks[0].question, k=len(tasks))]
    observations = [tok.encode("\nObservation: " + " ".join(p.split()[:90]) + "\n") for p in passages]
    out = {"what": "prefix KV cache on vs off, greedy, same trajectories; see the module docstring",
           "config": vars(args)}
    workloads = {"agent": lambda cache: run(agent, policy, tasks, cache),
                 "long": lambda cache: run_long(policy, prompts, observations, args.long_steps, args.long_tokens,
                                                cache)}
    for name, fn in workloads.items():
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for r in range(args.repeats):
            for mode in ("off", "on"):
                res = fn(mode == "on")
                runs[mode].append(res)
                print(f"{name} repeat {r + 1} cache {mode:3s}: {res['seconds']:.1f}s, {res['generated_tokens']} "
                      f"tokens generated, {res['prompt_tokens_reused']} prompt tokens reused, "
                      f"{res['prompt_tokens_prefilled']} prefilled", flush=True)
        same = all(a["token_ids"] == b["token_ids"] and a.get("answers") == b.get("answers")
                   for a in runs["off"] for b in runs["on"])
        sec = {m: sum(x["seconds"] for x in v) / len(v) for m, v in runs.items()}
        on = runs["on"][0]
        out[name] = {"seconds": sec, "speedup": sec["off"] / sec["on"], "same_trajectories": same,
                     **{k: on[k] for k in ("steps", "final_context", "generated_tokens", "prompt_tokens_reused",
                                           "prompt_tokens_prefilled") if k in on},
                     "runs": {m: [{k: v for k, v in x.items() if k != "token_ids"} for x in xs]
                              for m, xs in runs.items()}}
        print(f"{name}: {sec['off']:.1f}s without the cache, {sec['on']:.1f}s with -> {sec['off'] / sec['on']:.2f}x; "
              f"same trajectories: {same}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
