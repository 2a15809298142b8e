"""One shared local model for many concurrent runs: generation requests are merged into batched calls.

A local ``TokenPolicy`` (``HFPolicy``) is one model with one KV prefix cache: it is not safe to call from
several threads at once, and the agent's token mode is fastest when trajectories advance together in one
batch. ``BatchingPolicy`` wraps it so each run's agent can call ``generate`` from its own thread: a single
dispatcher thread owns the model, gathers the requests that arrive within a short window (or until
``max_batch`` rows), runs them as one ``generate`` call per distinct set of sampling parameters, and hands
each caller its own rows back. Everything else (tokenizer, name, version, agent settings) is the wrapped
policy's.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import astuple
from typing import Any

from sleuth.policy.base import Generation, SamplingParams


class BatchingPolicy:
    def __init__(self, policy: Any, window_s: float = 0.02, max_batch: int = 16):
        self.policy = policy
        self.window_s = window_s
        self.max_batch = max_batch
        self._requests: queue.Queue = queue.Queue()
        self.calls = 0          # batched generate calls made (for metrics)
        self.rows = 0           # rows generated across them
        self._thread = threading.Thread(target=self._serve, name="sleuth-generate", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:      # tokenizer, name, version, agent_settings, max_positions ...
        return getattr(self.policy, name)

    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Generation]:
        params = params or SamplingParams()
        fut: Future = Future()
        self._requests.put((prompts, params, fut))
        return fut.result()

    def _serve(self) -> None:
        while True:
            first = self._requests.get()
            batch, rows = [first], len(first[0])
            deadline = time.monotonic() + self.window_s
            while rows < self.max_batch:
                try:
                    req = self._requests.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(req)
                rows += len(req[0])
            groups: dict[tuple, list] = {}
            for req in batch:   # only requests with the same sampling parameters can share a generate call
                groups.setdefault(_key(req[1]), []).append(req)
            for reqs in groups.values():
                self._run(reqs)

    def _run(self, reqs: list) -> None:
        prompts = [p for r in reqs for p in r[0]]
        try:
            gens = self.policy.generate(prompts, reqs[0][1])
        except BaseException as e:     # every caller gets the failure, the dispatcher lives on
            if len(reqs) == 1:
                reqs[0][2].set_exception(e)
                return
            for r in reqs:             # one bad request must not fail the others: retry them alone
                self._run([r])
            return
        self.calls += 1
        self.rows += len(prompts)
        i = 0
        for p, _, fut in reqs:
            fut.set_result(gens[i:i + len(p)])
            i += len(p)


def _key(params: SamplingParams) -> tuple:
    return tuple(tuple(x) if isinstance(x, list) else x for x in astuple(params))
