"""Rollout: the current policy and live tools turn tasks into judged groups of trajectories.

This side only samples. It exchanges exactly two things with the update side: trajectories (with their
judgement) going out, and the weight version of the policy that sampled them. That boundary is what lets
rollouts move to remote workers with a serving engine later without touching the objective.

Partial rollout: each iteration has a budget (seconds and/or generated tokens). Trajectories still running
when it is spent are parked in the replay buffer with their resume state and continue first in the next
iteration, under the newer weights; their finished siblings wait with them so a group is always trained
whole.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from sleuth.agent import Agent, AgentConfig, Budget, Environment, ResumeState
from sleuth.rewards import RewardConfig, judge_trajectory
from sleuth.rl.buffer import ReplayBuffer
from sleuth.tasks.task import Task
from sleuth.trajectory import Trajectory

# Single-hop first, then two-hop, then compositional: a simple difficulty order for the curriculum.
DIFFICULTY = {"nq": 0, "hotpotqa": 1, "2wikimultihopqa": 2, "2wiki": 2, "musique": 3}


def curriculum_order(tasks: list[Task], seed: int, curriculum: bool) -> list[Task]:
    """Shuffle with the seed; with a curriculum, stable-sort by difficulty (easy tasks first)."""
    order = list(tasks)
    random.Random(seed).shuffle(order)
    if curriculum:
        def level(t: Task) -> int:
            src = t.metadata.get("source_dataset") or t.dataset.replace("dev-", "")
            hops = t.metadata.get("hops")
            return int(hops) - 1 if isinstance(hops, int) else DIFFICULTY.get(src, 1)
        order.sort(key=level)
    return order


@dataclass
class RolloutStats:
    seconds: float = 0.0
    generated_tokens: int = 0
    resumed: int = 0
    parked: int = 0
    evicted: int = 0
    finished: int = 0


class AgentRollout:
    def __init__(self, policy, env: Environment, agent_cfg: AgentConfig, tasks: list[Task], judge,
                 reward: RewardConfig):
        self.policy, self.env, self.judge, self.reward = policy, env, judge, reward
        self.agent = Agent(policy, env, agent_cfg)
        self.tasks = tasks

    def task(self, cursor: int) -> Task:
        return self.tasks[cursor % len(self.tasks)]

    def score(self, traj: Trajectory) -> Trajectory:
        """Judge and reward a finished trajectory against its task's gold answers (``sleuth.rewards``)."""
        judge_trajectory(traj, traj.gold, self.judge, self.reward)
        return traj

    def collect(self, buffer: ReplayBuffer, cursor: int, n_tasks: int, group_size: int,
                budget: Budget | None = None) -> tuple[list[list[Trajectory]], int, RolloutStats]:
        t0 = time.time()
        stats = RolloutStats()
        stats.evicted = len(buffer.evict(self.policy.version))
        resumed = [(e.traj, e.state) for e in buffer.pop_resumable()]
        stats.resumed = len(resumed)
        fresh = [(self.task(cursor + k), f"{cursor + k}", j) for k in range(n_tasks) for j in range(group_size)]
        cursor += n_tasks
        ran = self.agent.run_partial([task.question for task, _, _ in fresh], [task.id for task, _, _ in fresh],
                                     resume=resumed, budget=budget)
        for (t, _), (task, group, member) in zip(ran, fresh):
            t.gold, t.dataset, t.group, t.member = list(task.answers), task.dataset, group, member
        stats.generated_tokens = sum(t.generated_tokens for t, _ in ran)

        members: dict[str, list[tuple[Trajectory, ResumeState | None]]] = {}
        for t, state in ran:
            members.setdefault(t.group, []).append((t, state))
        groups = []
        for g, ts in members.items():
            done = ts + [(t, None) for t in buffer.pop_group(g)]
            if all(t.finished for t, _ in done):
                groups.append([self.score(t) for t, _ in sorted(done, key=lambda ts: ts[0].member)])
                stats.finished += len(done)
                continue
            for t, state in done:
                if t.finished:
                    buffer.hold(t, g, self.policy.version)
                else:
                    if state is None:
                        raise ValueError(f"trajectory {t.id} stopped unfinished without a resume state "
                                         "(partial rollout needs a token policy)")
                    buffer.add(t, state, self.policy.version, group=g)
                    stats.parked += 1
        stats.seconds = time.time() - t0
        return groups, cursor, stats
