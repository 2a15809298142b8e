"""Prefix cache for multi-step agents: keep the KV of sequences already run, reuse it for their continuations.

An agent step's prompt is the previous step's prompt, the tokens the policy generated, and a tool
observation. Without a cache every step prefills the whole context again (quadratic in the number of
steps); with it, a step prefills only what is new since the last one. Entries are whole rows (prompt +
generated tokens, the KV as the model computed it); a new prompt reuses the entry sharing its longest
common prefix, so a context rewritten by the context manager still reuses everything up to the first
changed token.

Cached KV belongs to one set of weights: the cache empties itself when the weights change (an RL update
bumps every parameter's in-place version counter), so partial rollouts resumed under newer weights are
prefilled again by the weights that continue them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class _Entry:
    tokens: np.ndarray                          # the token ids whose KV is stored
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [heads, len, head_dim]
    size: int                                    # bytes


class PrefixCache:
    def __init__(self, max_bytes: int = 4 << 30, min_reuse: int = 16):
        self.max_bytes = max_bytes     # KV memory kept (SmolLM2-135M fp32: ~46 KB per position, ~90k positions)
        self.min_reuse = min_reuse     # shorter matches are not worth a separate cache layout
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_id = 0
        self._bytes = 0
        self._weights_key: object = None
        self.hits = 0                  # prompt tokens served from the cache
        self.misses = 0                # prompt tokens prefilled

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def validate(self, weights_key: object) -> None:
        """Drop everything if the weights (or the engine that computes with them) changed since the entries
        were computed."""
        if weights_key != self._weights_key:
            self.clear()
            self._weights_key = weights_key

    def lookup(self, prompt: list[int]) -> tuple[int, int | None]:
        """(reusable length, entry id): the longest common prefix with any entry, leaving at least one
        prompt token to prefill (its logits start the generation)."""
        if not self._entries:
            return 0, None
        p = np.asarray(prompt, dtype=np.int64)
        best, best_id = 0, None
        for eid, e in self._entries.items():
            m = min(len(p) - 1, len(e.tokens))
            if m <= best:
                continue
            diff = np.flatnonzero(p[:m] != e.tokens[:m])
            n = int(diff[0]) if len(diff) else m
            if n > best:
                best, best_id = n, eid
        if best < self.min_reuse:
            return 0, None
        self._entries.move_to_end(best_id)
        return best, best_id

    def kv(self, entry_id: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k[:, :n], v[:, :n]) for k, v in self._entries[entry_id].kv]

    def store(self, tokens: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add a row; entries it extends (their tokens are a prefix of it) are superseded and dropped."""
        t = np.asarray(tokens, dtype=np.int64)
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.max_bytes:
            return
        for eid in [eid for eid, e in self._entries.items()
                    if len(e.tokens) <= len(t) and np.array_equal(e.tokens, t[:len(e.tokens)])]:
            self._drop(eid)
        self._entries[self._next_id] = _Entry(t, kv, size)
        self._next_id += 1
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))   # least recently used

    def _drop(self, eid: int) -> None:
        e = self._entries.pop(eid)
        self._bytes -= e.size


def weights_key(model: torch.nn.Module) -> tuple[int, int]:
    """Changes whenever any parameter is modified in place (optimizer steps, loading weights)."""
    return id(model), sum(p._version for p in model.parameters())
