"""OpenAIPolicy against a real OpenAI-compatible server: llama-cpp-python serving the embedded SmolLM2 GGUF.

Starts ``python -m llama_cpp.server`` on 127.0.0.1, asks a few dev questions with and without native tools,
measures latency, stops the server and writes benchmarks/results/openai_server.json.
Needs ``pip install 'llama-cpp-python[server]'`` (compiles llama.cpp; not part of the default install).

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
from sleuth.policy.base import SamplingParams
from sleuth.policy.openai_policy import OpenAIPolicy, PolicyError

TOOLS = [
    {"type": "function", "function": {
        "name": "search", "description": "Search an offline Wikipedia corpus and return numbered passages.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "finish", "description": "Give the final short answer.",
        "parameters": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}},
]


@dataclass
class Config:
    questions: int = 4            # dev questions asked, each once without and once with tools
    max_new_tokens: int = 64
    temperature: float = 0.0
    threads: int = 1              # llama.cpp threads (1 is steadiest on a small shared machine)
    n_ctx: int = 2048
    chat_format: str = "chatml-function-calling"  # SmolLM2 speaks ChatML; this format adds tool calls
    startup_timeout: float = 180.0
    out: str = str(Path(__file__).parent / "results" / "openai_server.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"llama_cpp.server not ready after {timeout:.0f} s")


def ask(policy: OpenAIPolicy, question: str, tools: list | None, params: SamplingParams) -> dict:
    sys_msg = ("Use the tools to research, then call finish." if tools else "Answer in a few words.")
    messages = [{"role": "system", "content": sys_msg}, {"role": "user", "content": question}]
    t0 = time.perf_counter()
    try:
        r = policy.chat(messages, tools, params)
    except PolicyError as e:
        return {"question": question, "tools": bool(tools), "error": str(e),
                "latency_s": round(time.perf_counter() - t0, 3)}
    return {"question": question, "tools": bool(tools), "latency_s": round(time.perf_counter() - t0, 3),
            "text": r.text[:300], "finish_reason": r.finish_reason,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in r.tool_calls],
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}


def summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    lat = [r["latency_s"] for r in ok]
    toks = sum(r["completion_tokens"] for r in ok)
    return {"calls": len(rows), "errors": len(rows) - len(ok),
            "latency_mean_s": round(statistics.mean(lat), 3) if lat else None,
            "latency_median_s": round(statistics.median(lat), 3) if lat else None,
            "completion_tokens_per_s": round(toks / sum(lat), 2) if lat else None,
            "with_tool_calls": sum(bool(r.get("tool_calls")) for r in ok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cfg = Config()
    for k, v in asdict(cfg).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    cfg = Config(**vars(ap.parse_args()))

    gguf = paths.embedded_policy_gguf()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(cfg.n_ctx),
           "--n_threads", str(cfg.threads), "--chat_format", cfg.chat_format]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            startup = wait_ready(url, proc, cfg.startup_timeout)
            policy = OpenAIPolicy("smollm2", base_url=url, timeout=120, max_retries=1)
            params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
            rows = [json.loads(line) for line in (paths.shared_data() / "qa" / "dev.jsonl").open()]
            questions = [r["question"] for r in rows[:cfg.questions]]
            ask(policy, "Hello", None, SamplingParams(max_new_tokens=4, temperature=0))   # warm-up
            plain = [ask(policy, q, None, params) for q in questions]
            tooled = [ask(policy, q, TOOLS, params) for q in questions]
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

    import llama_cpp

    result = {"config": asdict(cfg), "server": f"llama-cpp-python {llama_cpp.__version__}",
              "model": gguf.name, "startup_seconds": round(startup, 2),
              "without_tools": summary(plain), "with_tools": summary(tooled),
              "calls": plain + tooled, "load_average_1min": round(os.getloadavg()[0], 2),
              "cpu_count": os.cpu_count()}
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
