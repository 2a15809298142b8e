"""`sleuth serve` — the web page, runs API, OpenAI-compatible endpoint and MCP tools (sleuth/serve/app.py)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        port: int = typer.Option(8765, "--port", help="Port to listen on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default; any other "
                                                             "address needs a token)."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Local model dir or 'base'. Default: the "
                                                                        "shipped trained agent."),
        index: Optional[str] = typer.Option(None, "--index", help="Index to search (default: wiki)."),
        engine: str = typer.Option("auto", "--engine", help="auto | hybrid | lexical | dense"),
        concurrency: int = typer.Option(2, "--concurrency", help="Runs at once (their generations are batched)."),
        max_queued: int = typer.Option(64, "--max-queued", help="Queued runs beyond which submissions get 503."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Step budget per ask run (default: "
                                                "what the policy was trained with, else 10)."),
        db: Optional[Path] = typer.Option(None, "--db", help="SQLite file of runs (default: "
                                          "$SLEUTH_HOME/serve/sleuth.db)."),
        token: Optional[str] = typer.Option(None, "--token", envvar="SLEUTH_SERVE_TOKEN",
                                            help="Bearer token required on the API, /v1 and /mcp "
                                                 "('generate' makes one and prints it)."),
        max_body: int = typer.Option(256 * 1024, "--max-body", help="Largest request body in bytes."),
        rate: float = typer.Option(20.0, "--rate", help="Requests per second per client (sustained)."),
        burst: int = typer.Option(100, "--burst", help="Requests per client at once before the rate applies."),
        mcp_tools: list[str] = typer.Option([], "--mcp-tools", help="Give the agent the tools of an MCP server: "
                                            "a URL (streamable HTTP) or a command line (stdio). Repeatable."),
        openai: bool = typer.Option(True, "--openai/--no-openai", help="Serve the policy at /v1."),
        mcp: bool = typer.Option(True, "--mcp/--no-mcp", help="Serve sleuth's tools over MCP at /mcp."),
    ) -> None:
        """Serve sleuth: research runs with live progress and history, a web page, /v1 and /mcp."""
        import uvicorn
        from rich.console import Console

        from sleuth.agent import AgentConfig, Environment
        from sleuth.paths import home
        from sleuth.policy.loader import agent_settings, load_policy
        from sleuth.serve.app import ServiceConfig, build
        from sleuth.serve.batching import BatchingPolicy
        from sleuth.serve.runners import default_registry
        from sleuth.serve.runners.ask import AskSettings
        from sleuth.serve.security import SecurityConfig, is_loopback

        console = Console(stderr=True)
        if token == "generate":
            token = secrets.token_urlsafe(24)
            console.print(f"token: {token}")
        if not is_loopback(host) and not token:
            console.print(f"[red]refusing to bind {host} without a token[/red]: pass --token (or set "
                          "SLEUTH_SERVE_TOKEN), or bind 127.0.0.1")
            raise typer.Exit(2)
        if concurrency < 1 or max_queued < 1:
            console.print("[red]--concurrency and --max-queued must be at least 1[/red]")
            raise typer.Exit(2)
        extra_tools = None
        try:
            with console.status("loading model and index…"):
                policy = load_policy(model)
                run = agent_settings(policy, {"max_steps": max_steps}, {
                    "max_steps": 10, "prompt": "short-fewshot", "max_new_tokens": AgentConfig.max_new_tokens,
                    "search_k": 5})
                if mcp_tools:
                    from sleuth.tools.mcp import MCPToolbox

                    extra_tools = MCPToolbox.connect(mcp_tools)
                env = Environment.from_index(index, engine=engine, search_k=run["search_k"], extra_tools=extra_tools)
        except (FileNotFoundError, ValueError, OSError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        shared = BatchingPolicy(policy, max_batch=max(8, concurrency))
        data_dir = home() / "serve"
        settings = AskSettings(max_steps=run["max_steps"], prompt=run["prompt"], max_new_tokens=run["max_new_tokens"])
        registry = default_registry(shared, env, settings, data_dir)
        openai_app = None
        if openai:
            from sleuth.serve.openai_api import create_app

            openai_app = create_app(shared)
        mcp_server = None
        if mcp:
            from sleuth.serve.mcp_server import create_server

            mcp_server = create_server(env)
        cfg = ServiceConfig(db=db or data_dir / "sleuth.db", concurrency=concurrency, max_queued=max_queued,
                            security=SecurityConfig(token=token, max_body_bytes=max_body, rate_per_s=rate,
                                                    burst=burst, loopback_only_hosts=is_loopback(host)))
        asgi, manager = build(registry, cfg, openai_app, mcp_server)
        kinds = ", ".join(sorted(registry.kinds))
        console.print(f"sleuth serving {policy.name} on http://{host}:{port}/ — runs: {kinds}"
                      f"; db {cfg.db}" + (f"; OpenAI API at http://{host}:{port}/v1" if openai else "")
                      + (f"; MCP at http://{host}:{port}/mcp" if mcp else ""))
        try:
            uvicorn.run(asgi, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        finally:
            if extra_tools:
                extra_tools.close()
