"""Before/after RL on the dev holdout, from the evaluation harness's own records.

Reads the per-sample records `benchmarks/baseline_dev.py` wrote for the untrained modes (closed-book, RAG,
agent) and for the trained agent, and reports, overall and split by question type:
  * comparison — candidate questions ("A or B?", "out of A and B?"; `sleuth.tasks.task.is_candidate_question`),
    where naming either candidate is right half the time by luck;
  * yes/no — a gold answer of yes or no (a coin flip again), its own split unless --reference rows are reused;
  * open — every other question.
A gain that lives only in the comparison split is a choice between two names the question already gives,
not reading; the split keeps that visible. `coin_flip` is the expected pass@1 of answering a random one of
the two candidates (no model at all).

    .venv/bin/python benchmarks/rl_before_after.py --before runs/baseline_dev --after runs/rl_eval/agent
    # several untrained agent configurations: the ratio uses the best of them (never a weakened one)
    .venv/bin/python benchmarks/rl_before_after.py --untrained "short-fewshot=runs/baseline_dev/agent" \
        --untrained "short-2shot=runs/baseline_2shot/agent" --after runs/rl_read_eval/agent \
        --also "stage-1 RL (configs/rl.toml)=runs/rl_eval/agent" --out benchmarks/results/rl_read_before_after.json
    # the earlier runs' records are gone (a fresh checkout): take their rows from an earlier result of this
    # script (same harness, tasks and samples) and evaluate only the new run
    .venv/bin/python benchmarks/rl_before_after.py --reference benchmarks/results/rl_read_before_after.json \
        --after runs/rl_read_dev_eval/agent --label "reading RL, 1:1 dev" --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleuth.evals.metrics import pass_at_k  # noqa: E402



def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "records.jsonl").read_text().splitlines() if line.strip()]


def run_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}


def answer_shown(path: Path, cfg: dict, tasks: dict, rag_engine) -> dict[tuple[str, int], bool]:
    """(task id, sample) → whether a gold answer was in what the model was shown: the observations of an
    agent's trajectory, or the passages RAG pasted (the same top-k for every sample). Correct answers among
    shown ones measure reading; the share shown measures search."""
    from sleuth.baselines import rag_contexts
    from sleuth.tasks.judges import mentions
    from sleuth.trajectory import Trajectory

    if cfg.get("mode") == "rag" and rag_engine is not None:
        ids = list(tasks)
        ctxs, _ = rag_contexts([tasks[t].question for t in ids], *rag_engine, k=cfg.get("rag_k", 5))
        hit = {t: mentions(" ".join(f"{a} {b}" for a, b in c), tasks[t].answers) for t, c in zip(ids, ctxs)}
        return {(t, s): hit[t] for t in ids for s in range(cfg.get("samples", 1))}
    traj_file = path / "trajectories.jsonl"
    shown = {}
    if not traj_file.is_file():
        return shown
    for line in traj_file.read_text().splitlines():
        tr = json.loads(line)
        task = tasks.get(tr.get("task_id"))
        if task is None:
            continue
        msgs = tr["messages"]
        # observations after the task's own question (the few-shot examples before it have their own answers)
        start = max(i for i, m in enumerate(msgs) if m["role"] == "user" and m["content"] == task.question)
        seen = " ".join(m["content"] for m in msgs[start + 1:] if m["role"] == "user")
        shown[(task.id, Trajectory.from_dict(tr).member)] = mentions(seen, task.answers)
    return shown


def summarise(records: list[dict], kinds: dict[str, str], k: int,
              shown: dict[tuple[str, int], bool] | None = None) -> dict:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task_id"]].append(r)
    out = {}
    for split in ("all", *dict.fromkeys(kinds.values())):
        tids = [t for t in by_task if split == "all" or kinds[t] == split]
        if not tids:
            continue
        recs = [r for t in tids for r in by_task[t]]
        n = len(recs)
        row = {"questions": len(tids), "samples": n,
               "pass@1": round(sum(pass_at_k(len(by_task[t]), sum(r["verdict"]["correct"] for r in by_task[t]), 1)
                                   for t in tids) / len(tids), 4),
               f"pass@{k}": round(sum(pass_at_k(len(by_task[t]), sum(r["verdict"]["correct"] for r in by_task[t]),
                                                k) for t in tids) / len(tids), 4)
               if all(len(by_task[t]) >= k for t in tids) else None,   # a greedy row has one sample
               "em": round(sum(r["verdict"]["em"] for r in recs) / n, 4),
               "f1": round(sum(r["verdict"]["f1"] for r in recs) / n, 4),
               "cover": round(sum(r["verdict"]["cover"] for r in recs) / n, 4),
               "answered": round(sum(r.get("answer") not in (None, "") for r in recs) / n, 4)}
        st = [r.get("stats", {}) for r in recs]
        for key in ("steps", "search_queries", "urls_opened", "format_errors"):
            row[key] = round(sum(s.get(key, 0) for s in st) / n, 3)
        if shown:
            hits = [r for r in recs if shown.get((r["task_id"], r["sample"]))]
            row["answer_shown"] = round(len(hits) / n, 4)
            row["correct_when_shown"] = round(sum(r["verdict"]["correct"] for r in hits) / len(hits), 4) \
                if hits else None
        out[split] = row
    return out


def by_dataset(records: list[dict]) -> dict[str, dict]:
    """EM and pass@1 per source dataset (nq, hotpotqa, 2wiki, musique): to sit beside other small search
    agents' published EM on the same question types."""
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_ds[str(r.get("dataset", "")).replace("dev-", "")].append(r)
    return {ds: {"samples": len(rs), "em": round(sum(r["verdict"]["em"] for r in rs) / len(rs), 4),
                 "pass@1": round(sum(r["verdict"]["correct"] for r in rs) / len(rs), 4)}
            for ds, rs in sorted(by_ds.items())}


