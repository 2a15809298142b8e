"""The agent RL loop end to end on a tiny randomly initialised model: rollout with live tools → judged
groups → REINFORCE update → checkpoint → resume, plus export to a model directory `ask`/`eval` can load."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sleuth.search.index import build_index

    root = tmp_path_factory.mktemp("rl")
    old = os.environ.get("SLEUTH_HOME")
    os.environ["SLEUTH_HOME"] = str(root / "home")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=smol_tokenizer.eos_token_id, tie_word_embeddings=True)
    model_dir = root / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    smol_tokenizer.save_pretrained(model_dir)
    corpus = root / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "title": t, "text": x}) + "\n" for i, (t, x) in enumerate([
        ("Paris", "Paris is the capital of France, on the Seine."),
        ("Berlin", "Berlin is the capital of Germany, on the Spree."),
        ("Rome", "Rome is the capital of Italy, on the Tiber.")])))
    build_index(corpus, "c", dense=False, progress=False)
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "question": q, "answers": [a]}) + "\n" for i, (q, a) in
                             enumerate([("Capital of France?", "Paris"), ("Capital of Germany?", "Berlin"),
                                        ("Capital of Italy?", "Rome"), ("River of Rome?", "Tiber")])))
    yield root, model_dir, tasks
    if old is None:
        os.environ.pop("SLEUTH_HOME")
    else:
        os.environ["SLEUTH_HOME"] = old


def _cfg(model_dir, tasks):
    from sleuth.rl.train import load_run_config

    return load_run_config(None, tasks=str(tasks), model=str(model_dir), holdout=0, index="c", engine="lexical",
                           max_steps=2, max_new_tokens=12, curriculum=False,
                           rl_tasks_per_iteration=2, rl_group_size=3, rl_lr=1e-3, rl_seed=0,
                           rl_micro_batch_size=8)


def test_train_checkpoints_resumes_and_exports(setup):
    from sleuth.policy.hf import HFPolicy
    from sleuth.rl.checkpoint import load_latest
    from sleuth.rl.train import export_policy, train

    root, model_dir, tasks = setup
    out = root / "run"
    hist = train(_cfg(model_dir, tasks), out, iterations=1, log=lambda s: None)
    assert len(hist) == 1 and hist[0]["iteration"] == 1
    m = hist[0]
    assert m["rollout_tokens"] > 0 and 0.0 <= m["answered_rate"] <= 1.0
    ck = load_latest(out)
    assert ck is not None and ck.iteration == 1 and ck.cursor == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["iteration"] == 1
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 6                                            # 2 tasks × 3 samples
    assert all(r["gold"] and set(r["judgement"]) >= {"correct", "reward", "grounded"} for r in rollouts)
    assert {"overlong_trajectories", "truncated_tokens"} <= set(m)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["overlong_trajectories"] == m["overlong_trajectories"]
    assert summary["trajectories"] == 6

    # starting again without --resume must not overwrite the run
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(model_dir, tasks), out, iterations=2, log=lambda s: None)
    hist = train(_cfg(model_dir, tasks), out, iterations=2, resume=True, log=lambda s: None)
    assert [h["iteration"] for h in hist] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["trajectories"] == 12   # totals over the whole run
    assert load_latest(out).cursor == 4

    exported = export_policy(out, root / "exported")
    pol = HFPolicy.load(str(exported))
    assert pol.version == load_latest(out).version


def test_llm_judge_can_be_the_training_reward(monkeypatch, tmp_path):
    from replay_servers import chat_server
    from sleuth.rl.train import build_judge, load_run_config

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SLEUTH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="judge_model"):             # no model or server: says what to set
        build_judge(load_run_config(None, judge="llm"))
    httpd, url, requests = chat_server([(200, "REASON: Same city.\nVERDICT: CORRECT")])
    try:
        config = tmp_path / "run.toml"
        config.write_text(f'judge = "llm"\njudge_model = "grader"\njudge_base_url = "{url}"\n')
        judge = build_judge(load_run_config(config))
        assert judge.name == "llm:grader"
        v = judge.judge("Capital of France?", "Paris, France", ["Paris"])
        assert v.correct and requests[0]["model"] == "grader"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_split_tasks_mixes_sources_filters_datasets_and_removes_the_holdout(tmp_path):
    from sleuth.tasks.loaders import load_tasks
    from sleuth.paths import shared_data
    from sleuth.rl.train import load_run_config, split_tasks

    if not (shared_data() / "qa" / "dev.jsonl").is_file():
        pytest.skip("shared dev questions not present")
    synth = tmp_path / "synth.jsonl"
    synth.write_text("".join(json.dumps({"id": f"s{i}", "question": f"Who was born first, A{i} or B{i}?",
                                         "answers": [f"A{i}"], "dataset": ds}) + "\n"
                             for i, ds in enumerate(["synth-comparison", "synth-bridge-4hop", "synth-comparison"])))
    held = load_tasks("dev", limit=100, seed=0)
    cfg = load_run_config(None, tasks=["dev", str(synth)], datasets=["dev-nq", "synth-comparison"])
    tasks, holdout = split_tasks(cfg)
    assert [t.id for t in holdout] == [t.id for t in held]
    ids = {t.id for t in tasks}
    assert {"s0", "s2"} <= ids and "s1" not in ids                       # dataset filter per task
    assert not ids & {t.id for t in held}                                 # never train on the holdout
    assert {t.dataset for t in tasks} == {"dev-nq", "synth-comparison"}
    with pytest.raises(ValueError, match="no training tasks"):
        split_tasks(load_run_config(None, tasks=[str(synth)], datasets=["dev-musique"]))
    with pytest.raises(FileNotFoundError, match="sleuth synth"):
        split_tasks(load_run_config(None, tasks=["dev", str(tmp_path / "missing.jsonl")]))


def test_question_kind_separates_guessable_questions():
    from sleuth.tasks.task import Task, question_kind

    def kind(q, a):
        return question_kind(Task("t", q, [a], "x"))

    assert kind("Who was born first, Heng Pov or Rajesh Bhola?", "Heng Pov") == "comparison"
    assert kind("Are Sutera and Rhodotypos both types of shrub?", "no") == "yes/no"
    assert kind("Was Paris founded before Rome?", "Yes.") == "yes/no"
    assert kind("Which river flows through Paris?", "Seine") == "open"
    assert kind("Who founded Oregon State University?", "Oregon legislature") == "open"   # "or" inside a word


def test_train_filters_question_kinds_and_unreachable_tasks(setup, tmp_path):
    from sleuth.search.index import open_index
    from sleuth.rl.train import keep_reachable, load_run_config, split_tasks

    root, model_dir, _ = setup
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "question": q, "answers": [a]}) + "\n" for i, (q, a) in
                             enumerate([("Capital of France?", "Paris"), ("Capital of Spain?", "Madrid"),
                                        ("River of Rome?", "Tiber"), ("Is Rome in Italy?", "yes"),
                                        ("Paris or Berlin: capital of Germany?", "Berlin")])))
    cfg = load_run_config(None, tasks=str(tasks), holdout=0, question_kinds=["open"])
    kept, _ = split_tasks(cfg)
    assert [t.id for t in kept] == ["t0", "t1", "t2"]
    engine = open_index("c").engine("lexical")
    assert [t.id for t in keep_reachable(kept, engine, k=2)] == ["t0", "t2"]   # no passage mentions Madrid
    with pytest.raises(ValueError, match="unknown question_kinds"):
        split_tasks(load_run_config(None, tasks=str(tasks), holdout=0, question_kinds=["bridge"]))


def _stage(path, model_dir, tasks, out, model=None, iterations=2):
    path.write_text(f'''
tasks = "{tasks}"
model = "{model or model_dir}"
holdout = 0
validation = 0.5
index = "c"
engine = "lexical"
max_steps = 2
max_new_tokens = 12
curriculum = false
[rl]
out_dir = "{out}"
iterations = {iterations}
keep_checkpoints = 10
tasks_per_iteration = 1
group_size = 2
lr = 1e-3
lora_r = 2
lora_alpha = 4
micro_batch_size = 8
''')
    return path


def test_recipe_chains_lora_stages_selects_on_validation_and_resumes(setup, tmp_path):
    """`sleuth train --recipe`: stage 2 continues stage 1's adapter; the checkpoint shipped is chosen on the
    validation split (tasks neither stage trains on); running the recipe again redoes nothing."""
    from sleuth.policy.hf import HFPolicy
    from sleuth.rl.recipe import run_recipe
    from sleuth.rl.train import load_run_config, split_tasks

    root, model_dir, tasks = setup
    s1 = _stage(tmp_path / "s1.toml", model_dir, tasks, tmp_path / "s1")
    s2 = _stage(tmp_path / "s2.toml", model_dir, tasks, tmp_path / "s2", model=tmp_path / "s1" / "export")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'export = "{tmp_path / "shipped"}"\nselect_every = 1\n'
                      f'[[stages]]\nconfig = "{s1}"\nselect = true\n[[stages]]\nconfig = "{s2}"\n')
    train_ids, _, val = split_tasks(load_run_config(s2), with_validation=True)
    assert val and not {t.id for t in val} & {t.id for t in train_ids}
    assert {t.id for t in val} == {t.id for t in split_tasks(load_run_config(s1), with_validation=True)[2]}

    logs: list[str] = []
    shipped = run_recipe(recipe, log=logs.append)
    assert (shipped / "adapter_model.safetensors").is_file()
    scores = json.loads((tmp_path / "s2" / "selection.json").read_text())
    assert set(scores) == {"ckpt-00000001", "ckpt-00000002"} and any("selected" in m for m in logs)
    assert (tmp_path / "s1" / "selection.json").is_file()     # select = true: stage 1 hands over its best
    meta = json.loads((shipped / "sleuth_version.json").read_text())
    assert meta["base"] == str(model_dir)                    # stage 2 continued stage 1's adapter, same base
    s1_meta = json.loads((tmp_path / "s1" / "export" / "sleuth_version.json").read_text())
    assert meta["agent"]["max_steps"] == 2 and meta["version"] >= s1_meta["version"]   # versions continue
    assert HFPolicy.load(shipped).agent_settings["max_steps"] == 2
    logs.clear()
    run_recipe(recipe, log=logs.append)                      # again: every step is already done
    assert sum("done" in m for m in logs) == 3 and not any("selected" in m for m in logs)


def test_warm_start_runs_before_the_first_iteration_and_never_again(setup):
    from sleuth.rl.checkpoint import load_latest
    from sleuth.rl.train import train
    from sleuth.rl.warmstart import WarmStartConfig

    root, model_dir, tasks = setup
    out = root / "warm"
    cfg = _cfg(model_dir, tasks)
    cfg.warm_start = WarmStartConfig(tasks=[str(tasks)], max_demos=3, epochs=2, batch_size=2)
    logs: list[str] = []
    train(cfg, out, iterations=1, log=logs.append)
    report = json.loads((out / "warm_start.json").read_text())
    assert report["demos"] == 3 and report["demos_multi_search"] == 0        # lookups: one search each
    assert len(report["steps"]) == 4 and report["version"] == 4              # 2 epochs × 2 batches
    assert (out / "ckpt-00000000").is_dir() and load_latest(out).version >= 4  # warm start, then RL
    stamp = (out / "warm_start.json").stat().st_mtime_ns
    train(cfg, out, iterations=2, resume=True, log=logs.append)
    assert (out / "warm_start.json").stat().st_mtime_ns == stamp
    assert sum("warm start epoch" in line for line in logs) == 4


def test_resume_takes_the_learning_rate_from_the_config(setup):
    from sleuth.rl.train import _start_or_resume, train

    root, model_dir, tasks = setup
    out = root / "lr"
    train(_cfg(model_dir, tasks), out, iterations=1, log=lambda s: None)
    cfg = _cfg(model_dir, tasks)
    cfg.rl.lr = 1e-5
    trainer, _, _ = _start_or_resume(cfg, out, True, lambda s: None)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-5]


@pytest.mark.parametrize("flags,want", [({"avx2", "avx512f", "avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True),
                                        ({"avx2", "fma"}, False)])
def test_auto_precision_follows_the_cpu(monkeypatch, flags, want):
    """"auto" resolves to bfloat16 rollouts and update only where the CPU has native bfloat16 (elsewhere it is
    slower than float32), to float32 for a GPU update, and bf16 rollouts still demand tis_cap."""
    from sleuth import hardware
    from sleuth.rl.train import load_run_config

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    cfg = load_run_config(None, rollout_engine="static", rollout_precision="auto", rl_bf16="auto", rl_tis_cap=2.0)
    assert cfg.rollout_precision == ("bf16" if want else "fp32") and cfg.rl.bf16 is want
    gpu = load_run_config(None, rollout_engine="static", rollout_precision="auto", rl_bf16="auto",
                          rl_device="cuda")
    assert gpu.rollout_precision == "fp32" and gpu.rl.bf16 is False
    if want:
        with pytest.raises(ValueError, match="tis_cap"):
            load_run_config(None, rollout_engine="static", rollout_precision="auto")
    else:
        assert load_run_config(None, rollout_engine="static", rollout_precision="auto").rollout_precision == "fp32"
    with pytest.raises(ValueError, match="bf16 must be"):
        load_run_config(None, rl_bf16="yes")
