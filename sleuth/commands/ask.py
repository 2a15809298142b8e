"""`sleuth ask "question"` — run the agent once with live progress, print the cited answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def ask(
        question: str = typer.Argument(..., help="The question to research."),
        model: Optional[str] = typer.Option(None, "--model", "-m",
                                            help="Local model or adapter dir, 'base' (the untrained embedded "
                                                 "SmolLM2-135M-Instruct), or the model name on --base-url. "
                                                 "Default: the shipped trained agent."),
        base_url: Optional[str] = typer.Option(None, "--base-url",
                                               help="OpenAI-compatible server (Kimi API, vLLM, SGLang, Ollama...)."),
        index: Optional[str] = typer.Option(None, "--index", help="Index to search (default: wiki)."),
        engine: str = typer.Option("auto", "--engine", help="auto (hybrid if the index has embeddings) | hybrid | lexical | dense"),
        search_url: Optional[str] = typer.Option(None, "--search-url", help="Search through a `sleuth "
                                                 "serve-search` service (e.g. http://127.0.0.1:8765)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Step budget (default: what the "
                                                "policy was trained with, else 10)."),
        context_window: int = typer.Option(8192, "--context-window",
                                           help="Context budget in tokens (estimated for a --base-url server); "
                                                "old observations are compressed to stay within it."),
        max_retries: int = typer.Option(5, "--max-retries",
                                        help="--base-url: retries of a failed request (429, 5xx, timeouts), with "
                                             "exponential backoff that honours Retry-After."),
        temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt variant (sleuth.agent.PROMPTS; "
                                             "default: the policy's training prompt, else short-fewshot)."),
        online: bool = typer.Option(False, "--online", help="Allow browsing real http(s) URLs."),
        mcp_tools: list[str] = typer.Option([], "--mcp-tools", help="Also give the agent the tools of an MCP "
                                            "server: a URL (streamable HTTP) or a command line (stdio). Repeatable."),
        web: Optional[str] = typer.Option(None, "--web", help="Search the web instead of an index: searxng "
                                          "(SEARXNG_URL) | tavily (TAVILY_API_KEY) | brave (BRAVE_API_KEY); "
                                          "implies --online."),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        save: Optional[Path] = typer.Option(None, "--save", help="Trajectory JSONL (default: runs/ask.jsonl)."),
    ) -> None:
        """Research a question with the agent and answer with citations."""
        from rich.console import Console

        from sleuth.agent import Agent, AgentConfig, Environment
        from sleuth.policy.loader import agent_settings, load_policy
        from sleuth.trajectory import save_jsonl

        console = Console(stderr=as_json)
        try:
            with console.status("loading model…"):
                policy = load_policy(model, base_url, **({"max_retries": max_retries} if base_url else {}))
            # a trained policy runs as it was trained, unless told otherwise
            run = agent_settings(policy, {"max_steps": max_steps, "prompt": prompt},
                                 {"max_steps": 10, "prompt": "short-fewshot",
                                  "max_new_tokens": AgentConfig.max_new_tokens, "search_k": 5})
            toolbox = None
            if mcp_tools:
                from sleuth.tools.mcp import MCPToolbox

                toolbox = MCPToolbox.connect(mcp_tools)
            env = Environment.create(index, engine=engine, search_url=search_url, online=online, web=web,
                                     search_k=run["search_k"], extra_tools=toolbox)
        except (FileNotFoundError, ValueError, OSError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
        import torch

        torch.manual_seed(seed)

        def show(traj, kind, data):
            if kind == "action":
                args = data["args"]
                what = {"search": lambda: " | ".join(args.get("queries", [])),
                        "browse": lambda: args.get("url", ""),
                        "code": lambda: args.get("code", "").splitlines()[0][:80] if args.get("code") else "",
                        "finish": lambda: args.get("answer", "")[:80]}.get(data["tool"], lambda: str(args))()
                console.print(f"[bold cyan]step {data['step']}[/] [magenta]{data['tool']}[/] {what}")
            elif kind == "observation" and not data["ok"]:
                console.print(f"   [yellow]{data['tool']} error: {data['error']}[/]")
            elif kind == "format_error":
                console.print(f"[bold cyan]step {data['step']}[/] [red]invalid action[/] {data['message']}")
            elif kind == "blocked":
                console.print(f"[bold cyan]step {data['step']}[/] [red]blocked[/] {data['reason']}")
            elif kind == "context":
                console.print(f"   [dim]context manager: {data}[/]")
            elif kind == "error":
                console.print(f"[bold cyan]step {data['step']}[/] [red]server error[/] {data['message']}")

        cfg = AgentConfig(max_steps=run["max_steps"], temperature=temperature, prompt=run["prompt"],
                          max_new_tokens=run["max_new_tokens"], context_window=context_window)
        agent = Agent(policy, env, cfg, on_event=show)
        try:
            traj = agent.run(question)
        finally:
            if toolbox is not None:
                toolbox.close()
        out = save or Path("runs") / "ask.jsonl"
        save_jsonl([traj], out)
        if as_json:
            print(json.dumps({"question": question, "answer": traj.answer, "finish_reason": traj.finish_reason,
                              "citations": [c.__dict__ for c in traj.citations],
                              "dropped_citations": [c.__dict__ for c in traj.dropped_citations],
                              "grounded": bool(traj.evidence_url), "policy": getattr(policy, "name", ""),
                              "stats": traj.stats(), "trajectory_file": str(out), "trajectory_id": traj.id,
                              **({"error": traj.meta["error"]} if "error" in traj.meta else {})},
                             ensure_ascii=False, indent=2))
            if traj.finish_reason == "error":
                raise typer.Exit(1)
            return
        console.rule("answer")
        if traj.finish_reason == "error":
            console.print(f"[red]no answer: the run stopped on a server error after {traj.steps} step(s)[/] — "
                          f"{traj.meta.get('error', '')}\n[dim]what it gathered is kept in the trajectory[/]")
        elif traj.answer is None:
            console.print(f"[red]no answer[/] (ended: {traj.finish_reason})")
        else:
            console.print(f"[bold]{traj.answer}[/]")
            for c in traj.citations:
                who = "cited by the model" if c.source == "model" else "where the agent read it"
                console.print(f"  [{c.n}] {c.url} — “{c.quote[:200]}” [dim]({who}; verified)[/]")
            if not traj.citations:
                console.print("  [yellow]no citation: the answer occurs in nothing the agent was shown[/]")
            if traj.dropped_citations:
                console.print(f"  [yellow]{len(traj.dropped_citations)} citation(s) dropped: "
                              f"{'; '.join(c.reason for c in traj.dropped_citations)}[/]")
        s = traj.stats()
        console.print(f"[dim]{s['steps']} steps, {s['search_queries']} queries, {s['urls_opened']} pages opened, "
                      f"{s['generated_tokens']} tokens, {s['wall_seconds']:.1f}s — trajectory {traj.id} in {out}[/]")
        if traj.finish_reason == "error":
            raise typer.Exit(1)
