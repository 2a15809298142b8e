"""Reinforcement learning: the REINFORCE update, partial-rollout replay buffer, checkpoints, a toy task.

The rollout side (agent loop) and the update side meet at one boundary: groups of finished ``Trajectory``
records, each scored by ``sleuth.rewards`` (its ``judgement``), go into ``ReinforceTrainer.step``; new weights
(in place) and a new weight version come out.
"""

from .buffer import ReplayBuffer
from .config import TrainConfig, load_config
from .reinforce import Group, ReinforceTrainer

__all__ = ["ReinforceTrainer", "Group", "ReplayBuffer", "TrainConfig", "load_config"]
