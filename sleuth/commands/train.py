"""`sleuth train` — end-to-end RL of the agent (REINFORCE, gamma-decay, partial rollout), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Optional[Path] = typer.Option(
            None, "--config", help="TOML: RunConfig keys + an \\[rl] table (see configs/rl.toml)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run directory (checkpoints, metrics, TensorBoard); "
                                           "default: the config's rl.out_dir (runs/rl)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out."),
        iterations: Optional[int] = typer.Option(None, "--iterations", help="Override rl.iterations."),
        tasks: Optional[str] = typer.Option(None, "--tasks", help="Benchmark name or task file."),
        model: Optional[str] = typer.Option(None, "--model"),
        search_url: Optional[str] = typer.Option(None, "--search-url", help="Search through a `sleuth "
                                                 "serve-search` service (e.g. http://127.0.0.1:8765)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Override rl.seed (task order and sampling)."),
        export: Optional[Path] = typer.Option(None, "--export",
                                              help="After training, write the policy to this model directory."),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="Run (or resume) a whole recipe: task files, "
                                              "stages, checkpoint selection, export (configs/recipe.toml "
                                              "rebuilds the shipped policy)."),
    ) -> None:
        """Train the agent with RL on a task file; the result is usable by `ask --model` and `eval --model`."""
        from rich.console import Console

        from sleuth.rl.train import export_policy, load_run_config, train as run_train

        console = Console()
        if recipe is not None:
            from sleuth.rl.recipe import run_recipe
            try:
                run_recipe(recipe, log=console.print)
            except (ValueError, FileNotFoundError) as e:
                console.print(f"[red]{e}[/red]")
                raise typer.Exit(2)
            return
        try:
            cfg = load_run_config(config, tasks=tasks, model=model, search_url=search_url, **({"rl_seed": seed} if seed is not None else {}))
            out = out or Path(cfg.rl.out_dir)
            run_train(cfg, out, resume=resume, iterations=iterations, log=console.print)
        except (ValueError, FileNotFoundError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        if export:
            console.print(f"policy written to {export_policy(out, export)}")
