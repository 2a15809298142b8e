"""Training configuration: one dataclass, one docstring per field, loadable from TOML.

```toml
lr = 1e-5
group_size = 8
off_policy = "mask"

[reward]
gamma = 0.9
```
Unknown keys are errors (a typo must not silently train with a default).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rewards import RewardConfig

OFF_POLICY_MODES = ("mask", "is")


@dataclass
class TrainConfig:
    # --- run
    seed: int = 0
    """Seed for sampling, negative-sample dropping and anything else random."""
    out_dir: str = "runs/rl"
    """Where checkpoints (one directory per iteration) are written."""
    iterations: int = 100
    """Number of rollout→update iterations."""
    keep_checkpoints: int = 2
    """How many most recent checkpoints to keep on disk (older ones are deleted after each save)."""

    # --- rollouts (what the update expects to receive)
    tasks_per_iteration: int = 8
    """Tasks (groups) sampled per iteration."""
    group_size: int = 8
    """Trajectories per task; the group mean reward is the baseline."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (1.0 keeps the recorded log-probs equal to the trained policy's)."""
    max_partial_age: int = 2
    """Unfinished trajectories older than this many weight versions are dropped from the replay buffer."""

    # --- objective
    normalize_std: bool = False
    """Divide advantages by the group reward std (GRPO) instead of only subtracting the mean (REINFORCE)."""
    negative_drop_frac: float = 0.0
    """Fraction of failed trajectories dropped from the loss each update (negative-sample control)."""
    off_policy: str = "mask"
    """Tokens sampled by an older weight version: 'mask' drops them from the loss (strictly on-policy),
    'is' keeps them weighted by min(π/π_old, is_cap) (detached)."""
    is_cap: float = 2.0
    """Upper clip of the importance weight in off_policy='is' mode."""
    tis_cap: float = 0.0
    """Truncated importance weight min(π/μ, tis_cap) on tokens sampled by the current weights, μ being the rollout
    engine's recorded log-prob: corrects an engine whose log-probs differ from the trainer's (0 = off; the
    default float32 engine matches the trainer to ~1e-5, an int8 engine does not and requires it)."""
    l2_tau: float = 0.0
    """Coefficient τ of the k1.5-style penalty τ/2·(logπ − logπ_old)² on trained tokens (0 disables)."""
    log_entropy: bool = True
    """Compute (and log) the policy entropy on trained tokens; costs one extra softmax over the vocabulary."""

    # --- optimisation
    lr: float = 1e-5
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (0 disables clipping; the norm is still logged)."""
    micro_batch_size: int = 4
    """Sequences per forward/backward pass; gradients accumulate over micro-batches into one update."""
    max_seq_len: int = 8192
    """Longest training sequence. A trajectory with a longer one is left out of the update whole (its final step
    carries the reward) and counted: ``overlong_trajectories``, ``truncated_tokens`` (how far over) in the
    metrics and the run summary."""
    bf16: bool | str = False
    """Run forward/backward under bfloat16 autocast (weights and optimizer state stay float32). ``"auto"``: on
    where the update runs on a CPU with native bfloat16 (AVX512-BF16/AMX), where it is ~1.4x faster
    (``benchmarks/results/train_step_bf16.json``), off elsewhere (``sleuth.hardware.auto_bf16``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    share_prefix: bool = True
    """Run the prompt prefix that every row of the update shares (system prompt, worked examples) once instead
    of once per row; the gradient is the same (False: every row runs whole, the former path)."""
    share_prefix_min: int = 32
    """Shortest common prefix worth sharing."""
    device: str = "cpu"
    """Torch device for the update."""

    # --- LoRA (lora_r = 0 means full fine-tuning)
    lora_r: int = 0
    """LoRA rank; 0 trains all weights."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_target: str = "all-linear"
    """peft target_modules: 'all-linear' or a comma-separated list of module names."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward shaping (correctness, penalties, gamma-decay)."""

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = _build(RewardConfig, self.reward, "reward")
        self.betas = tuple(self.betas)  # TOML gives a list
        if self.off_policy not in OFF_POLICY_MODES:
            raise ValueError(f"off_policy must be one of {OFF_POLICY_MODES}, got {self.off_policy!r}")
        if not 0.0 <= self.negative_drop_frac <= 1.0:
            raise ValueError(f"negative_drop_frac must be in [0, 1], got {self.negative_drop_frac}")
        if self.micro_batch_size < 1 or self.group_size < 1 or self.max_seq_len < 2:
            raise ValueError("micro_batch_size and group_size must be >= 1, max_seq_len >= 2")
        if self.is_cap <= 0:
            raise ValueError("is_cap must be > 0")
        if self.tis_cap < 0:
            raise ValueError("tis_cap must be >= 0 (0 disables it)")
        if self.bf16 == "auto":
            from sleuth.hardware import auto_bf16

            self.bf16 = auto_bf16(self.device)
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true, false or \"auto\", got {self.bf16!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**data)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a TOML file (top-level keys + an optional [reward] table); keyword overrides win."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: invalid TOML: {e}") from None
    data.update(overrides)
    reward = data.pop("reward", {})
    if not isinstance(reward, (dict, RewardConfig)):
        raise ValueError("[reward] must be a table")
    cfg = _build(TrainConfig, data, "top level")
    cfg.reward = reward if isinstance(reward, RewardConfig) else _build(RewardConfig, reward, "reward")
    return cfg