def behaviour(records: list[dict]) -> dict[str, dict]:
    """Research behaviour per question type: NQ questions are single-hop, the others (hotpotqa, 2wiki, musique)
    multi-hop. Share of trajectories that searched at least twice, searches and steps per trajectory, and of the
    correct answers, how many came from a trajectory that searched at least twice."""
    out: dict[str, dict] = {}
    for kind in ("multi-hop", "single-hop"):
        rs = [r for r in records if (str(r.get("dataset", "")).endswith("nq")) == (kind == "single-hop")]
        if not rs:
            continue
        stats = [r.get("stats") or {} for r in rs]
        searches = [int(st.get("search_calls", 0)) for st in stats]
        right = [n >= 2 for n, r in zip(searches, rs) if r["verdict"]["correct"]]
        out[kind] = {"samples": len(rs), "searched_twice": round(sum(n >= 2 for n in searches) / len(rs), 4),
                     "searches": round(sum(searches) / len(rs), 3),
                     "steps": round(sum(st.get("steps", 0) for st in stats) / len(rs), 3),
                     "correct": len(right), "correct_searched_twice": sum(right)}
    return out


def per_question_pass1(records: list[dict]) -> dict[str, float]:
    by_task: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_task[r["task_id"]].append(bool(r["verdict"]["correct"]))
    return {t: sum(v) / len(v) for t, v in by_task.items()}


