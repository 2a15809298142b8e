"""`sleuth eval` — run a benchmark (resumable) and `sleuth eval compare A.json B.json`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    ev = typer.Typer(help="Evaluate the agent or a baseline on a benchmark; compare two runs.",
                     invoke_without_command=True, no_args_is_help=False)
    app.add_typer(ev, name="eval")

    @ev.callback()
    def run(
        ctx: typer.Context,
        benchmark: str = typer.Option("dev", "--benchmark", "-b", help="Benchmark name or a JSONL/CSV file."),
        mode: str = typer.Option("agent", "--mode", help="agent | rag | closed-book"),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Model or adapter dir, 'base' (the "
                                            "untrained model); default: the shipped trained agent."),
        base_url: Optional[str] = typer.Option(None, "--base-url"),
        samples: int = typer.Option(1, "--samples", "-k", help="Samples per task (pass@k for k ≤ samples)."),
        limit: Optional[int] = typer.Option(None, "--limit", "-n"),
        dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="Only these datasets (repeatable)."),
        concurrency: int = typer.Option(16, "--concurrency", "-c", help="Trajectories per batch."),
        index: Optional[str] = typer.Option(None, "--index"),
        engine: str = typer.Option("auto", "--engine", help="auto (hybrid if the index has embeddings) | hybrid | lexical | dense"),
        web: Optional[str] = typer.Option(None, "--web", help="Search the web instead of an index: searxng "
                                          "(SEARXNG_URL) | tavily (TAVILY_API_KEY) | brave (BRAVE_API_KEY); "
                                          "implies --online."),
        online: bool = typer.Option(False, "--online", help="Allow browsing real http(s) URLs."),
        search_url: Optional[str] = typer.Option(None, "--search-url", help="Search through a `sleuth "
                                                 "serve-search` service (e.g. http://127.0.0.1:8765)."),
        judge: str = typer.Option("cover", "--judge", help="cover | em | f1>=T | llm"),
        judge_model: Optional[str] = typer.Option(None, "--judge-model"),
        judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url"),
        judge_api_key_env: Optional[str] = typer.Option(None, "--judge-api-key-env",
                                                        help="Environment variable holding the judge's API key."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Default: what the policy was "
                                                "trained with, else 8."),
        temperature: float = typer.Option(0.7, "--temperature"),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt variant (default: the policy's "
                                             "training prompt, else short-fewshot)."),
        seed: int = typer.Option(0, "--seed"),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/eval-<bench>-<mode>)."),
    ) -> None:
        """Run an evaluation. Re-running with the same --out resumes, never re-running finished samples."""
        if ctx.invoked_subcommand:
            return
        from rich.console import Console

        from sleuth.evals import report
        from sleuth.evals.run import EvalConfig, run_eval

        cfg = EvalConfig(benchmark=benchmark, mode=mode, limit=limit, datasets=dataset or None, seed=seed,
                         samples=samples, ks=sorted({1, samples}), concurrency=concurrency, model=model,
                         base_url=base_url, index=index, engine=engine, web=web, online=online,
                         search_url=search_url, judge=judge, judge_model=judge_model,
                         judge_base_url=judge_base_url, judge_api_key_env=judge_api_key_env, max_steps=max_steps,
                         temperature=temperature, prompt=prompt)
        out_dir = out or Path("runs") / f"eval-{Path(benchmark).stem}-{mode}"
        console = Console()
        try:
            results = run_eval(cfg, out_dir)
        except (ValueError, FileNotFoundError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        console.print(report.render(results))
        s = results["overall"]["scores"]
        console.print(f"EM {s['em']:.3f}  F1 {s['f1']:.3f}  cover {s['cover']:.3f}   results: {out_dir}/results.json")

    @ev.command()
    def compare(a: Path = typer.Argument(..., exists=True), b: Path = typer.Argument(..., exists=True)) -> None:
        """Side-by-side table of two results.json files with per-metric differences (B − A)."""
        from rich.console import Console

        from sleuth.evals import report

        try:
            Console().print(report.compare(a, b))
        except ValueError as e:
            Console().print(f"[red]{e}[/red]")
            raise typer.Exit(2)
