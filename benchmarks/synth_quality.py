"""Quality of the synthetic task generator on the real offline corpus (28k Wikipedia passages).

Measures:
  * the funnel on ~2000 candidates with no solver stages (closed-book and pass@N are recorded as skipped):
    counts per stage and per dataset, link-graph statistics, generation and validation time;
  * on a random sample of 100 kept tasks, checked independently of the generator against the corpus file:
    the fraction whose gold answer is an exact span of the cited answer passage (bridge, comparison), and
    for reasoning tasks the fraction whose facts are exact spans and whose stored program, re-run, prints
    the gold answer;
  * retrieval: whether BM25 search for the question finds the cited passages in the top 10 (the start
    passage, the answer passage, all of them). Uses index 'passages' when it exists, else builds a
    lexical-only index of the corpus in a temporary directory (removed afterwards);
  * ``solve_rates`` — closed-book vs with-tools solve rates of a policy on the sample; run with --solve N
    (slow on CPU: a local model answers every question, the agent also searches).

Run: nice -n 10 .venv/bin/python benchmarks/synth_quality.py [--n 2000] [--seed 0] [--sample 100] [--solve 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, no install needed
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sleuth import paths  # noqa: E402
from sleuth.search.corpus import load_jsonl  # noqa: E402
from sleuth.synth.pipeline import SynthConfig, parse_mix, synthesize  # noqa: E402
from sleuth.synth.reasoning import run_program  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "synth_quality.json"


def span_checks(tasks, passages) -> dict:
    """Re-check the sample against the corpus file (not the generator's graph)."""
    per_type: dict[str, Counter] = defaultdict(Counter)
    failures = []
    for t in tasks:
        md, kind = t.metadata, t.metadata["type"]
        c = per_type[kind]
        c["n"] += 1
        if kind == "reasoning":
            facts_ok = all(f["value"] in passages[f["pid"]].text for f in md["facts"])
            rerun_ok = run_program(md["program"]) == t.answers[0]
            c["facts_are_spans"] += facts_ok
            c["program_reproduces_answer"] += rerun_ok
            ok = facts_ok and rerun_ok
        else:
            p = passages[md["answer_pid"]]
            hay = f"{p.title}\n{p.text}" if kind == "comparison" else p.text
            ok = t.answers[0] in hay and md["answer_pid"] in md["supporting_ids"]
            c["answer_is_span"] += ok
        if not ok:
            failures.append({"id": t.id, "question": t.question, "answers": t.answers})
    extractive = [c for k, c in per_type.items() if k != "reasoning"]
    n_ex = sum(c["n"] for c in extractive)
    return {"answer_span_rate_extractive": sum(c["answer_is_span"] for c in extractive) / n_ex if n_ex else None,
            "reasoning_facts_span_rate": (per_type["reasoning"]["facts_are_spans"] / per_type["reasoning"]["n"]
                                          if per_type["reasoning"]["n"] else None),
            "reasoning_program_reproduces": (per_type["reasoning"]["program_reproduces_answer"] /
                                             per_type["reasoning"]["n"] if per_type["reasoning"]["n"] else None),
            "per_type": {k: dict(v) for k, v in per_type.items()}, "failures": failures[:10]}


def open_or_build_lexical(corpus: Path):
    """(index, temp dir to delete or None, how it was obtained)."""
    from sleuth.search.index import IndexNotFound, build_index, open_index

    try:
        return open_index("passages"), None, "existing index 'passages'"
    except IndexNotFound:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="sleuth-synth-bench-"))
    old = os.environ.get("SLEUTH_HOME")
    os.environ["SLEUTH_HOME"] = str(tmp)
    try:
        t = time.perf_counter()
        build_index(corpus, "passages", dense=False, progress=False)
        idx = open_index("passages")
        return idx, tmp, f"lexical-only index built in a temporary directory ({time.perf_counter() - t:.0f}s)"
    finally:
        if old is None:
            os.environ.pop("SLEUTH_HOME", None)
        else:
            os.environ["SLEUTH_HOME"] = old


