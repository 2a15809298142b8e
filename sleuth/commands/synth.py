"""`sleuth synth` — synthesise validated multi-hop training tasks from a corpus."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _default_corpus() -> str:
    from sleuth.paths import shared_data

    p = shared_data() / "corpus" / "passages.jsonl.gz"
    return str(p) if p.is_file() else "embedded"


def _parse_hops(s: str) -> tuple[int, ...]:
    try:
        hops = tuple(sorted({int(x) for x in s.split(",") if x.strip()}))
    except ValueError:
        raise typer.BadParameter(f"--hops takes comma-separated integers like 2,3,4, got {s!r}")
    if not hops or any(h not in (2, 3, 4) for h in hops):
        raise typer.BadParameter(f"--hops must be drawn from 2, 3, 4, got {s!r}")
    return hops


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        corpus: Optional[str] = typer.Option(None, "--corpus", help="passages.jsonl(.gz), a folder, or 'embedded' "
                                             "(default: the shared 28k-passage corpus when present)."),
        n: int = typer.Option(2000, "--n", help="Candidates to generate; the funnel keeps a fraction."),
        out: Path = typer.Option(Path("tasks.jsonl"), "--out", "-o", help="Output JSONL; the funnel summary "
                                 "goes to <stem>.funnel.json beside it."),
        seed: int = typer.Option(0, "--seed"),
        hops: str = typer.Option("2,3,4", "--hops", help="Bridge hop counts, e.g. 2,3."),
        mix: Optional[str] = typer.Option(None, "--mix", help="Share of candidates per type, e.g. "
                                          "lookup=1 or bridge=0.55,comparison=0.2,reasoning=0.25 (the default); "
                                          "lookup = single-hop questions, the easy end of a curriculum."),
        balance_lookups: bool = typer.Option(False, "--balance-lookups",
                                             help="Lookups: ask dates, creators, locations and populations "
                                             "equally often (default: as the corpus states them, mostly dates)."),
        closed_book: bool = typer.Option(True, "--closed-book/--no-closed-book",
                                         help="Reject tasks the policy answers without tools."),
        pass_at: int = typer.Option(0, "--pass-at", help="N agent attempts per task for the pass@N filter "
                                    "(0 = skip)."),
        pass_min: float = typer.Option(0.25, "--pass-min", help="Lowest with-tools solve rate kept."),
        pass_max: float = typer.Option(0.75, "--pass-max", help="Highest with-tools solve rate kept."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Policy for the solver stages "
                                            "(default: 'base', the untrained embedded model)."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server for the policy."),
        index: Optional[str] = typer.Option(None, "--index", help="Index the agent searches (pass@N)."),
        engine: str = typer.Option("auto", "--engine", help="Search engine of the index for the agent."),
        eval_set: Optional[List[str]] = typer.Option(None, "--eval-set", help="Evaluation set(s) to deduplicate "
                                                     "against (repeatable; default: all registered)."),
        dedup_threshold: float = typer.Option(0.6, "--dedup-threshold"),
        cloze: str = typer.Option("auto", "--cloze", help="Linking-sentence clue in hop descriptions: "
                                  "auto | always | never."),
        phrasing: str = typer.Option("type", "--phrasing", help="How two-hop bridges name the hidden entity: "
                                     "type ('the American film director mentioned in the article on X') or "
                                     "relation ('the director of X', read from the linking sentence)."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Keep at most this many tasks."),
        hops_k: int = typer.Option(0, "--hops-k", help="Keep only bridges that need every hop, each findable in "
                                   "the top K results of --index (searching the question must not show the "
                                   "answer). 0 = off."),
    ) -> None:
        """Generate tool-centric tasks (bridge, comparison, reasoning, single-hop lookup), validate, filter, write."""
        from rich.console import Console

        from sleuth.synth.pipeline import (SynthConfig, agent_tool_solver, closed_book_solver, parse_mix,
                                           synthesize, write_outputs)
        from sleuth.synth.validate import SynthError

        console = Console(stderr=True)
        try:
            extra = {"mix": parse_mix(mix)} if mix else {}
            cfg = SynthConfig(n=n, seed=seed, hops=_parse_hops(hops), **extra, closed_book=closed_book,
                              pass_n=pass_at, pass_min=pass_min, pass_max=pass_max,
                              eval_sets=tuple(eval_set or ("all",)), dedup_threshold=dedup_threshold, cloze=cloze,
                              limit=limit, lookup_balance=balance_lookups, hops_k=hops_k,
                              phrasing=phrasing)
            cfg.check()
        except ValueError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)

        policy = None
        cb_solver = tool_solver = None
        if closed_book or pass_at:
            from sleuth.policy.loader import load_policy

            try:
                policy = load_policy(model or "base", base_url)   # filters against the untrained model
            except (OSError, ValueError, RuntimeError) as e:
                console.print(f"[yellow]could not load the policy ({type(e).__name__}: {e}); closed-book and "
                              "pass@N stages will be skipped[/yellow]")
        if policy is not None and closed_book:
            console.print(f"closed-book stage: {getattr(policy, 'name', 'the policy')} answers every candidate "
                          "that survives the cheap stages (--no-closed-book skips it)")
            cb_solver = closed_book_solver(policy)
        if policy is not None and pass_at:
            from sleuth.agent import AgentConfig, Environment

            try:
                env = Environment.from_index(index, engine=engine)
            except (OSError, ValueError) as e:
                console.print(f"[yellow]cannot set up the agent's tools ({e}); pass@N stage skipped[/yellow]")
            else:
                tool_solver = agent_tool_solver(policy, env, AgentConfig())

        search_engine = None
        if hops_k:
            from sleuth.agent import Environment

            try:
                search_engine = Environment.from_index(index, engine=engine).search_engine
            except (OSError, ValueError) as e:
                console.print(f"[red]the hops stage needs the index the agent searches: {e}[/red]")
                raise typer.Exit(2)
        try:
            tasks, funnel = synthesize(corpus or _default_corpus(), cfg, cb_solver, tool_solver,
                                       search_engine=search_engine)
        except (SynthError, FileNotFoundError, ValueError, TypeError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1)
        tasks_path, summary_path = write_outputs(tasks, funnel, out)
        console.print(funnel.table())
        for w in funnel.warnings:
            console.print(f"[yellow]{w}[/yellow]")
        skipped = [s.name for s in funnel.stages if s.status == "skipped"]
        if skipped:
            console.print(f"[yellow]skipped stages: {', '.join(skipped)} — tasks are not difficulty-filtered"
                          "[/yellow]" if {"closed_book", "pass_at_n"} & set(skipped) else
                          f"[yellow]skipped stages: {', '.join(skipped)}[/yellow]")
        console.print(f"{len(tasks)} tasks -> {tasks_path}   funnel -> {summary_path}   "
                      f"({funnel.timings['total']:.1f}s)")
