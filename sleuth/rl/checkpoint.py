"""Checkpoints written every iteration, atomically: a killed process never leaves a broken latest checkpoint.

Layout of ``<run_dir>/ckpt-00000007/`` (state after 7 completed iterations):
  model/          ``save_pretrained`` output: safetensors weights (or only the LoRA adapter) + tokenizer
  optimizer.pt    AdamW state (moments, step counts)
  state.json      iteration, weight version, data cursor, replay buffer, RNG states, metrics history, config

Atomicity: everything is written into ``.tmp-ckpt-…``, fsynced, then the directory is renamed to its final
name — a single atomic step on POSIX. ``load_latest`` only looks at ``ckpt-*`` directories, so a save killed
half-way leaves only a temp directory, which the next save removes. Old checkpoints are renamed away before
being deleted, for the same reason.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .buffer import ReplayBuffer

FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8})$")


# ------------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch global RNG states as JSON-friendly values."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        st["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))

    def tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(tensor(st["torch"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in st["cuda"]])


# ---------------------------------------------------------------------------------------------- save
def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Rename out of the ``ckpt-*`` namespace first (atomic), then delete at leisure."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _commit(tmp: Path, final: Path) -> None:
    if final.exists():      # re-saving the same iteration: the older copy stays valid until the swap
        _discard(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Committed checkpoints, newest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def save(run_dir: str | Path, trainer: Any, *, iteration: int, buffer: ReplayBuffer | None = None,
         cursor: Any = None, metrics: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
         keep: int = 2) -> Path:
    """Write the state after ``iteration`` completed iterations; returns the checkpoint directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for p in run_dir.iterdir():    # leftovers of saves/prunes that were killed
        if p.name.startswith((".tmp-ckpt-", ".trash-")):
            shutil.rmtree(p, ignore_errors=True)
    final = run_dir / f"ckpt-{iteration:08d}"
    tmp = run_dir / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()

    from transformers.utils import logging as hf_logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()      # a "Writing model shards" bar every iteration is noise
    try:
        trainer.model.save_pretrained(tmp / "model")
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if hasattr(trainer.tokenizer, "save_pretrained"):
        trainer.tokenizer.save_pretrained(tmp / "model")
    torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
    state = {
        "format": FORMAT,
        "iteration": int(iteration),
        "version": int(trainer.version),
        "lora": bool(trainer.is_lora),
        "cursor": cursor,
        "buffer": (buffer or ReplayBuffer()).to_dict(),
        "rng": rng_state(),
        "metrics": metrics or [],
        "config": trainer.cfg.to_dict(),
        "extra": extra or {},
    }
    (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    _fsync_tree(tmp)
    _commit(tmp, final)

    for _, old in checkpoint_dirs(run_dir)[max(keep, 1):]:
        _discard(old)
    return final


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Checkpoint:
    path: Path
    iteration: int
    version: int
    lora: bool
    cursor: Any
    buffer: ReplayBuffer
    rng: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def restore(self, trainer: Any, rng: bool = True) -> None:
        """Load weights, optimizer state, weight version and (by default) the global RNG states into a trainer
        built exactly like the one that saved (same model class, same LoRA settings)."""
        if self.lora != trainer.is_lora:
            raise ValueError(f"checkpoint {self.path} was saved {'with' if self.lora else 'without'} LoRA, "
                             f"but the trainer is configured {'with' if trainer.is_lora else 'without'} it")
        load_weights(trainer.model, self.model_dir, lora=self.lora)
        opt = torch.load(self.path / "optimizer.pt", map_location=trainer.device, weights_only=True)
        trainer.optimizer.load_state_dict(opt)
        trainer.version = self.version
        if rng:
            set_rng_state(self.rng)


def load_weights(model: torch.nn.Module, model_dir: str | Path, lora: bool) -> None:
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if lora:
        from peft import set_peft_model_state_dict
        res = set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
        if getattr(res, "unexpected_keys", None):
            raise ValueError(f"adapter in {model_dir} does not match the model: {res.unexpected_keys[:5]}")
        return
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(f))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"weights in {model_dir} do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def read(path: str | Path) -> Checkpoint:
    path = Path(path)
    st = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if st.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {st.get('format')!r}")
    if not (path / "model").is_dir() or not (path / "optimizer.pt").is_file():
        raise ValueError(f"{path}: incomplete checkpoint")
    return Checkpoint(path=path, iteration=int(st["iteration"]), version=int(st["version"]), lora=bool(st["lora"]),
                      cursor=st["cursor"], buffer=ReplayBuffer.from_dict(st["buffer"]), rng=st["rng"],
                      metrics=st.get("metrics", []), config=st.get("config", {}), extra=st.get("extra", {}))


def load_latest(run_dir: str | Path) -> Checkpoint | None:
    """The newest readable checkpoint in ``run_dir``, or None when there is none."""
    for _, path in checkpoint_dirs(run_dir):
        try:
            return read(path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            continue   # unreadable (e.g. damaged on disk): fall back to the previous one
    return None
