"""Run an evaluation: tasks × samples through the agent (or a baseline), judged, resumable.

Every finished sample is appended to ``<out>/records.jsonl`` (and its trajectory to
``<out>/trajectories.jsonl``) as soon as its batch ends, so a crashed or interrupted run continues where it
stopped: on restart, (task, sample) pairs already recorded are never run again. ``results.json`` is
rebuilt from all records at the end of every batch.

A batch's trajectories are written before its records, and a record is what makes a sample done. On
restart both files are cut back to agree: a record line cut by a kill is dropped (so later records are not
glued to it), and trajectories without a record (killed between the two writes) are dropped, because their
samples run again: each recorded sample has exactly one trajectory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sleuth.evals import report
from sleuth.tasks.judges import make_judge
from sleuth.tasks.loaders import load_tasks
from sleuth.tasks.task import Task

MODES = ("agent", "rag", "closed-book")


@dataclass
class EvalConfig:
    benchmark: str = "dev"
    """Benchmark name (see sleuth.tasks.loaders.BENCHMARKS) or a JSONL/CSV file of question/answer pairs."""
    mode: str = "agent"
    """agent | rag (retrieve-then-read) | closed-book (no tools)."""
    limit: int | None = None
    datasets: list[str] | None = None
    seed: int = 0
    """Shuffles tasks before --limit (so a limited dev run mixes datasets) and seeds sampling."""
    samples: int = 1
    ks: list[int] = field(default_factory=lambda: [1])
    concurrency: int = 16
    """Trajectories advanced together in one batch."""
    model: str | None = None
    base_url: str | None = None
    index: str | None = None
    engine: str = "auto"
    web: str | None = None
    """Search the web instead of an index: searxng | tavily | brave (keys and URL from the environment)."""
    online: bool = False
    """Let the browser open real http(s) pages (web search implies it)."""
    search_url: str | None = None
    """A `sleuth serve-search` service to search (and open corpus passages) instead of a local index."""
    judge: str = "cover"
    judge_model: str | None = None
    """LLM judge (judge = "llm"): the model's name on its server."""
    judge_base_url: str | None = None
    """LLM judge: an OpenAI-compatible server (None = the OpenAI API)."""
    judge_api_key_env: str | None = None
    """LLM judge: the environment variable holding its API key (None = SLEUTH_API_KEY or OPENAI_API_KEY)."""
    max_steps: int | None = None
    """Agent settings left None take what the policy was trained with (a shipped or exported policy records
    them), else 8 steps, 192 new tokens, the short-fewshot prompt and 5 results per query."""
    temperature: float = 0.7
    max_new_tokens: int | None = None
    prompt: str | None = None
    search_k: int | None = None
    rag_k: int = 5


def _key(task_id: str, sample: int) -> str:
    return f"{task_id}#{sample}"


