"""TRL adapter: real GRPOTrainer steps on CPU with the shipped SmolLM2-135M policy, sleuth's agent loop as the
rollout_func and its real search and browse tools over a three-passage bm25s index; checks what TRL received:
tool-output tokens masked, log-probs equal to the sampling distribution's, rewards from sleuth's judge."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow


def test_grpo_steps_with_sleuth_rollouts(env, tmp_path, one_thread):
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from sleuth.agent import AgentConfig
    from sleuth.integrations.trl_grpo import SleuthReward, SleuthRollout, tasks_dataset
    from sleuth.policy.hf import HFPolicy
    from sleuth.policy.loader import default_model
    from sleuth.rewards import RewardConfig, sequence_reward
    from sleuth.tasks.judges import make_judge
    from sleuth.tasks.task import Task

    policy = HFPolicy.load(default_model())          # the shipped policy: it searches, then answers
    tok = policy.tokenizer
    tasks = [Task(id="q1", question="Where was Jane Austen born?", answers=["Steventon"], dataset="test"),
             Task(id="q2", question="Who wrote Pride and Prejudice?", answers=["Jane Austen"], dataset="test")]
    rollout = SleuthRollout(env, AgentConfig(max_steps=2, max_new_tokens=32, prompt="short-fewshot"))
    reward_cfg = RewardConfig(require_evidence=True, partial_credit=0.5)
    reward = SleuthReward(make_judge("cover"), reward_cfg)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_steps=2,
                      learning_rate=1e-5, beta=0.0, temperature=1.0, scale_rewards="none", max_completion_length=1024,
                      logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                      gradient_checkpointing=False,
                      bf16=False,   # TRL's default is bf16 autocast: float32 makes the log-prob check exact
                      disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False)
    # LoRA on the last layer only keeps the backward pass (and this CPU test) short; the rollout, masks and
    # log-prob checks do not depend on which weights train
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[29],
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(policy.model, reward_funcs=[reward], args=args, train_dataset=tasks_dataset(tasks),
                          processing_class=tok, rollout_func=rollout, peft_config=lora)

    seen = []
    generate_and_score = trainer._generate_and_score_completions

    def spy(inputs):
        out = generate_and_score(inputs)
        # the model's own log-probs of the completions, with the weights that sampled them (before this update)
        model = trainer.accelerator.unwrap_model(trainer.model)
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        att = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1] / args.temperature
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        seen.append((inputs, out, lp[:, out["prompt_ids"].shape[1] - 1:]))
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()

    assert trainer.state.global_step == 2 and len(seen) == 2
    logged = {k for row in trainer.state.log_history for k in row}
    assert {"loss", "sleuth/accuracy", "sleuth/grounded"} <= logged
    tool_tokens = 0
    for inputs, out, recomputed in seen:
        trajs = [x["sleuth_trajectory"] for x in inputs]
        tool_mask, completion_mask = out["tool_mask"], out["completion_mask"]
        for row, traj in enumerate(trajs):
            n = int(completion_mask[row].sum())
            ids = out["completion_ids"][row, :n].tolist()
            mask = tool_mask[row, :n].tolist()
            # what the model wrote (mask 1) is exactly its replies; everything else is observation or glue
            replies = [m["content"] for m in traj.messages if m["role"] == "assistant" and "step" in m]
            assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True) == "".join(replies)
            masked = tok.decode([i for i, m in zip(ids, mask) if not m])
            # every observation the loop showed the model (tool results, format-error notes) is under mask 0
            first = next(i for i, m in enumerate(traj.messages) if "step" in m)
            observations = [m["content"] for m in traj.messages[first:] if m["role"] == "user"]
            assert observations and all(o in masked for o in observations)
            if any(c.tool == "search" for c in traj.tool_calls):
                assert any(o.startswith("<observation>\nQuery 1:") for o in observations)   # search results
            tool_tokens += mask.count(0)
            # the log-probs handed over are the sampled ones: the model's own at the sampling temperature
            sampled = out["sampling_per_token_logps"][row, :n]
            on = torch.tensor(mask, dtype=torch.bool)
            assert torch.allclose(sampled[on], recomputed[row, :n][on], atol=2e-3), \
                (sampled[on] - recomputed[row, :n][on]).abs().max()
            assert float(sampled[on].mean()) < -0.01                           # real log-probs, not zeros
            assert traj.judgement is not None                                   # sleuth's judge scored it
        # the advantages TRL trains on are sleuth's rewards minus the group mean (one group of two per step)
        rewards = torch.tensor([sequence_reward(t, reward_cfg) for t in trajs])
        assert torch.allclose(out["advantages"], rewards - rewards.mean(), atol=1e-6)
    assert tool_tokens > 0, "no trajectory used a tool: the masking check would be vacuous"
    assert rollout.stats["trajectories"] == 4 and rollout.stats["overlong"] == 0
