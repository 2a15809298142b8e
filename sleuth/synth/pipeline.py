"""Corpus in, validated training tasks out: generate candidates, run the funnel, write JSONL + a summary.

    tasks, funnel = synthesize("passages.jsonl.gz", SynthConfig(n=2000, seed=0))
    write_outputs(tasks, funnel, "tasks.jsonl")     # also writes tasks.funnel.json beside it

Everything is deterministic given the seed. The two model-backed stages take pluggable solvers; without
them the stages are recorded as 'skipped' in the funnel, and the output is then not difficulty-filtered
(the summary says so).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from sleuth.search.corpus import Passage, load_source
from sleuth.synth.generate import (PHRASINGS, GenStats, GraphConfig, LinkGraph, generate_bridges, generate_comparisons,
                                   generate_lookups)
from sleuth.synth.reasoning import KINDS, generate_reasoning
from sleuth.synth.validate import (ClosedBookSolver, EvalIndex, Stage, SynthError, ToolSolver, all_benchmark_names,
                                   check_closed_book, check_dedup, check_hops, check_leak, check_pass_at_n, check_span,
                                   check_unique, load_eval_questions, skipped)
from sleuth.tasks.task import Task


@dataclass
class SynthConfig:
    n: int = 2000
    """Candidates to generate before the funnel (the funnel keeps a fraction of them)."""
    seed: int = 0
    """Seed of every random choice; the same corpus, config and seed give the same tasks."""
    hops: tuple[int, ...] = (2, 3, 4)
    """Bridge hop counts (passages per question), candidates split evenly among them."""
    mix: dict[str, float] = field(default_factory=lambda: {"bridge": 0.55, "comparison": 0.2, "reasoning": 0.25})
    """Share of candidates per task type: bridge, comparison, reasoning, and lookup (single-hop, the easy end
    of a curriculum; 0 by default)."""
    lookup_balance: bool = False
    """Lookups: draw the kind of fact asked (date, creator, location, population) uniformly before the passage
    (otherwise most lookups ask for a date, the fact most passages state)."""
    reasoning_kinds: tuple[str, ...] = KINDS
    """Reasoning task kinds: age, years-between, difference, conversion."""
    cloze: str = "auto"
    """Add the linking sentence (entity blanked) to a hop description: 'auto' when the type alone is
    ambiguous, 'always', or 'never'."""
    phrasing: str = "type"
    """How two-hop bridges name their hidden entity: 'type' ("the American film director mentioned in the
    article on X") or 'relation' ("the director of X", from the linking sentence's role; natural questions
    like the dev set's, fewer candidates)."""
    graph: GraphConfig = field(default_factory=GraphConfig)
    """Which titles become links (length, commonness, hub cut-off)."""
    eval_sets: tuple[str, ...] = ("all",)
    """Evaluation sets no training question may duplicate: benchmark names, task files, or 'all'."""
    dedup_threshold: float = 0.6
    """Token-set Jaccard at or above which a question counts as a near-duplicate of an eval question."""
    closed_book: bool = True
    """Run the closed-book stage when a closed-book solver is given."""
    pass_n: int = 4
    """Attempts per task in the pass@N stage (0 disables it)."""
    pass_min: float = 0.25
    """Lowest with-tools solve rate kept (tasks never solved carry no signal, or are broken)."""
    pass_max: float = 0.75
    """Highest with-tools solve rate kept (tasks always solved are too easy)."""
    program_timeout: float = 5.0
    """Seconds each reasoning program may run."""
    hops_k: int = 0
    """With a search engine: keep only bridges that need every hop, each findable in the top hops_k results
    (validate.check_hops); 0 disables the stage. Runs before the model-backed stages."""
    limit: int | None = None
    """Keep at most this many tasks after the funnel."""
    progress: bool = True
    """Show rich progress bars (on stderr)."""

    def check(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not self.hops or any(h not in (2, 3, 4) for h in self.hops):
            raise ValueError(f"hops must be a non-empty subset of 2, 3, 4; got {self.hops}")
        unknown = set(self.mix) - {"bridge", "comparison", "reasoning", "lookup"}
        if unknown or not self.mix or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"mix needs non-negative shares of bridge/comparison/reasoning/lookup, got {self.mix}")
        if not 0.0 <= self.pass_min <= self.pass_max <= 1.0:
            raise ValueError(f"need 0 <= pass_min <= pass_max <= 1, got {self.pass_min}, {self.pass_max}")
        if self.hops_k < 0:
            raise ValueError(f"hops_k must be >= 0, got {self.hops_k}")
        if self.pass_n < 0:
            raise ValueError(f"pass_n must be >= 0, got {self.pass_n}")
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {self.phrasing!r}")


@dataclass
class Funnel:
    stages: list[Stage] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    graph: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    kept_by_dataset: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def candidates(self) -> int:
        return self.stages[0].n_in if self.stages else 0

    @property
    def kept(self) -> int:
        return sum(self.kept_by_dataset.values())

    def to_dict(self) -> dict[str, Any]:
        skipped_stages = [s.name for s in self.stages if s.status == "skipped"]
        return {"candidates": self.candidates, "kept": self.kept, "kept_by_dataset": self.kept_by_dataset,
                "skipped_stages": skipped_stages,
                "difficulty_filtered": not {"closed_book", "pass_at_n"} & set(skipped_stages),
                "stages": [s.to_dict() for s in self.stages], "generation": self.generation,
                "graph": self.graph, "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "warnings": self.warnings, "config": self.config}

    def table(self):
        from rich.table import Table

        t = Table(title=f"synthesis funnel: {self.candidates} candidates -> {self.kept} tasks")
        for col in ("stage", "status", "in", "out", "top rejection reasons"):
            t.add_column(col)
        for s in self.stages:
            reasons = ", ".join(f"{k} ({v})" for k, v in s.rejected.most_common(3))
            t.add_row(s.name, s.status, str(s.n_in), str(s.n_out), reasons or s.note if s.status == "skipped"
                      else reasons)
        return t


def parse_mix(s: str) -> dict[str, float]:
    """"lookup=1" or "bridge=0.5,comparison=0.2" -> {"lookup": 1.0}; the shares are checked by SynthConfig."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in s.split(",") if p.strip()):
        name, sep, val = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[name.strip()] = float(val)
        except ValueError:
            raise ValueError(f"a mix is type=share pairs like lookup=0.3,bridge=0.7, got {s!r}") from None
    return mix


def _passages(corpus: str | Path | Iterable[Passage]) -> list[Passage]:
    if isinstance(corpus, (str, Path)):
        return list(load_source(corpus))
    out = list(corpus)
    if out and not isinstance(out[0], Passage):
        raise TypeError(f"corpus must be a path or an iterable of Passage, got items of {type(out[0]).__name__}")
    return out


def _quotas(cfg: SynthConfig) -> dict[str, int]:
    total = sum(cfg.mix.values())
    q = {k: int(round(cfg.n * v / total)) for k, v in cfg.mix.items()}
    q["bridge"] = q.get("bridge", 0) + cfg.n - sum(q.values())   # rounding remainder goes to bridges
    return q


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=True)


def synthesize(corpus: str | Path | Iterable[Passage], cfg: SynthConfig | None = None,
               closed_book_solver: ClosedBookSolver | None = None, tool_solver: ToolSolver | None = None, *,
               rewriter: Callable[[Task], str | None] | None = None,
               eval_questions: list[tuple] | None = None,
               graph: LinkGraph | None = None, search_engine: Any = None) -> tuple[list[Task], Funnel]:
    """Generate candidates from the corpus and run the validation funnel.

    ``eval_questions`` ((id, question[, answers]) tuples) replaces loading ``cfg.eval_sets``; ``graph`` reuses a
    link graph already built from the same passages; ``search_engine`` (the index the agent will search) runs the
    hops stage when ``cfg.hops_k`` is set; ``rewriter`` (e.g. ``policy_rewriter(policy)``)
    rephrases questions before validation, so a rewrite that leaks the answer is caught."""
    cfg = cfg or SynthConfig()
    cfg.check()
    funnel = Funnel(config=_config_dict(cfg))
    t0 = time.perf_counter()
    passages = _passages(corpus) if graph is None else [graph.passages[p] for p in graph.order]
    if not passages:
        raise SynthError("the corpus has no passages")
    funnel.timings["load"] = time.perf_counter() - t0

    quotas = _quotas(cfg)
    with _progress(cfg.progress) as prog:
        t = time.perf_counter()
        if graph is None:
            bar = prog.add_task("linking passages", total=len(passages))
            graph = LinkGraph(passages, cfg.graph, progress=lambda k: prog.advance(bar, k))
            prog.update(bar, completed=len(passages))
        funnel.graph = {"passages": len(passages), **graph.stats}
        funnel.timings["graph"] = time.perf_counter() - t

        t = time.perf_counter()
        stats = GenStats()
        gen_bar = prog.add_task("generating candidates", total=cfg.n)
        candidates: list[Task] = []
        per_hop = [quotas.get("bridge", 0) // len(cfg.hops) + (1 if i < quotas.get("bridge", 0) % len(cfg.hops) else 0)
                   for i in range(len(cfg.hops))]
        for hops, k in zip(cfg.hops, per_hop):
            rng = random.Random(f"{cfg.seed}-bridge-{hops}")
            for task in generate_bridges(graph, k, hops, rng, stats, cfg.cloze, phrasing=cfg.phrasing):
                candidates.append(task)
                prog.advance(gen_bar)
        for task in generate_lookups(graph, quotas.get("lookup", 0), random.Random(f"{cfg.seed}-lookup"), stats,
                                     balance=cfg.lookup_balance):
            candidates.append(task)
            prog.advance(gen_bar)
        for task in generate_comparisons(graph, quotas.get("comparison", 0), random.Random(f"{cfg.seed}-cmp"), stats):
            candidates.append(task)
            prog.advance(gen_bar)
        if quotas.get("reasoning", 0):
            rs = generate_reasoning(graph, quotas["reasoning"], random.Random(f"{cfg.seed}-reasoning"), stats,
                                    cfg.reasoning_kinds, cfg.cloze, cfg.program_timeout)
            candidates += rs
            prog.advance(gen_bar, len(rs))
        funnel.timings["generate"] = time.perf_counter() - t
    funnel.generation = {"quotas": quotas, "attempts": dict(stats.attempts), "produced": dict(stats.produced),
                         "rejected": dict(sorted(stats.rejected.items()))}
    for task in candidates:
        task.metadata["seed"] = cfg.seed

    if rewriter is not None:
        t = time.perf_counter()
        for task in candidates:
            new = rewriter(task)
            if new:
                task.metadata["original_question"] = task.question
                task.question = new
        funnel.timings["rewrite"] = time.perf_counter() - t

    tasks = candidates
    t = time.perf_counter()
    for name, run in (("span", lambda ts: check_span(ts, graph.passages)),
                      ("unique", lambda ts: check_unique(ts, graph)),
                      ("leak", check_leak)):
        s0 = time.perf_counter()
        tasks, st = run(tasks)
        st.seconds = time.perf_counter() - s0
        funnel.stages.append(st)

    s0 = time.perf_counter()
    if eval_questions is None:
        names = [n for name in cfg.eval_sets for n in (all_benchmark_names() if name == "all" else [name])]
        eval_questions = load_eval_questions(names, warn=funnel.warnings.append)
    tasks, st = check_dedup(tasks, EvalIndex(eval_questions, cfg.dedup_threshold))
    st.seconds = time.perf_counter() - s0
    funnel.stages.append(st)

    s0 = time.perf_counter()
    if not cfg.hops_k:
        tasks, st = skipped("hops", tasks, "disabled (hops_k=0)")
    elif search_engine is None:
        raise SynthError("the hops stage (hops_k > 0) needs the search engine of the index the agent will search")
    else:
        tasks, st = check_hops(tasks, search_engine, cfg.hops_k)
    st.seconds = time.perf_counter() - s0
    funnel.stages.append(st)

    s0 = time.perf_counter()
    if closed_book_solver is None or not cfg.closed_book:
        tasks, st = skipped("closed_book", tasks, "no closed-book solver given" if cfg.closed_book
                            else "disabled by configuration")
    else:
        tasks, st = check_closed_book(tasks, closed_book_solver)
    st.seconds = time.perf_counter() - s0
    funnel.stages.append(st)

    s0 = time.perf_counter()
    if tool_solver is None or cfg.pass_n == 0:
        tasks, st = skipped("pass_at_n", tasks, "no tool solver given" if cfg.pass_n else "disabled (pass_n=0)")
    else:
        tasks, st = check_pass_at_n(tasks, tool_solver, cfg.pass_n, cfg.pass_min, cfg.pass_max)
    st.seconds = time.perf_counter() - s0
    funnel.stages.append(st)
    funnel.timings["validate"] = time.perf_counter() - t

    random.Random(f"{cfg.seed}-order").shuffle(tasks)   # interleave types; deterministic
    if cfg.limit is not None:
        tasks = tasks[: cfg.limit]
    funnel.kept_by_dataset = dict(sorted(Counter(t.dataset for t in tasks).items()))
    funnel.timings["total"] = time.perf_counter() - t0
    return tasks, funnel


def _config_dict(cfg: SynthConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["hops"] = list(cfg.hops)
    return d


def write_outputs(tasks: list[Task], funnel: Funnel, out: str | Path) -> tuple[Path, Path]:
    """Tasks as JSONL at ``out`` and the funnel summary as ``<stem>.funnel.json`` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    summary = out.with_name(stem + ".funnel.json")
    summary.write_text(json.dumps(funnel.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return out, summary


# ------------------------------------------------------------------------------ solvers from the project
def closed_book_solver(policy: Any, max_new_tokens: int = 48, batch_size: int = 32) -> ClosedBookSolver:
    """The policy answering with no tools (the evaluation's closed-book baseline), greedy."""
    from sleuth.baselines import answer_batch
    from sleuth.policy.base import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def solve(questions: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(questions), batch_size):
            out += [a.text for a in answer_batch(policy, questions[i:i + batch_size], mode="closed-book",
                                                 params=params)]
        return out

    return solve


def agent_tool_solver(policy: Any, env: Any, agent_config: Any = None, batch_size: int = 16) -> ToolSolver:
    """The agent with its tools, n independent samples per question (temperature from agent_config)."""
    from sleuth.agent import Agent, AgentConfig

    agent = Agent(policy, env, agent_config or AgentConfig())

    def solve(questions: list[str], n: int) -> list[list[str]]:
        flat = [q for q in questions for _ in range(n)]
        answers: list[str] = []
        for i in range(0, len(flat), batch_size):
            answers += [t.answer or "" for t in agent.run_batch(flat[i:i + batch_size])]
        return [answers[i * n:(i + 1) * n] for i in range(len(questions))]

    return solve
