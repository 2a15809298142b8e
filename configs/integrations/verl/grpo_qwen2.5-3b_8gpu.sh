#!/usr/bin/env bash
# GRPO on a 3B instruct model with sleuth's agent loop, tools and reward: one node, 8 GPUs (80 GB class).
# Not run here (no GPU); the adapter itself is tested against verl's classes (tests/test_integration_verl.py).
#
#   pip install verl==0.9.1 vllm          # in its own environment: verl pins transformers<5.11
#   pip install --no-deps -e /path/to/sleuth && pip install bm25s faiss-cpu sentence-transformers httpx trafilatura
#   sleuth serve-search --index wiki --host 0.0.0.0 --port 8765 &       # one shared search service
#   python -c "from sleuth.tasks.loaders import load_tasks; from sleuth.integrations.verl_agent_loop import \
#     write_dataset; write_dataset(load_tasks('runs/synth/tasks.jsonl'), 'data/train.parquet'); \
#     write_dataset(load_tasks('dev', limit=200, seed=0), 'data/val.parquet')"
#   bash configs/integrations/verl/grpo_qwen2.5-3b_8gpu.sh
#
# Partial rollout: use verl's fully-async trainer instead (python -m verl.experimental.fully_async_policy.fully_async_main
# with async_training.partial_rollout=True); the agent loop is unchanged.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
python3 -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  algorithm.use_kl_in_reward=False \
  data.train_files=data/train.parquet \
  data.val_files=data/val.parquet \
  data.train_batch_size=128 \
  data.max_prompt_length=2048 \
  data.max_response_length=8192 \
  data.return_raw_chat=True \
  data.filter_overlong_prompts=True \
  actor_rollout_ref.model.path=Qwen/Qwen2.5-3B-Instruct \
  actor_rollout_ref.model.enable_gradient_checkpointing=True \
  actor_rollout_ref.model.use_remove_padding=True \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=64 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2 \
  actor_rollout_ref.actor.use_dynamic_bsz=True \
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24576 \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.entropy_coeff=0 \
  actor_rollout_ref.actor.loss_agg_mode=token-mean \
  actor_rollout_ref.actor.fsdp_config.param_offload=False \
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=False \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.mode=async \
  actor_rollout_ref.rollout.n=8 \
  actor_rollout_ref.rollout.temperature=1.0 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
  actor_rollout_ref.rollout.calculate_log_probs=True \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4 \
  actor_rollout_ref.rollout.agent.num_workers=8 \
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$HERE/agent_loops.yaml" \
  actor_rollout_ref.rollout.agent.default_agent_loop=sleuth_agent \
  actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4 \
  algorithm.rollout_correction.rollout_is=token \
  trainer.n_gpus_per_node=8 \
  trainer.nnodes=1 \
  trainer.total_epochs=1 \
  trainer.save_freq=50 \
  trainer.test_freq=25 \
  trainer.logger='["console"]' \
  trainer.project_name=sleuth \
  trainer.experiment_name=grpo-qwen2.5-3b "$@"
