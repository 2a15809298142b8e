"""The context manager: keep what matters, drop documents the agent no longer needs.

The context is a list of chunks (prompt, the policy's own replies, tool observations). When the next step
would not fit in the window (context tokens + the generation reserve), observations are compressed oldest
first into short stubs until the context is back under ``target`` of the window. The policy, explicitly:

* the prompt (system, example, question) and every reply the model wrote — its thoughts and actions —
  are never touched;
* the latest ``keep_last`` observations stay in full;
* an older observation becomes a stub that keeps its tool, its URLs, and up to ``keep_lines`` lines that
  the model later quoted in its own replies or that share words with the question;
* if that is not enough, the oldest stubs shrink further to one line (tool, step, and only the URLs
  the model went on to open or cite);
* if the context still does not fit with every older observation reduced, the trajectory ends with
  reason ``context``.

Each compression is an event (step, tokens before/after, chunks stubbed) recorded on the trajectory.

The policy is the same for an OpenAI-compatible server, whose tokenizer we do not have: there a chunk is
one chat message and its size an estimate (``estimate_ids``), deliberately on the high side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

_WORD = re.compile(r"[A-Za-z0-9]+")
_URL = re.compile(r"(?:corpus|https?)://[^\s<>\"')\]]+")
_STOP = set("the a an of in on at to for and or is was were are be by with from as that this which who what "
            "when where how why did does do it its his her their than then into".split())


@dataclass
class Chunk:
    kind: str                     # prompt | policy | obs
    text: str
    ids: list[int]
    logprobs: list[float] = field(default_factory=list)   # policy chunks only
    step: int = -1
    version: int = -1
    body: str = ""                # obs: the observation text without chat-role glue
    tool: str = ""
    compressed: int = 0            # 0 = verbatim, 1 = stub with key lines, 2 = one-line stub

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ContextConfig:
    enabled: bool = True
    keep_last: int = 1            # newest observations kept verbatim
    target: float = 0.6           # compress down to this fraction of the window
    keep_lines: int = 3           # relevant lines a stub keeps
    line_chars: int = 200


CHARS_PER_TOKEN = 3
"""Estimate for text whose tokens live on a server: English prose runs ~4 characters per BPE token, URLs,
numbers and code denser, so 3 errs towards compressing early rather than overflowing the server."""
MESSAGE_TOKENS = 4
"""What a chat template adds around each message (role markers, separators)."""


def estimate_ids(text: str) -> list[int]:
    """Stand-in ids for a chat message whose real tokens live on a server: one per estimated token
    (``fit`` only counts them)."""
    return [0] * (-(-len(text) // CHARS_PER_TOKEN) + MESSAGE_TOKENS)


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) > 2}


def make_stub(chunk: Chunk, question: str, later_replies: str, cfg: ContextConfig) -> str:
    body = chunk.body
    urls = list(dict.fromkeys(_URL.findall(body)))
    qwords = _content_words(question)
    reply_norm = " ".join(later_replies.lower().split())
    scored = []
    for i, line in enumerate(body.splitlines()):
        line = line.strip()
        if not line or line.startswith("[") and line.endswith("]"):
            continue
        words = _content_words(line)
        quoted = any(" ".join(w) in reply_norm for w in _ngrams(line.lower().split(), 5))
        overlap = len(words & qwords)
        if quoted or overlap >= 2:
            scored.append((quoted, overlap, -i, line[:cfg.line_chars]))
    scored.sort(reverse=True)
    kept = [s[3] for s in sorted(scored[:cfg.keep_lines], key=lambda s: -s[2])]
    parts = [f"[{chunk.tool or 'tool'} result from step {chunk.step} compressed to save context]"]
    if urls:
        parts.append("URLs: " + " ".join(urls[:10]))
    parts += kept
    return "\n".join(parts)


def _ngrams(words: list[str], n: int):
    if len(words) < n:
        return [words] if words else []
    return [words[i:i + n] for i in range(len(words) - n + 1)]


@dataclass
class FitResult:
    chunks: list[Chunk]
    changed: bool
    overflow: bool
    event: dict[str, Any] | None = None


def fit(chunks: list[Chunk], *, window: int, reserve: int, question: str,
        render_obs: Callable[[str, Chunk], tuple[str, list[int]]], cfg: ContextConfig, step: int) -> FitResult:
    """Return chunks that fit in ``window - reserve`` tokens, compressing old observations if allowed."""
    total = sum(len(c.ids) for c in chunks)
    if total + reserve <= window:
        return FitResult(chunks, False, False)
    if not cfg.enabled:
        return FitResult(chunks, False, True, {"step": step, "tokens": total, "overflow": True})
    goal = int(cfg.target * window) - reserve
    obs_idx = [i for i, c in enumerate(chunks) if c.kind == "obs" and c.compressed < 2]
    candidates = obs_idx[:-cfg.keep_last] if cfg.keep_last > 0 else obs_idx
    new = list(chunks)
    stubbed = 0
    for i in candidates:
        if total + reserve <= window and total <= goal:
            break
        if new[i].compressed:
            continue
        later = " ".join(c.text for c in new[i + 1:] if c.kind == "policy")
        stub = make_stub(new[i], question, later, cfg)
        text, ids = render_obs(stub, new[i])
        total += len(ids) - len(new[i].ids)
        new[i] = Chunk("obs", text, ids, step=new[i].step, body=stub, tool=new[i].tool, compressed=1)
        stubbed += 1
    # Still too long: older stubs shrink to one line (tool, step, URLs). Thoughts are still never touched.
    for i in candidates:
        if total + reserve <= window and total <= goal:
            break
        if new[i].compressed == 1:
            # one line: only the URLs the model went on to use (opened or cited) survive at this level
            later = " ".join(c.text for c in new[i + 1:] if c.kind == "policy")
            urls = [u for u in dict.fromkeys(_URL.findall(new[i].body)) if u in later][:3]
            line = f"[step {new[i].step} {new[i].tool or 'tool'} result dropped]" + (
                " URLs: " + " ".join(urls) if urls else "")
            text, ids = render_obs(line, new[i])
            total += len(ids) - len(new[i].ids)
            new[i] = Chunk("obs", text, ids, step=new[i].step, body=line, tool=new[i].tool, compressed=2)
            stubbed += 1
    event = {"step": step, "tokens_before": sum(len(c.ids) for c in chunks), "tokens_after": total,
             "stubbed": stubbed, "overflow": total + reserve > window}
    return FitResult(new, stubbed > 0, total + reserve > window, event)
