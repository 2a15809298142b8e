"""GRPO with TRL on sleuth's agent, tools and reward.

    python configs/integrations/trl/train_grpo.py --model Qwen/Qwen2.5-0.5B-Instruct \
        --tasks runs/synth/tasks.jsonl --search-url http://127.0.0.1:8765 --config configs/integrations/trl/grpo.yaml

The rollouts are sleuth's loop (sleuth/integrations/trl_grpo.py); the reward is sleuth's judge with gamma-decay and
negative-sample control. tests/test_integration_trl.py runs the same pieces for two steps on a CPU.
"""

from __future__ import annotations

import argparse

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from sleuth.agent import AgentConfig, Environment
from sleuth.integrations.trl_grpo import SleuthReward, SleuthRollout, tasks_dataset
from sleuth.rewards import RewardConfig
from sleuth.tasks.judges import make_judge
from sleuth.tasks.loaders import load_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", required=True, help="benchmark name or task file (sleuth synth output)")
    ap.add_argument("--config", default="configs/integrations/trl/grpo.yaml")
    ap.add_argument("--search-url", default=None, help="a `sleuth serve-search` service (else --index locally)")
    ap.add_argument("--index", default=None)
    ap.add_argument("--max-steps", type=int, default=10, help="agent steps per trajectory")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="tokens per reply")
    ap.add_argument("--prompt", default="short-2shot")
    ap.add_argument("--negative-drop-frac", type=float, default=0.3)
    ap.add_argument("--gamma", type=float, default=0.9)
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = GRPOConfig(**yaml.safe_load(f))
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    env = Environment.create(args.index, search_url=args.search_url, tools=("search", "browse"))
    rollout = SleuthRollout(env, AgentConfig(max_steps=args.max_steps, max_new_tokens=args.max_new_tokens,
                                             prompt=args.prompt))
    reward = SleuthReward(make_judge("cover"), RewardConfig(require_evidence=True, gamma=args.gamma),
                          negative_drop_frac=args.negative_drop_frac, seed=cfg.seed)
    trainer = GRPOTrainer(model, reward_funcs=[reward], args=cfg, train_dataset=tasks_dataset(load_tasks(args.tasks)),
                          processing_class=tok, rollout_func=rollout)
    trainer.train()


if __name__ == "__main__":
    main()