def paired_bootstrap(a: dict[str, float], b: dict[str, float], tids: list[str], draws: int = 10_000,
                     seed: int = 0) -> dict:
    """Mean per-question pass@1 difference a − b with a 95% bootstrap interval over questions (resampled
    with replacement, both runs on the same draw) and the share of draws where a does not beat b."""
    import numpy as np

    tids = sorted(t for t in tids if t in a and t in b)   # sets iterate in a per-process order
    if not tids:
        return {}
    d = np.array([a[t] - b[t] for t in tids])
    boot = d[np.random.default_rng(seed).integers(0, len(d), (draws, len(d)))].mean(axis=1)
    return {"questions": len(tids), "diff": round(float(d.mean()), 4),
            "ci95": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
            "p_not_better": round(float((boot <= 0).mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, default=Path("runs/baseline_dev"))
    ap.add_argument("--after", type=Path, default=Path("runs/rl_eval/agent"))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--label", default="agent after RL")
    ap.add_argument("--untrained", action="append", default=[], metavar="LABEL=DIR",
                    help="untrained agent run(s); default: <before>/agent. The best one is the reference.")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=DIR", help="other runs to list")
    ap.add_argument("--reference", type=Path, default=None,
                    help="an earlier result JSON of this script: its rows (closed-book, RAG, untrained and other "
                         "agents) are reused instead of --before/--untrained/--also records")
    ap.add_argument("--index", default="passages",
                    help="index RAG searched (baseline_dev.py: hybrid search over it), to rebuild its passages")
    ap.add_argument("--out", default="benchmarks/results/rl_before_after.json")
    args = ap.parse_args()
    from sleuth.tasks.judges import make_judge
    from sleuth.tasks.loaders import load_tasks
    from sleuth.tasks.task import is_candidate_question, question_kind

    tasks = load_tasks("dev", limit=args.n, seed=0)
    questions = {t.id: t.question for t in tasks}
    ids = set(questions)
    # Reused reference rows were split in two (comparison / everything else); a new row must be split the
    # same way to sit beside them. Without a reference, yes/no questions get their own split.
    if args.reference is not None:
        kinds = {t.id: "comparison" if is_candidate_question(t.question) else "open" for t in tasks}
    else:
        kinds = {t.id: question_kind(t) for t in tasks}
    kinds = dict(sorted(kinds.items(), key=lambda kv: ("comparison", "yes/no", "open").index(kv[1])))
    what = f"dev, first {args.n} after shuffling with seed 0 (RL holdout)"
    res, untrained_names = {}, []
    if args.reference is not None:
        ref = json.loads(args.reference.read_text())
        if ref["tasks"] != what:
            raise SystemExit(f"{args.reference} covers {ref['tasks']!r}, not the first {args.n} of the holdout")
        res.update({name: rows for name, rows in ref["modes"].items() if name != args.label})
        untrained_names = [name for name in res if name.startswith("agent (untrained")]
        modes = {args.label: args.after}
    else:
        modes = {name: args.before / name for name in ("closed-book", "rag", "agent")
                 if name != "closed-book" or (args.before / name).is_dir()}   # closed-book: optional row
        untrained_runs = dict(u.split("=", 1) for u in args.untrained) or {"": str(modes["agent"])}
        modes.pop("agent")
        for label, path in untrained_runs.items():
            name = f"agent (untrained{', ' + label if label else ''})"
            modes[name] = Path(path)
            untrained_names.append(name)
        modes[args.label] = args.after
    for spec in args.also:   # computed from their records here, so the paired intervals include them
        label, path = spec.split("=", 1)
        modes[label] = Path(path)
    by_id = {t.id: t for t in tasks}
    rag_engine = None
    configs = {name: run_config(path) for name, path in modes.items()}
    if any(c.get("mode") == "rag" for c in configs.values()):
        from sleuth.agent import Environment
        env = Environment.from_index(args.index, engine="hybrid")
        rag_engine = (env.search_engine, next(iter(env.docstores.values())))
    judge = make_judge("cover")
    per_q: dict[str, dict[str, float]] = {}
    datasets: dict[str, dict] = {}
    behaviours: dict[str, dict] = {}
    for name, path in modes.items():
        recs = [r for r in load(path) if r["task_id"] in ids]
        for r in recs:   # judged again with today's judge, so every row computed here is judged alike
            t = by_id[r["task_id"]]
            r["verdict"] = judge.judge(t.question, r.get("answer"), t.answers).to_dict()
        res[name] = summarise(recs, kinds, args.k, answer_shown(path, configs[name], by_id, rag_engine))
        per_q[name] = per_question_pass1(recs)
        datasets[name] = by_dataset(recs)
        behaviours[name] = behaviour(recs)
    n_cmp = sum(is_candidate_question(q) for q in questions.values())
    out = {"tasks": what, "comparison_questions": n_cmp,
           "coin_flip_pass@1": round(0.5 * n_cmp / len(questions), 4), "modes": res,
           "reference": str(args.reference) if args.reference else None, "by_dataset": datasets,
           "behaviour": behaviours}
    best = max(untrained_names, key=lambda n: res[n]["all"]["pass@1"])
    after, rag, untrained = res[args.label]["all"], res["rag"]["all"], res[best]["all"]
    out["untrained_reference"] = best
    out["ratios"] = {
        "after_vs_rag_pass@1": round(after["pass@1"] / rag["pass@1"], 2) if rag["pass@1"] else None,
        "after_vs_untrained_agent_pass@1": round(after["pass@1"] / untrained["pass@1"], 2)
        if untrained["pass@1"] else None}
    # Paired over questions: how sure is "after beats X" with this few questions? (X: every other row
    # computed from records here.)
    out["after_minus_pass@1"] = {
        other: {split: paired_bootstrap(per_q[args.label], per_q[other],
                                        [t for t in ids if split == "all" or kinds[t] == split])
                for split in ("all", *dict.fromkeys(kinds.values()))}
        for other in per_q if other != args.label}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"{'mode':34s} {'split':10s} {'q':>3s} {'pass@1':>7s} {'pass@4':>7s} {'EM':>6s} {'F1':>6s} {'cover':>6s} "
          f"{'answered':>8s} {'steps':>5s} {'queries':>7s}")
    for name, splits in res.items():
        for split, r in splits.items():
            pk = r.get(f"pass@{args.k}")
            print(f"{name:34s} {split:10s} {r['questions']:3d} {r['pass@1']:7.3f} "
                  f"{pk if pk is None else round(pk, 3)!s:>7s} "
                  f"{r['em']:6.3f} {r['f1']:6.3f} {r['cover']:6.3f} {r['answered']:8.3f} {r['steps']:5.2f} "
                  f"{r['search_queries']:7.2f}")
    for name, splits in res.items():
        if "answer_shown" in splits.get("open", {}):
            o = splits["open"]
            print(f"{name}: open questions — answer shown in {o['answer_shown']:.1%} of samples, "
                  f"correct in {o['correct_when_shown'] or 0:.1%} of those")
    for other, splits in out["after_minus_pass@1"].items():
        for split, b in splits.items():
            if b and split in ("all", "open"):
                print(f"{args.label} − {other}, {split}: pass@1 {b['diff']:+.3f} (95% CI {b['ci95'][0]:+.3f} … "
                      f"{b['ci95'][1]:+.3f}, {b['questions']} q; draws not better {b['p_not_better']:.3f})")
    for name, kinds_b in behaviours.items():
        for kind, b in kinds_b.items():
            print(f"{name}: {kind} — searched twice in {b['searched_twice']:.0%} of {b['samples']} trajectories, "
                  f"{b['searches']:.2f} searches; {b['correct_searched_twice']} of {b['correct']} correct answers "
                  "searched twice")
    print(f"coin flip on the {n_cmp} comparison questions: pass@1 {out['coin_flip_pass@1']:.3f} overall")
    print(json.dumps(out["ratios"]))


if __name__ == "__main__":
    main()
