"""`sleuth index [SOURCE]`: build a persistent search index (BM25 + dense embeddings) of a corpus."""

from __future__ import annotations

from typing import Optional

import typer


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def register(app: typer.Typer) -> None:
    @app.command("index")
    def index(
        source: Optional[str] = typer.Argument(
            None, help="a passages .jsonl/.jsonl.gz file or a folder of .txt/.md/.html; omit for the embedded "
                       "Wikipedia corpus"),
        embedded: bool = typer.Option(False, "--embedded", help="index the embedded 10k Wikipedia leads"),
        name: Optional[str] = typer.Option(None, "--name", help="index name (default: 'wiki' for the embedded "
                                                               "corpus, else the file or folder name)"),
        no_dense: bool = typer.Option(False, "--no-dense", help="BM25 only: skip the (slow) embeddings"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                                 help="passages per embedding batch (default: the embedder's)"),
        embedder: str = typer.Option("auto", "--embedder",
                                     help="auto (onnx-int8 when ONNX Runtime works), onnx-int8 or torch"),
        no_prebuilt: bool = typer.Option(False, "--no-prebuilt", help="compute every embedding, even those of "
                                         "passages in sleuth's shipped pack (the embedded corpus)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    ) -> None:
        """Build (or incrementally rebuild) a search index; unchanged passages keep their embeddings."""
        from sleuth.search.dense import DenseConfig
        from sleuth.search.index import build_index, open_index

        if source and embedded:
            typer.echo("Error: give a SOURCE or --embedded, not both", err=True)
            raise typer.Exit(2)
        from sleuth.search.embedders import KINDS

        if embedder not in ("auto",) + KINDS:
            typer.echo(f"Error: unknown --embedder {embedder!r}: choose auto, {', '.join(KINDS)}", err=True)
            raise typer.Exit(2)
        try:
            path = build_index(None if embedded else source, name, dense=not no_dense,
                               batch_size=batch_size, progress=not quiet,
                               dense_config=DenseConfig(embedder=embedder), use_prebuilt=not no_prebuilt)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1)
        meta = open_index(path.name).meta
        for line in meta.get("skipped_files", []):
            typer.echo(f"skipped {line}", err=True)
        secs = meta["build_seconds"]
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in secs.items() if k != "total")
        dense = meta["engines"]["dense"]
        reuse = (f"; embeddings ({dense.get('embedder', 'torch')}): {dense['embedded']} computed, "
                 f"{dense['reused']} reused" + (f", {dense['prebuilt']} from sleuth's prebuilt pack (passages "
                                                "whose text matches; `python -m sleuth.search.prebuilt`)"
                                                if dense.get("prebuilt") else "") if dense else "")
        n_skipped = len(meta.get("skipped_files", []))
        skipped = f"; {n_skipped} file{'s' if n_skipped != 1 else ''} skipped (not text)" if n_skipped else ""
        typer.echo(f"index {meta['name']!r}: {meta['count']} passages in {secs['total']:.1f}s ({stages}){reuse}"
                   f"{skipped}")
        typer.echo(f"{_human(meta['size_bytes'])} on disk at {path}")
