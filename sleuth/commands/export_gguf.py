"""`sleuth export-gguf OUT.gguf`: a policy (the shipped trained agent by default) as one GGUF file for llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("export-gguf")
    def export_gguf(
        out: Path = typer.Argument(..., help="the .gguf file to write"),
        model: Optional[str] = typer.Option(None, "--model", help="policy to export: default the shipped trained "
                                                                 "agent; 'base', or a model / adapter directory"),
        weight_type: str = typer.Option("q8_0", "--type", help="f32 (exact) | f16 | bf16 | q8_0"),
    ) -> None:
        """Write a policy's weights (a LoRA adapter merged) as GGUF, e.g. to serve the trained agent with llama.cpp
        (`llama-server -m OUT.gguf`) and run `sleuth ask --base-url` against it."""
        from sleuth import paths
        from sleuth.policy.llamacpp import WEIGHT_TYPES, export_gguf as write
        from sleuth.policy.loader import load_policy

        if weight_type not in WEIGHT_TYPES:
            typer.echo(f"Error: --type must be one of {', '.join(WEIGHT_TYPES)}", err=True)
            raise typer.Exit(2)
        if out.suffix != ".gguf":
            typer.echo(f"Error: {out} does not end in .gguf", err=True)
            raise typer.Exit(2)
        try:
            policy = load_policy(model)
        except FileNotFoundError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        try:
            write(policy.model, policy.gguf_template or paths.embedded_policy_gguf(), tmp, weight_type)
            tmp.replace(out)                 # never a half-written file under the final name
        except ValueError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1)
        finally:
            tmp.unlink(missing_ok=True)
        typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB, {weight_type}) from {policy.name} "
                   f"version {policy.version}")
