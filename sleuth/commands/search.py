"""`sleuth search "q1" "q2" ...`: query a local index from the shell."""

from __future__ import annotations

import json
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search(
        queries: List[str] = typer.Argument(..., help="one or more queries"),
        index: Optional[str] = typer.Option(None, "--index", help="index name (default: 'wiki' if built, "
                                                                 "else the most recent index)"),
        engine: str = typer.Option("auto", "--engine", help="hybrid, lexical, dense, or auto (hybrid when the "
                                                            "index has embeddings)"),
        k: int = typer.Option(5, "-k", "--k", min=1, max=100, help="results per query"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
    ) -> None:
        """Search a local index; queries run as one batch."""
        from sleuth.search.index import IndexNotFound, default_index_name, open_index

        try:
            ix = open_index(index or default_index_name())
            eng = ix.engine(engine)
        except (IndexNotFound, ValueError) as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1)
        responses = eng.search_batch(list(queries), k)
        if as_json:
            typer.echo(json.dumps([{"query": r.query, "error": r.error,
                                    "results": [x.to_dict() for x in r.results]} for r in responses],
                                  ensure_ascii=False, indent=1))
        else:
            from rich.console import Console
            from rich.markup import escape

            con = Console(highlight=False, soft_wrap=False)
            for r in responses:
                con.print(f"[bold]{escape(r.query)}[/bold]  ({ix.name}, {eng.name})")
                if r.error:
                    con.print(f"  [red]error:[/red] {escape(r.error)}")
                elif not r.results:
                    con.print("  (no results)")
                for i, x in enumerate(r.results, 1):
                    con.print(f"  {i}. [cyan]{escape(x.title)}[/cyan]  {x.url}  [dim]{x.score:.3f}[/dim]")
                    con.print(f"     {escape(x.snippet)}")
        if responses and all(r.error for r in responses):
            raise typer.Exit(1)
