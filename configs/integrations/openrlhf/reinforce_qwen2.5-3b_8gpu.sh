#!/usr/bin/env bash
# REINFORCE++-baseline on a 3B instruct model with sleuth's agent loop and reward through
# --train.agent_func_path; one node, 8 GPUs. Not run here: openrlhf needs flash-attn, DeepSpeed and vLLM (CUDA).
# The executor is tested against OpenRLHF's agent classes (tests/test_integration_openrlhf.py).
#
#   pip install openrlhf[vllm]==0.11.2 && pip install --no-deps -e /path/to/sleuth
#   sleuth serve-search --index wiki --host 0.0.0.0 --port 8765 &
#   prompts: JSONL with "question" and "answers" (a JSON list string) -- e.g. from `sleuth synth`
#
# Partial rollout: add --train.async_enable --train.partial_rollout_enable (OpenRLHF's own); the executor is unchanged.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export SLEUTH_SEARCH_URL=${SLEUTH_SEARCH_URL:-http://SEARCH_HOST:8765}
export SLEUTH_MAX_STEPS=10 SLEUTH_MAX_NEW_TOKENS=512 SLEUTH_PROMPT=short-2shot
export SLEUTH_REQUIRE_EVIDENCE=1 SLEUTH_GAMMA=0.9 SLEUTH_NEGATIVE_DROP_FRAC=0.3
python3 -m openrlhf.cli.train_ppo_ray \
  --ref.num_nodes 1 --ref.num_gpus_per_node 8 \
  --actor.num_nodes 1 --actor.num_gpus_per_node 8 \
  --vllm.num_engines 8 --vllm.tensor_parallel_size 1 --vllm.gpu_memory_utilization 0.6 \
  --train.colocate_all \
  --actor.model_name_or_path Qwen/Qwen2.5-3B-Instruct \
  --train.agent_func_path "$HERE/sleuth_agent.py" \
  --data.prompt_dataset data/sleuth_train.jsonl --data.input_key question --data.label_key answers \
  --algo.advantage.estimator reinforce_baseline \
  --algo.kl.init_coef 0 \
  --rollout.n_samples_per_prompt 8 \
  --rollout.batch_size 128 --train.batch_size 1024 \
  --rollout.max_new_tokens 8192 --data.max_len 10240 \
  --actor.adam.lr 1e-6 \
  --ds.param_dtype bf16 --actor.gradient_checkpointing_enable \
  --ckpt.path runs/openrlhf-sleuth "$@"
