"""The agent's chat loop, multi-turn, against a real OpenAI-compatible server on loopback.

Starts ``sleuth serve-openai`` (sleuth's own endpoint serving the embedded SmolLM2; default) or
``python -m llama_cpp.server`` serving the same model's GGUF (``--server llama-cpp``; needs
``pip install 'llama-cpp-python[server]'``, which compiles llama.cpp), runs ``Agent`` with ``OpenAIPolicy`` on a
few dev questions over a real index — with native tool calls, and again with the tag protocol as text
(``native_tools=False``) as the baseline — stops the server and writes benchmarks/results/openai_server.json:
per run the steps, tool calls, format errors, finish reason and latency; per mode how many runs completed
without a server error and how many steps were valid actions.

    nice -n 10 .venv/bin/python benchmarks/openai_server.py
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, no install needed
from sleuth import paths
from sleuth.agent import Agent, AgentConfig, Environment
from sleuth.policy.openai_policy import OpenAIPolicy


@dataclass
class Config:
    server: str = "sleuth"        # sleuth (sleuth serve-openai) | llama-cpp (llama_cpp.server, chatml-function-calling)
    questions: int = 8            # dev questions, each one agent run
    max_steps: int = 4
    max_new_tokens: int = 64
    temperature: float = 0.0
    index: str = "passages"       # the real 28k-passage index (sleuth index ../shared/data/corpus/passages.jsonl.gz)
    engine: str = "lexical"
    threads: int = 1              # server threads (1 is steadiest on a small shared machine)
    n_ctx: int = 8192             # llama-cpp only
    startup_timeout: float = 240.0
    out: str = str(Path(__file__).parent / "results" / "openai_server.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(cfg: Config, port: int) -> list[str]:
    if cfg.server == "sleuth":
        return [sys.executable, "-m", "sleuth.cli", "serve-openai", "--port", str(port), "--name", "smollm2"]
    if cfg.server == "llama-cpp":
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(paths.embedded_policy_gguf()),
                "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(cfg.n_ctx),
                "--n_threads", str(cfg.threads), "--chat_format", "chatml-function-calling"]
    raise SystemExit(f"unknown --server {cfg.server!r} (sleuth | llama-cpp)")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def run_one(agent: Agent, question: str) -> dict:
    t0 = time.perf_counter()
    traj = agent.run(question)
    seconds = time.perf_counter() - t0
    return {"question": question, "finish_reason": traj.finish_reason, "steps": traj.steps,
            "tool_calls": [c.tool for c in traj.tool_calls], "format_errors": traj.format_errors,
            "blocked": traj.blocked_actions,
            "answer": traj.answer, "queries": traj.queries, "urls_opened": traj.urls_opened,
            "context_events": len(traj.context_events), "error": traj.meta.get("error"),
            "seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(traj.steps, 1), 2),
            "prompt_tokens": traj.prompt_tokens, "completion_tokens": traj.generated_tokens}


def summary(rows: list[dict]) -> dict:
    steps = sum(r["steps"] for r in rows)
    # a valid action ran a research tool or answered (format errors and blocked actions are not)
    valid = sum(sum(t in ("search", "browse", "code") for t in r["tool_calls"]) + (r["finish_reason"] == "finish")
                for r in rows)
    return {"runs": len(rows), "server_errors": sum(r["finish_reason"] == "error" for r in rows),
            "completed": sum(r["finish_reason"] in ("finish", "max_steps") for r in rows),
            "answered": sum(r["finish_reason"] == "finish" for r in rows),
            "multi_step_runs": sum(r["steps"] >= 2 for r in rows), "steps": steps,
            "valid_actions_per_step": round(valid / steps, 3) if steps else None,
            "format_errors": sum(r["format_errors"] for r in rows),
            "blocked": sum(r["blocked"] for r in rows),
            "seconds_per_step_median": round(statistics.median(r["seconds_per_step"] for r in rows), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cfg = Config()
    for k, v in asdict(cfg).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    cfg = Config(**vars(ap.parse_args()))

    env = Environment.from_index(cfg.index, engine=cfg.engine, tools=("search", "browse"))
    rows = [json.loads(line) for line in (paths.shared_data() / "qa" / "dev.jsonl").open()]
    questions = [r["question"] for r in rows[:cfg.questions]]
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(server_command(cfg, port), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "SLEUTH_THREADS": str(cfg.threads)})
        try:
            startup = wait_ready(url, proc, cfg.startup_timeout)
            runs = {}
            for mode in ("native", "text"):
                policy = OpenAIPolicy("smollm2", base_url=url, timeout=300, max_retries=2,
                                      native_tools=mode == "native")
                agent = Agent(policy, env, AgentConfig(max_steps=cfg.max_steps, max_new_tokens=cfg.max_new_tokens,
                                                       temperature=cfg.temperature))
                runs[mode] = [run_one(agent, q) for q in questions]
        except Exception:
            log.seek(0)
            print("--- server log (tail) ---\n" + log.read()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    result = {"config": asdict(cfg), "server": " ".join(server_command(cfg, port)[1:4]),
              "startup_seconds": round(startup, 2), "summary": {m: summary(r) for m, r in runs.items()}, "runs": runs,
              "load_average_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count()}
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
