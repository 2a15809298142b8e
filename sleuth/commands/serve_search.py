"""`sleuth serve-search` — one index as a shared HTTP search service (sleuth/serve/search_api.py)."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve-search")
    def serve_search(
        index: Optional[str] = typer.Option(None, "--index", help="Index to serve (default: 'wiki' if built, "
                                                                 "else the most recent index)."),
        engine: str = typer.Option("auto", "--engine", help="Default engine: auto (hybrid if the index has "
                                                            "embeddings) | hybrid | lexical | dense."),
        port: int = typer.Option(8765, "--port", help="Port to listen on."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind: loopback by default; 0.0.0.0 "
                                                             "serves other machines (the service has no auth)."),
        max_batch: int = typer.Option(64, "--max-batch", min=1, help="Queries ranked in one engine call."),
        max_wait_ms: float = typer.Option(2.0, "--max-wait-ms", min=0.0,
                                          help="How long a batch waits for more queries once it has some."),
        max_pending: int = typer.Option(4096, "--max-pending", min=1,
                                        help="Queries waiting before requests are answered 429 (retry later)."),
    ) -> None:
        """Serve an index over HTTP for many rollout workers: POST /v1/search, GET /v1/passage, GET /v1/health."""
        import uvicorn
        from rich.console import Console

        from sleuth.search.index import IndexNotFound, default_index_name, open_index
        from sleuth.serve.search_api import SearchService, ServiceConfig, create_app

        console = Console(stderr=True)
        try:
            with console.status("opening index…"):
                ix = open_index(index or default_index_name())
                service = SearchService(ix, engine, ServiceConfig(max_batch=max_batch, max_wait_ms=max_wait_ms,
                                                                  max_pending=max_pending))
                service.warm()
        except (IndexNotFound, ValueError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        url = f"http://{host}:{port}"
        console.print(f"serving index {ix.name!r} ({len(ix)} passages, {service.health()['default_engine']}) at "
                      f"{url}/v1/search — workers: sleuth ask|eval|train … --search-url {url}")
        try:
            uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
        finally:
            service.close()
