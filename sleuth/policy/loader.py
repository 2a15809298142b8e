"""Pick a policy from command-line style arguments: a server URL means a ChatPolicy, else a local model.

The default local policy is the trained agent shipped in the package (``sleuth/policies/sleuth-135m-rl``, a
LoRA adapter on the embedded SmolLM2-135M-Instruct, rebuilt by ``sleuth train --recipe configs/recipe.toml``);
``base`` (or ``smollm2``) selects the untrained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "policies" / "sleuth-135m-rl"


def default_model() -> str | None:
    """The shipped trained policy when the package carries one, else None (the embedded base model)."""
    return str(SHIPPED_POLICY) if (SHIPPED_POLICY / "sleuth_version.json").is_file() else None


def load_policy(model: str | None = None, base_url: str | None = None, **kw: Any) -> Any:
    """``base_url`` given -> ``OpenAIPolicy(model or "default", base_url, **kw)``;
    otherwise ``HFPolicy.load(model, **kw)``: None = the shipped trained policy, 'base'/'smollm2' = the
    embedded untrained model, or a local model / adapter directory.

    A missing local path raises FileNotFoundError naming it; server problems surface as PolicyError
    on the first call."""
    if base_url:
        from sleuth.policy.openai_policy import OpenAIPolicy

        return OpenAIPolicy(model or "default", base_url=base_url, **kw)
    from sleuth.policy.hf import HFPolicy

    return HFPolicy.load(model if model is not None else default_model(), **kw)


def agent_settings(policy: Any, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Agent settings for running ``policy``: each value in ``given`` that is not None, else what the policy was
    trained with (a trained export records prompt, max_steps, max_new_tokens, search_k) so it runs as it
    learned, else ``defaults`` (an untrained model or a server)."""
    trained = getattr(policy, "agent_settings", None) or {}
    return {k: given[k] if given.get(k) is not None else trained.get(k, d) for k, d in defaults.items()}
