"""What the trainer adapters share: one trajectory as (prompt ids, response ids, mask, log-probs), Kimi's
negative-sample control as a drop decision, and a TokenPolicy over an inference engine's async generate.

Every adapter runs sleuth's own agent loop (``sleuth.agent.Agent``), so the tokens a trainer receives are the
ones the loop recorded: the prompt once, each reply exactly as sampled (mask 1, with its sampling log-prob),
the chat glue and observation as sleuth tokenised them (mask 0). Nothing is re-tokenised.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from sleuth.policy.base import Generation, SamplingParams
from sleuth.trajectory import Trajectory


@dataclass
class Sample:
    """One trajectory in the shape every trainer wants (verl's AgentLoopOutput, TRL's rollout_func output)."""
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]        # 1 = sampled by the policy, 0 = observation / chat glue
    response_logprobs: list[float]  # sampling log-prob on mask-1 tokens, 0.0 elsewhere
    overlong: bool = False          # longer than the trainer's window: kept for the group, masked out whole
    earlier_segments: int = 0       # segments before a context rewrite, not handed over (see to_sample)


def to_sample(traj: Trajectory, max_response_tokens: int | None = None) -> Sample:
    """The trajectory's last segment as prompt + response.

    The prompt is everything before the first sampled token; the response is the rest, replies and observations
    interleaved. A trajectory whose context was rewritten by the context manager has several segments (each a
    different prefix); these trainers take one sequence per sample, so only the last — the one that ends in the
    answer and carries the reward — is handed over, and ``earlier_segments`` counts what was left out.
    A response longer than ``max_response_tokens`` is never cut to fit with its loss intact (its end is where the
    reward is): it is cut for shape and masked out whole (``overlong``), as sleuth's trainer leaves it out.
    """
    if not traj.segments:
        raise ValueError(f"trajectory {traj.id} has no token segments (was it run with a token policy?)")
    seg = traj.segments[-1]
    if 1 not in seg.mask:
        raise ValueError(f"trajectory {traj.id}: its last segment has no sampled token")
    first = seg.mask.index(1)
    resp, mask, lps = seg.token_ids[first:], seg.mask[first:], seg.logprobs[first:]
    overlong = max_response_tokens is not None and len(resp) > max_response_tokens
    if overlong:
        resp, lps = resp[:max_response_tokens], lps[:max_response_tokens]
        mask = [0] * len(resp)
    return Sample(list(seg.token_ids[:first]), list(resp), list(mask), list(lps), overlong, len(traj.segments) - 1)


def drop_negative(key: str, correct: bool, frac: float, seed: int, step: int) -> bool:
    """Negative-sample control for trainers that see one trajectory at a time (verl, OpenRLHF agent loops):
    leave a failed trajectory out of the loss with probability ``frac``, decided by a hash of (seed, step, key)
    so a rerun drops the same ones. sleuth's own trainer drops exactly floor(frac·failed) per update
    (``sleuth.rl.reinforce.negatives_to_drop``); per-trajectory draws match that share in expectation."""
    if correct or frac <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{step}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2 ** 64 < frac


GenerateOne = Callable[[list[int], SamplingParams], Awaitable[tuple[list[int], list[float] | None, str]]]


class EnginePolicy:
    """A TokenPolicy whose ``generate`` calls an inference engine's async generate (vLLM / SGLang behind verl or
    OpenRLHF) on the engine's event loop, from the thread the agent loop runs in.

    ``generate_one(prompt_ids, params)`` returns (sampled token ids, their log-probs or None, finish reason). The
    text the loop parses is always the decode of exactly those ids. Engines that return no log-probs get 0.0
    recorded and ``missing_logprobs`` set, so an adapter hands the trainer no log-probs rather than wrong ones.
    """

    def __init__(self, tokenizer: Any, generate_one: GenerateOne, loop: asyncio.AbstractEventLoop,
                 name: str = "engine", version: int = 0):
        self.tokenizer = tokenizer
        self.generate_one = generate_one
        self.loop = loop
        self.name = name
        self.version = int(version)
        self.missing_logprobs = False

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        futures = [asyncio.run_coroutine_threadsafe(self.generate_one(list(p), params), self.loop) for p in prompts]
        out = []
        for fut in futures:
            ids, lps, finish = fut.result()
            ids = [int(i) for i in ids]
            if lps is None or len(lps) != len(ids):
                self.missing_logprobs = True
                lps = [0.0] * len(ids)
            out.append(Generation(ids, [float(x) for x in lps], self.tokenizer.decode(ids), finish))
        return out
