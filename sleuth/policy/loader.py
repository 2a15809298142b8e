"""Pick a policy from command-line style arguments: a server URL means a ChatPolicy, else a local model."""

from __future__ import annotations

from typing import Any


def load_policy(model: str | None = None, base_url: str | None = None, **kw: Any) -> Any:
    """``base_url`` given -> ``OpenAIPolicy(model or "default", base_url, **kw)``;
    otherwise ``HFPolicy.load(model, **kw)`` (None/'smollm2' = the embedded model, or a local directory).

    A missing local path raises FileNotFoundError naming it; server problems surface as PolicyError
    on the first call."""
    if base_url:
        from sleuth.policy.openai_policy import OpenAIPolicy

        return OpenAIPolicy(model or "default", base_url=base_url, **kw)
    from sleuth.policy.hf import HFPolicy

    return HFPolicy.load(model, **kw)
