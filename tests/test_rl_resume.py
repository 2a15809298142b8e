"""Checkpoint/resume: a run killed with SIGKILL mid-iteration resumes into exactly the uninterrupted state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sleuth.rl import checkpoint as ck
from sleuth.rl.buffer import ReplayBuffer
from sleuth.rewards import score
from sleuth.rl.reinforce import ReinforceTrainer
from sleuth.rl.toy import tiny_llama, toy_config, train_toy
from sleuth.trajectory import Segment, Trajectory

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--iterations", "3", "--step-budget", "2", "--threads", "1"]
TIMING_KEYS = {"update_seconds", "tokens_per_s", "rollout_seconds"}

# Runs the toy trainer, but blocks inside the commit of checkpoint 3 (temp dir fully written, not yet renamed)
# so that the parent can SIGKILL it there: mid-iteration, after the update, during the save.
KILLABLE = """
import sys, time
import sleuth.rl.checkpoint as ck
from sleuth.rl import toy
commit = ck._commit
def blocking_commit(tmp, final):
    if final.name == "ckpt-00000003":
        print("SAVING", flush=True)
        time.sleep(600)
    commit(tmp, final)
ck._commit = blocking_commit
toy.main(sys.argv[1:])
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _strip(obj):
    """Drop wall-clock fields, which legitimately differ between runs."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in {"started", "wall_seconds"} | TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _state(ckpt_dir: Path) -> dict:
    return json.loads((ckpt_dir / "state.json").read_text())


def test_sigkill_mid_iteration_then_resume_matches_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    clean = subprocess.Popen([sys.executable, "-m", "sleuth.rl.toy", "--out", str(a), *TOY], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = subprocess.Popen([sys.executable, "-c", KILLABLE, "--out", str(b), *TOY], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(240, killed.kill)        # never hang the suite if the marker does not come
    timer.start()
    lines = []
    for line in killed.stdout:
        lines.append(line)
        if line.strip() == "SAVING":
            os.kill(killed.pid, signal.SIGKILL)
            break
    killed.wait()
    timer.cancel()
    assert killed.returncode == -signal.SIGKILL, "".join(lines)
    out, _ = clean.communicate(timeout=240)
    assert clean.returncode == 0, out

    # The kill left iterations 1-2 committed and a half-done temp dir that load_latest ignores.
    names = sorted(p.name for p in b.iterdir())
    assert len(names) == 3 and names[0].startswith(".tmp-ckpt-00000003-"), names
    assert names[1:] == ["ckpt-00000001", "ckpt-00000002"], names
    latest = ck.load_latest(b)
    assert latest is not None and latest.iteration == 2 and latest.version == int(latest.metrics[-1]["version"])
    assert len(latest.buffer) > 0                      # partial rollouts were in flight at the checkpoint

    # Resume (here, in the test process): it must redo iteration 3 and end in the uninterrupted run's state.
    log: list[str] = []
    hist = train_toy(toy_config(), iterations=3, out_dir=str(b), step_budget=2, log=log.append)
    assert len(log) == 1 and log[0].startswith("iter 3:") and len(hist) == 3
    assert not any(p.name.startswith(".tmp-") for p in b.iterdir())

    ca, cb = a / "ckpt-00000003", b / "ckpt-00000003"
    wa, wb = load_file(ca / "model" / "model.safetensors"), load_file(cb / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = (torch.load(c / "optimizer.pt", weights_only=True) for c in (ca, cb))
    assert oa["state"].keys() == ob["state"].keys() and len(oa["state"]) > 0
    for k in oa["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(oa["state"][k][name], ob["state"][k][name]), (k, name)
    sa, sb = _state(ca), _state(cb)
    for key in ("iteration", "version", "cursor", "rng"):
        assert sa[key] == sb[key], key
    assert _strip(sa["buffer"]) == _strip(sb["buffer"])
    assert _strip(sa["metrics"]) == _strip(sb["metrics"])
    # partial rollouts really resumed under newer weights and fed older-version tokens to the update
    assert any(m["resumed"] > 0 for m in sa["metrics"]) and any(m["old_tokens"] > 0 for m in sa["metrics"])


def _groups(version: int = 0) -> list[list[Trajectory]]:
    def traj(ids: list[int], correct: bool) -> Trajectory:
        seg = Segment()
        seg.extend_context([1, 3])
        seg.extend_policy(ids, [-4.0] * len(ids), version=version, step=0)
        t = Trajectory(question="q", segments=[seg], steps=1, finish_reason="finish")
        score(t, correct)
        return t
    return [[traj([10, 11], True), traj([12], False), traj([13, 14], False)]]


@pytest.mark.parametrize("lora", [False, True])
def test_checkpoint_roundtrip_restores_everything(tmp_path, lora):
    cfg = toy_config(lora_r=4 if lora else 0, keep_checkpoints=2)
    trainer = ReinforceTrainer(tiny_llama(seed=0), None, cfg)
    trainer.step(_groups())
    buf = ReplayBuffer()
    unfinished = _groups()[0][0]
    unfinished.finish_reason = "unfinished"
    buf.add(unfinished, {"step": 1, "note": "resume me"}, version=1, group="g")
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    ck.save(tmp_path, trainer, iteration=1, buffer=buf, cursor={"epoch": 0, "index": 8}, metrics=[{"loss": 1.0}])
    if lora:
        assert (tmp_path / "ckpt-00000001" / "model" / "adapter_model.safetensors").is_file()
        assert not (tmp_path / "ckpt-00000001" / "model" / "model.safetensors").exists()

    fresh = ReinforceTrainer(tiny_llama(seed=0), None, cfg)
    torch.rand(5)                                      # move the RNG on; restore must bring it back
    c = ck.load_latest(tmp_path)
    c.restore(fresh)
    assert torch.equal(torch.rand(3), expected_draw)
    assert fresh.version == trainer.version == 1 and c.cursor == {"epoch": 0, "index": 8}
    assert c.buffer.to_dict() == buf.to_dict() and c.metrics == [{"loss": 1.0}]
    for (n, p), (_, q) in zip(trainer.model.named_parameters(), fresh.model.named_parameters()):
        assert torch.equal(p, q), n
    sa, sb = trainer.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    # both continue identically
    ma, mb = trainer.step(_groups(version=1)), fresh.step(_groups(version=1))
    assert ma["skipped_update"] == 0.0 and ma["loss"] == mb["loss"] and ma["grad_norm"] == mb["grad_norm"]

    with pytest.raises(ValueError, match="LoRA"):
        c.restore(ReinforceTrainer(tiny_llama(seed=0), None, toy_config(lora_r=0 if lora else 4)))


def test_latest_pruning_and_damaged_checkpoints(tmp_path):
    assert ck.load_latest(tmp_path / "missing") is None
    trainer = ReinforceTrainer(tiny_llama(seed=0), None, toy_config())
    for it in (1, 2, 3):
        ck.save(tmp_path, trainer, iteration=it, keep=2)
    assert [i for i, _ in ck.checkpoint_dirs(tmp_path)] == [3, 2]
    (tmp_path / "ckpt-00000003" / "state.json").write_text("{truncated")     # damaged on disk
    assert ck.load_latest(tmp_path).iteration == 2
    (tmp_path / "ckpt-00000009").mkdir()                                      # stray, empty
    assert ck.load_latest(tmp_path).iteration == 2


def test_lora_export_loads_as_a_policy_and_continues(tmp_path):
    """A LoRA run exports its adapter alone (float16, a few MB at most); `HFPolicy.load` applies it to the
    recorded base model and gives the trained model's outputs; a LoRA run started from it continues it."""
    from sleuth.policy.hf import HFPolicy
    from sleuth.rl.train import export_policy

    base = HFPolicy.load()
    trainer = ReinforceTrainer(base.model, base.tokenizer, toy_config(lora_r=2, lora_alpha=4))
    with torch.no_grad():                      # stand-in for training: a non-zero adapter
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.05)
    trainer.version = 7
    ck.save(tmp_path, trainer, iteration=1)
    (tmp_path / "config.json").write_text(json.dumps({"model": None}))
    dest = export_policy(tmp_path, tmp_path / "export")
    files = {p.name for p in dest.iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert all(v.dtype == torch.float16 for v in load_file(dest / "adapter_model.safetensors").values())

    loaded = HFPolicy.load(dest)
    assert loaded.version == 7 and loaded.name == "export"
    ids = torch.tensor([base.tokenizer.encode("The capital of France is Paris.")])
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = loaded.model(input_ids=ids).logits
        plain = HFPolicy.load().model(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-2            # the adapter changes the model ...
    assert (want - got).abs().max() < 5e-3              # ... and the export reproduces it (float16 adapter)

    unmerged = HFPolicy.load(dest, merge_adapter=False)  # the base alone, for a trainer continuing the adapter
    with torch.no_grad():
        assert torch.equal(unmerged.model(input_ids=ids).logits, plain)