def retrieval_checks(tasks, idx, k: int = 10) -> dict:
    engine = idx.engine("lexical")
    t = time.perf_counter()
    responses = engine.search_batch([x.question for x in tasks], k)
    secs = time.perf_counter() - t
    by_type: dict[str, Counter] = defaultdict(Counter)
    for task, resp in zip(tasks, responses):
        got = {r.passage_id for r in resp.results[:k]}
        sup = task.metadata["supporting_ids"]
        c = by_type[task.metadata["type"]]
        c["n"] += 1
        c["start_in_top10"] += sup[0] in got
        c["answer_passage_in_top10"] += sup[-1] in got
        c["any_in_top10"] += bool(got & set(sup))
        c["all_in_top10"] += set(sup) <= got
    total = Counter()
    for c in by_type.values():
        total.update(c)
    rate = lambda c, key: round(c[key] / c["n"], 3) if c["n"] else None  # noqa: E731
    keys = ("start_in_top10", "answer_passage_in_top10", "any_in_top10", "all_in_top10")
    return {"status": "ran", "engine": "lexical", "k": k, "seconds": round(secs, 2),
            "overall": {key: rate(total, key) for key in keys},
            "per_type": {t: {"n": c["n"], **{key: rate(c, key) for key in keys}} for t, c in by_type.items()}}


