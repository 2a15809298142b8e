"""`sleuth serve-openai` — serve a local policy over an OpenAI-compatible API (sleuth/serve/openai_api.py)."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve-openai")
    def serve_openai(
        port: int = typer.Option(8000, "--port", help="Port to listen on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
        model: Optional[str] = typer.Option(None, "--model", "-m",
                                            help="Local model dir, .gguf or LoRA export; 'base' = the "
                                                 "untrained SmolLM2-135M-Instruct. Default: the shipped trained agent."),
        name: Optional[str] = typer.Option(None, "--name", help="Model id reported by /v1/models "
                                                                 "(default: the model's name)."),
    ) -> None:
        """Serve a local policy at /v1/chat/completions (native tool calls for search/browse/code/finish)."""
        import uvicorn
        from rich.console import Console

        from sleuth.policy.loader import load_policy
        from sleuth.serve.openai_api import create_app

        console = Console(stderr=True)
        try:
            with console.status("loading model…"):
                policy = load_policy(model)
        except (FileNotFoundError, ValueError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        api = create_app(policy, name)
        console.print(f"serving {name or policy.name} at http://{host}:{port}/v1 "
                      f"(sleuth ask … --base-url http://{host}:{port}/v1)")
        uvicorn.run(api, host=host, port=port, log_level="warning")