def _append(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:   # lone surrogates: JSON escapes
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of an earlier run. A line cut by a crash mid-write ends them: it and anything after it are
    removed from the file (they are re-run), so that new records never follow a broken line."""
    if not path.exists():
        return []
    out, lines = [], path.read_text(encoding="utf-8").splitlines(keepends=True)
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
        if not line.endswith("\n"):   # complete JSON, but the newline was cut: the next append would join it
            out.pop()
            break
    if len(out) < len(lines):
        _rewrite(path, lines[:len(out)])
    return out


def _rewrite(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _drop_unrecorded(traj_file: Path, records: list[dict[str, Any]]) -> int:
    """Remove the trajectories that have no record (a run killed between writing a batch's trajectories and
    its records): their samples run again, and would otherwise have two trajectories. Returns how many."""
    if not traj_file.exists():
        return 0
    with open(traj_file, encoding="utf-8") as f:
        lines = f.readlines()
    recorded = {r["trajectory_id"] for r in records if r.get("trajectory_id")}
    if len(lines) == len(recorded) and all(line.endswith("\n") for line in lines):
        return 0   # the usual case: one line per recorded trajectory, nothing to parse
    keep = []
    for line in lines:
        try:
            if line.endswith("\n") and json.loads(line).get("id") in recorded:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    if len(keep) < len(lines):
        _rewrite(traj_file, keep)
    return len(lines) - len(keep)


def _scores(records: list[dict[str, Any]]) -> dict[str, float]:
    if not records:
        return {}
    n = len(records)
    return {m: round(sum(r["verdict"][m] for r in records) / n, 4) for m in ("em", "f1", "cover")}


def _extends(old_limit: int | None, new_limit: int | None) -> bool:
    """True if the first ``new_limit`` tasks include the first ``old_limit`` (same order, more tasks)."""
    return old_limit is not None and (new_limit is None or new_limit >= old_limit)


def run_eval(cfg: EvalConfig, out: str | Path, *, policy=None, env=None, progress: bool = True,
             policy_name: str | None = None) -> dict[str, Any]:
    """Evaluate; returns the results dict (also written to ``<out>/results.json``)."""
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.samples < max(cfg.ks):
        raise ValueError(f"pass@{max(cfg.ks)} needs --samples >= {max(cfg.ks)}")
    if policy is None:
        from sleuth.policy.loader import load_policy
        policy = load_policy(cfg.model, cfg.base_url)
    cfg = _resolve_agent_settings(cfg, policy)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.json"
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        fixed = ("benchmark", "mode", "limit", "datasets", "seed", "samples", "model", "judge", "prompt")
        diff = [k for k in fixed if old.get(k) != asdict(cfg).get(k)]
        if diff == ["limit"] and _extends(old.get("limit"), cfg.limit):
            diff = []   # a larger limit over the same (seeded) order keeps every task already run: extend
        if diff:
            raise ValueError(f"{out} holds a different run (differs in {', '.join(diff)}); "
                             "use another --out or the same settings to resume")
    cfg_file.write_text(json.dumps(asdict(cfg), indent=2))

    tasks = load_tasks(cfg.benchmark, limit=cfg.limit, datasets=cfg.datasets, seed=cfg.seed)
    rec_file, traj_file = out / "records.jsonl", out / "trajectories.jsonl"
    records = _read_records(rec_file)
    _drop_unrecorded(traj_file, records)
    done = {_key(r["task_id"], r["sample"]) for r in records}
    todo = [(t, s) for t in tasks for s in range(cfg.samples) if _key(t.id, s) not in done]

    judge = make_judge(cfg.judge, model=cfg.judge_model, base_url=cfg.judge_base_url,
                       api_key_env=cfg.judge_api_key_env)
    if env is None and cfg.mode != "closed-book":
        from sleuth.agent import Environment
        env = Environment.create(cfg.index, engine=cfg.engine, search_url=cfg.search_url, search_k=cfg.search_k,
                                 online=cfg.online, web=cfg.web)

    import torch

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), disable=not progress)
    with bar:
        job = bar.add_task(f"{cfg.benchmark} {cfg.mode}", total=len(tasks) * cfg.samples, completed=len(done))
        for b in range(0, len(todo), cfg.concurrency):
            batch = todo[b:b + cfg.concurrency]
            torch.manual_seed(cfg.seed * 1_000_003 + len(done) + b)
            new = _run_batch(cfg, policy, env, batch, traj_file)
            for r in new:
                task = next(t for t, _ in batch if t.id == r["task_id"])
                v = judge.judge(task.question, r["answer"], task.answers)
                r["verdict"] = v.to_dict()
                r["correct"] = bool(v.correct)
                r["score"] = v.score
            _append(rec_file, new)
            records += new
            bar.advance(job, len(batch))
            results = _results(cfg, records, judge, policy_name or getattr(policy, "name", ""))
            report.save_results(results, out / "results.json")
    if not records:
        raise ValueError(f"no tasks matched {cfg.benchmark!r}")
    return _results(cfg, records, judge, policy_name or getattr(policy, "name", ""))


def _resolve_agent_settings(cfg: EvalConfig, policy) -> EvalConfig:
    from dataclasses import replace

    from sleuth.policy.loader import agent_settings

    defaults = {"max_steps": 8, "max_new_tokens": 192, "prompt": "short-fewshot", "search_k": 5}
    return replace(cfg, **agent_settings(policy, {k: getattr(cfg, k) for k in defaults}, defaults))


def _run_batch(cfg: EvalConfig, policy, env, batch: list[tuple[Task, int]], traj_file: Path) -> list[dict]:
    questions = [t.question for t, _ in batch]
    rows = []
    if cfg.mode == "agent":
        from sleuth.agent import Agent, AgentConfig
        from sleuth.citations import unseen_citations
        from sleuth.trajectory import save_jsonl

        acfg = AgentConfig(max_steps=cfg.max_steps, temperature=cfg.temperature,
                           max_new_tokens=cfg.max_new_tokens, prompt=cfg.prompt)
        trajs = Agent(policy, env, acfg).run_batch(questions, [t.id for t, _ in batch])
        for (task, s), tr in zip(batch, trajs):
            tr.gold, tr.dataset, tr.group, tr.member = list(task.answers), task.dataset, task.id, s
            rows.append({"task_id": task.id, "sample": s, "dataset": task.dataset, "answer": tr.answer,
                         "stats": tr.stats(), "trajectory_id": tr.id, "queries": tr.queries[:32],
                         "bridge_searched": bridge_searched(tr.queries, task),
                         "grounded": bool(tr.evidence_url),
                         "citations": [{"url": c.url, "quote": c.quote, "source": c.source} for c in tr.citations],
                         "unseen_citations": len(unseen_citations(tr))})
        save_jsonl(trajs, traj_file)
        return rows
    from sleuth.baselines import answer_batch
    from sleuth.policy.base import SamplingParams

    t0 = time.time()
    docs = next(iter(env.docstores.values()), None) if env is not None else None
    answers = answer_batch(policy, questions, mode=cfg.mode, engine=env.search_engine if env else None,
                           docs=docs, k=cfg.rag_k,
                           params=SamplingParams(max_new_tokens=48, temperature=cfg.temperature))
    wall = (time.time() - t0) / max(1, len(batch))
    for (task, s), a in zip(batch, answers):
        rows.append({"task_id": task.id, "sample": s, "dataset": task.dataset, "answer": a.text,
                     "stats": {"steps": 1, "search_queries": int(cfg.mode == "rag"), "urls_opened": 0,
                               "code_calls": 0, "format_errors": 0, "generated_tokens": a.generated_tokens,
                               "prompt_tokens": a.prompt_tokens, "wall_seconds": round(wall, 3),
                               "finish_reason": "finish"}})
    return rows


def _results(cfg: EvalConfig, records: list[dict], judge, policy_name: str) -> dict[str, Any]:
    res = report.build_results(records, run={"name": f"{cfg.benchmark}-{cfg.mode}", "policy": policy_name,
                                             "benchmarks": [cfg.benchmark], "samples_per_task": cfg.samples,
                                             "config": asdict(cfg)},
                               judge={"name": judge.name, "config": judge.config()},
                               ks=[k for k in cfg.ks if k <= cfg.samples], keep_samples=True)
    # EM and F1 beside cover, always: a gain only in the lenient metric is not learning.
    for ds in res["datasets"]:
        res["datasets"][ds]["scores"] = _scores([r for r in records if r["dataset"] == ds])
    res["overall"]["scores"] = _scores(records)
    if cfg.mode == "agent":
        res["overall"]["citations"] = citation_summary(records)
        res["overall"]["research"] = research_summary(records)
        for ds in res["datasets"]:
            res["datasets"][ds]["research"] = research_summary([r for r in records if r["dataset"] == ds])
    return res


def bridge_searched(queries: list[str], task: Task) -> bool | None:
    """Whether one of the queries names an entity the question hides (a synthesised bridge's search path after
    its first query); None for tasks that have no known search path."""
    from sleuth.search.corpus import surface_of
    from sleuth.tasks.judges import mentions

    path = task.metadata.get("search_path") or []
    if len(path) < 2:
        return None
    hidden = [h for title in path[1:] for h in {title, surface_of(title)}]
    return any(mentions(q, hidden) for q in queries)


def research_summary(records: list[dict]) -> dict[str, Any]:
    """Research behaviour, not accuracy: how many trajectories search more than once, browse or run code, and —
    on tasks with a known search path — how often the agent searched for the hidden bridge entity, overall and
    among its correct answers."""
    stats = [r.get("stats") or {} for r in records]
    n = len(records) or 1
    out: dict[str, Any] = {
        "trajectories": len(records),
        "search_calls_mean": sum(s.get("search_calls", 0) for s in stats) / n,
        "searched_at_least_twice": sum(s.get("search_calls", 0) >= 2 for s in stats) / n,
        "browsed": sum(s.get("browse_calls", 0) > 0 for s in stats) / n,
        "ran_code": sum(s.get("code_calls", 0) > 0 for s in stats) / n}
    known = [r for r in records if r.get("bridge_searched") is not None]
    if known:
        correct = [r for r in known if r.get("correct")]
        out["bridge_tasks"] = len(known)
        out["bridge_searched"] = sum(bool(r["bridge_searched"]) for r in known) / len(known)
        out["correct_with_bridge_searched"] = (sum(bool(r["bridge_searched"]) for r in correct) / len(correct)
                                               if correct else None)
    return out


def citation_summary(records: list[dict]) -> dict[str, Any]:
    """How many answers carry a verified citation; how many grounded answers (the answer occurs in what the
    agent was shown) do — the target is all of them — and how many citations quote text the agent's
    observations never showed (an audit against the transcript; must be 0)."""
    answered = [r for r in records if r.get("answer")]
    grounded = [r for r in answered if r.get("grounded")]
    cited = [r for r in answered if r.get("citations")]
    n_cites = [c for r in records for c in r.get("citations", [])]
    return {"answers": len(answered), "grounded_answers": len(grounded), "answers_with_citation": len(cited),
            "grounded_with_citation": sum(bool(r.get("citations")) for r in grounded),
            "grounded_with_citation_share": (sum(bool(r.get("citations")) for r in grounded) / len(grounded)
                                             if grounded else None),
            "citations": len(n_cites), "by_model": sum(c["source"] == "model" for c in n_cites),
            "by_system": sum(c["source"] == "system" for c in n_cites),
            "citations_to_unseen_text": sum(r.get("unseen_citations", 0) for r in records)}