def solve_rates(tasks, n: int = 0, model: str | None = None, base_url: str | None = None,
                idx=None, prompt: str = "short-fewshot") -> dict | None:
    """Hook: closed-book vs with-tools solve rates of the project's policy on the first n sampled tasks.

    None when n == 0 (the default: on CPU this is slow). Uses the same solvers as the pipeline's
    closed-book and pass@N stages, so the numbers say how much the tools are needed."""
    if n <= 0:
        return None
    from sleuth.policy.loader import load_policy
    from sleuth.synth.pipeline import agent_tool_solver, closed_book_solver
    from sleuth.synth.validate import answer_match, knows_answer

    sample = tasks[:n]
    qs = [t.question for t in sample]
    policy = load_policy(model, base_url)
    out: dict = {"n": len(sample), "policy": getattr(policy, "name", ""), "prompt": prompt}
    t0 = time.perf_counter()
    closed = closed_book_solver(policy)(qs)
    out["closed_book_solved"] = sum(knows_answer(p, t.answers) for p, t in zip(closed, sample)) / len(sample)
    kinds = sorted({t.metadata.get("type", t.dataset) for t in sample})
    by_kind = {k: [i for i, t in enumerate(sample) if t.metadata.get("type", t.dataset) == k] for k in kinds}
    out["by_type"] = {k: {"n": len(ix), "closed_book_solved": round(sum(
        knows_answer(closed[i], sample[i].answers) for i in ix) / len(ix), 3)} for k, ix in by_kind.items()}
    out["closed_book_seconds"] = round(time.perf_counter() - t0, 1)
    if idx is None:
        out["with_tools_solved"] = "not run: no index"
        return out
    from sleuth.agent import AgentConfig, Environment

    env = Environment(idx.engine("lexical"), {idx.name: idx.docs})
    t0 = time.perf_counter()
    # the evaluation harness's agent budget (4 steps, 64 new tokens per step), greedy
    tool = agent_tool_solver(policy, env, AgentConfig(temperature=0.0, max_steps=4, max_new_tokens=64,
                                                     prompt=prompt))(qs, 1)
    out["with_tools_solved"] = sum(answer_match(a[0], t.answers, t.question) for a, t in zip(tool, sample)) / \
        len(sample)
    for k, ix in by_kind.items():
        out["by_type"][k]["with_tools_solved"] = round(sum(
            answer_match(tool[i][0], sample[i].answers, sample[i].question) for i in ix) / len(ix), 3)
    out["with_tools_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=paths.shared_data() / "corpus" / "passages.jsonl.gz")
    ap.add_argument("--n", type=int, default=2000, help="candidates to generate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", default=None, help="candidate shares per type, e.g. lookup=1 (default: the "
                    "pipeline's bridge/comparison/reasoning mix)")
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--exclude-trained", type=Path, default=None, metavar="RUN_DIR",
                    help="leave out questions a `sleuth train` run rolled out (its rollouts.jsonl), so solve "
                         "rates are measured on tasks the policy never trained on")
    ap.add_argument("--solve", type=int, default=0, help="tasks for the closed-book vs with-tools hook")
    ap.add_argument("--model", default=None)
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--prompt", default="short-fewshot", help="agent prompt variant for the with-tools solver")
    ap.add_argument("--no-retrieval", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT,
                    help="result JSON (default: benchmarks/results/synth_quality.json)")
    args = ap.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"corpus not found: {args.corpus}")

    t = time.perf_counter()
    passages = {p.id: p for p in load_jsonl(args.corpus)}
    load_s = time.perf_counter() - t
    extra = {"mix": parse_mix(args.mix)} if args.mix else {}
    tasks, funnel = synthesize(list(passages.values()), SynthConfig(n=args.n, seed=args.seed, progress=False,
                                                                    **extra))
    f = funnel.to_dict()
    print(f"corpus: {len(passages)} passages loaded in {load_s:.1f}s")
    print(f"graph: {f['graph']}")
    print(f"timings (s): {f['timings']}")
    print(f"generation produced: {f['generation']['produced']}")
    print(f"{'stage':<12} {'status':<8} {'in':>6} {'out':>6}  rejected")
    for s in f["stages"]:
        print(f"{s['name']:<12} {s['status']:<8} {s['in']:>6} {s['out']:>6}  {s['rejected'] or s['note']}")
    print(f"kept: {f['kept']} of {f['candidates']} candidates: {f['kept_by_dataset']}")

    if args.exclude_trained is not None:
        seen = {json.loads(line)["question"] for line in
                (args.exclude_trained / "rollouts.jsonl").read_text().splitlines() if line.strip()}
        before = len(tasks)
        tasks = [t for t in tasks if t.question not in seen]
        print(f"left out {before - len(tasks)} tasks the run in {args.exclude_trained} trained on")
    rng = random.Random(args.seed)
    sample = rng.sample(tasks, min(args.sample, len(tasks)))
    spans = span_checks(sample, passages)
    print(f"sample of {len(sample)}: extractive answer-span rate {spans['answer_span_rate_extractive']}, "
          f"reasoning facts-span rate {spans['reasoning_facts_span_rate']}, "
          f"programs reproduce answers {spans['reasoning_program_reproduces']}")
    idx, tmp, how = None, None, "not opened"
    retrieval: dict = {"status": "skipped (--no-retrieval)"}
    try:
        if not args.no_retrieval:
            try:
                idx, tmp, how = open_or_build_lexical(args.corpus)
                retrieval = {**retrieval_checks(sample, idx), "index": how}
            except Exception as e:  # the index is optional for this benchmark
                retrieval = {"status": f"skipped: {type(e).__name__}: {e}"}
        print(f"retrieval: {json.dumps(retrieval.get('overall', retrieval.get('status')))}")
        rates = solve_rates(sample, args.solve, args.model, args.base_url, idx, args.prompt)
        print(f"solve rates: {rates if rates is not None else 'not run (use --solve N)'}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\nexamples:")
    examples = []
    for x in sample[:10]:
        ex = {"dataset": x.dataset, "question": x.question, "answers": x.answers,
              "supporting_titles": x.metadata["supporting_titles"]}
        if "program" in x.metadata:
            ex["program"] = x.metadata["program"]
        examples.append(ex)
        print(f"  [{x.dataset}] {x.question}\n      -> {x.answers[0]}   ({' -> '.join(ex['supporting_titles'])})")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "corpus": str(args.corpus), "passages": len(passages), "n_candidates_requested": args.n, "seed": args.seed,
        "funnel": {k: f[k] for k in ("candidates", "kept", "kept_by_dataset", "skipped_stages",
                                     "difficulty_filtered")},
        "stages": [{k: s[k] for k in ("name", "status", "in", "out", "rejected", "seconds")} for s in f["stages"]],
        "generation": f["generation"], "graph": f["graph"], "timings_s": f["timings"],
        "sample_size": len(sample), "span_checks": spans, "retrieval": retrieval, "solve_rates": rates,
        "examples": examples}, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
