"""`sleuth report "request"` — clarify, plan, research, write and cite a report; Markdown, HTML and PDF."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer


def _slug(text: str) -> str:
    return re.sub(r"[^\w]+", "-", text.lower(), flags=re.UNICODE).strip("-")[:48] or "report"


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        request: str = typer.Argument(..., help="What the report should research, e.g. 'Compare X and Y'."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="As for ask: local model or adapter dir, "
                                            "'base', or the model name on --base-url (default: the shipped agent)."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server."),
        index: Optional[str] = typer.Option(None, "--index", help="Index to search (default: wiki)."),
        engine: str = typer.Option("auto", "--engine", help="auto | hybrid | lexical | dense"),
        web: Optional[str] = typer.Option(None, "--web", help="Search the web instead of an index: searxng "
                                          "(SEARXNG_URL) | tavily (TAVILY_API_KEY) | brave (BRAVE_API_KEY)."),
        online: bool = typer.Option(False, "--online", help="Allow browsing real http(s) URLs."),
        words: int = typer.Option(600, "--words", help="Target length of the report in words."),
        sections: int = typer.Option(4, "--sections", help="Most sections in the outline."),
        questions: int = typer.Option(2, "--questions", help="Research questions per section."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Agent steps per research question."),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Cap on the tokens of one "
                                                     "plan or section generation (small machines)."),
        language: Optional[str] = typer.Option(None, "--language", help="Report language code (default: the "
                                               "request's language)."),
        answers: Optional[List[str]] = typer.Option(None, "--answers", help="Answers to the clarifying questions "
                                                    "(repeatable), for scripts."),
        no_clarify: bool = typer.Option(False, "--no-clarify", help="Never ask clarifying questions."),
        unverified: str = typer.Option("mark", "--unverified", help="Sentences no source supports: mark | remove."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/report-<slug>); "
                                           "running again on it resumes."),
        pdf: bool = typer.Option(True, "--pdf/--no-pdf", help="Also print report.pdf with headless Chromium."),
        max_retries: int = typer.Option(5, "--max-retries", help="--base-url: retries of a failed request."),
        context_window: int = typer.Option(8192, "--context-window"),
        temperature: float = typer.Option(0.0, "--temperature"),
        as_json: bool = typer.Option(False, "--json", help="Print the report's record as JSON (no HTML)."),
    ) -> None:
        """Research a request and write a report with verified citations (report.md, report.html, report.pdf)."""
        from rich.console import Console

        from sleuth.agent import Environment
        from sleuth.policy.loader import load_policy
        from sleuth.report import ReportCancelled, ReportConfig, clarify, run_report, write_pdf

        console = Console(stderr=as_json)
        run_dir = out or Path("runs") / f"report-{_slug(request)}"
        try:
            cfg = ReportConfig(words=words, max_sections=sections, min_sections=min(2, sections),
                               questions_per_section=questions, max_steps=max_steps, language=language,
                               clarify=not no_clarify, unverified=unverified, context_window=context_window,
                               temperature=temperature, max_new_tokens=max_new_tokens)
            with console.status("loading model…"):
                policy = load_policy(model, base_url, **({"max_retries": max_retries} if base_url else {}))
            env = Environment.from_index(index, engine=engine, online=online, web=web,
                                         tools=("search", "browse", "code"))
        except (FileNotFoundError, ValueError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)

        resumed = (run_dir / "request.json").exists()
        if not resumed and answers is None and cfg.clarify:
            console.rule("clarify")
            qs = clarify(request, policy, cfg)
            if not qs:
                console.print("[dim]the request is specific: no questions[/]")
            elif sys.stdin.isatty() and not as_json:
                answers = [typer.prompt(q, default="", show_default=False) for q in qs]
            else:
                console.print("[yellow]the request is vague; not a terminal, so it is researched as given "
                              "(pass --answers or --no-clarify):[/]")
                for q in qs:
                    console.print(f"  ? {q}")
        elif resumed:
            console.print(f"[dim]resuming the run in {run_dir}[/]")

        def show(kind: str, d: dict) -> None:
            if kind == "stage":
                console.rule(d["name"])
            elif kind == "plan":
                src = {"fallback": "built by sleuth from the request",
                       "repaired": "the model's, topped up by sleuth"}.get(d["source"], "the model's")
                console.print(f"[bold]{d['title']}[/] — outline: {src}" + (" (saved)" if d.get("resumed") else ""))
                for s in d["sections"]:
                    console.print(f"  [cyan]{s['title']}[/]: " + " | ".join(s["questions"]))
            elif kind == "plan_retry":
                console.print(f"  [yellow]outline attempt {d['attempt']} rejected[/]: {d['problem'][:200]}")
            elif kind == "question":
                console.print(f"[cyan]?[/] {d['question']}")
            elif kind == "step" and d.get("kind") == "action":
                args = d.get("args", {})
                what = " | ".join(args.get("queries", [])) or args.get("url", "") or args.get("answer", "")
                console.print(f"   [dim]step {d.get('step')} {d.get('tool')} {str(what)[:90]}[/]")
            elif kind == "step" and d.get("kind") == "error":
                console.print(f"   [red]server error[/] {d.get('message', '')[:200]}")
            elif kind == "finding":
                console.print(f"   → {(d['answer'] or '(no answer)')[:100]} [dim]({d['sources']} sources read)[/]")
            elif kind == "section":
                colour = {"written": "green", "extractive": "yellow", "failed": "red"}[d["status"]]
                console.print(f"[{colour}]{d['status']}[/] {d['title']}" + (f": {d['error']}" if d["error"] else ""))

        try:
            rep = run_report(request, policy=policy, env=env, cfg=cfg, run_dir=run_dir, answers=answers,
                             on_event=show)
        except ReportCancelled as e:
            console.print(f"[yellow]{e}[/]")
            raise typer.Exit(1)
        except ValueError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        pdf_path = None
        if pdf:
            try:
                pdf_path = write_pdf(run_dir / "report.html", run_dir / "report.pdf")
            except (FileNotFoundError, RuntimeError, OSError) as e:
                console.print(f"[yellow]no PDF: {e}[/]")
        if as_json:
            d = rep.to_dict()
            d.pop("html")
            d["files"] = {"markdown": str(run_dir / "report.md"), "html": str(run_dir / "report.html"),
                          "pdf": str(pdf_path) if pdf_path else None}
            print(json.dumps(d, ensure_ascii=False, indent=2))
            return
        console.rule("report")
        console.print(rep.markdown)
        st = rep.stats
        cost = f", cost {st['cost']:.4f}" if st.get("cost") is not None else ""
        console.print(f"[bold]{st['words']} words, {st['sections']} sections ({st['sections_failed']} failed), "
                      f"{st['citations_kept']} verified citations to {st['unique_sources']} sources, "
                      f"{st['tokens']['total_tokens']} tokens{cost}, {st['seconds']:.0f} s[/]")
        files = [run_dir / "report.md", run_dir / "report.html"] + ([pdf_path] if pdf_path else [])
        console.print("files: " + "  ".join(str(f) for f in files))
