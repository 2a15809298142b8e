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

from sleuth.agent import Agent, AgentConfig, Budget, Environment
from sleuth.tasks.task import Task
from sleuth.rewards import grounded
from sleuth.rl.buffer import ReplayBuffer
from sleuth.rl.reinforce import Scored
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
                 require_evidence: bool = False):
        self.policy, self.env, self.judge = policy, env, judge
        self.require_evidence = require_evidence
        self.agent = Agent(policy, env, agent_cfg)
        self.tasks = tasks

    def task(self, cursor: int) -> Task:
        return self.tasks[cursor % len(self.tasks)]

    def score(self, traj: Trajectory) -> Scored:
        gold = traj.meta["gold"]
        v = self.judge.judge(traj.question, traj.answer, gold)
        shown = grounded(traj)
        ok = shown or not self.require_evidence     # an answer nobody showed the agent earns nothing
        traj.meta["verdict"] = {"em": v.em, "f1": v.f1, "cover": v.cover, "correct": v.correct, "grounded": shown}
        return Scored(traj, bool(v.correct) and ok, f1=float(v.f1) if ok else 0.0)

    def collect(self, buffer: ReplayBuffer, cursor: int, n_tasks: int, group_size: int,
                budget: Budget | None = None) -> tuple[list[list[Scored]], int, RolloutStats]:
        t0 = time.time()
        stats = RolloutStats()
        stats.evicted = len(buffer.evict(self.policy.version))
        resumed = []
        for e in buffer.pop_resumable():
            e.traj.meta["resume"] = e.state
            resumed.append(e.traj)
        stats.resumed = len(resumed)
        questions, ids, metas = [], [], []
        for k in range(n_tasks):
            task = self.task(cursor + k)
            for j in range(group_size):
                questions.append(task.question)
                ids.append(task.id)
                metas.append({"group": f"{cursor + k}", "member": j, "gold": task.answers,
                              "dataset": task.dataset})
        cursor += n_tasks
        fresh_n = len(questions)
        trajs = self.agent.run_batch(questions, ids, resume=resumed, budget=budget)
        for t, m in zip(trajs[:fresh_n], metas):
            t.meta.update(m)
        stats.generated_tokens = sum(t.generated_tokens for t in trajs)

        members: dict[str, list[Trajectory]] = {}
        for t in trajs:
            members.setdefault(t.meta["group"], []).append(t)
        groups = []
        for g, ts in members.items():
            done = ts + buffer.pop_group(g)
            if all(t.finished for t in done):
                groups.append([self.score(t) for t in sorted(done, key=lambda t: t.meta["member"])])
                stats.finished += len(done)
                continue
            for t in done:
                if t.finished:
                    buffer.hold(t, g, self.policy.version)
                else:
                    buffer.add(t, t.meta.pop("resume"), self.policy.version, group=g)
                    stats.parked += 1
        stats.seconds = time.time() - t0
        return groups, cursor, stats
