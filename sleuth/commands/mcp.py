"""`sleuth mcp` — sleuth's search, browse and code tools as an MCP server over stdio (sleuth/serve/mcp_server.py).

The same tools are served over streamable HTTP at /mcp by `sleuth serve`."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("mcp")
    def mcp(
        index: Optional[str] = typer.Option(None, "--index", help="Index to search (default: wiki)."),
        engine: str = typer.Option("auto", "--engine", help="auto | hybrid | lexical | dense"),
        search_k: int = typer.Option(5, "--search-k", help="Results per query."),
    ) -> None:
        """Serve sleuth's research tools to MCP clients over stdio (for Claude Desktop, agents, IDEs)."""
        import sys

        from sleuth.agent import Environment
        from sleuth.serve.mcp_server import create_server

        try:
            env = Environment.from_index(index, engine=engine, search_k=search_k)
        except (FileNotFoundError, ValueError) as e:
            print(f"sleuth mcp: {e}", file=sys.stderr)   # stdout carries the protocol
            raise typer.Exit(2)
        create_server(env).run("stdio")
