"""Partial-rollout replay buffer.

A rollout that is still running when an iteration's budget is spent is not thrown away: it is parked here
(``finish_reason == 'unfinished'``) with whatever the rollout side needs to continue it (``state``, an opaque
JSON-serialisable dict), and handed back FIRST next iteration, when it continues under the new weights. Its
tokens then carry two or more weight versions; the objective deals with the older ones (see reinforce.py).

A group (attempts at one task) is trained only when all its members are finished, so finished siblings of an
unfinished trajectory wait here too (``hold``) and are released with ``pop_group``.

Entries older than ``max_age`` weight versions (age = current version − oldest sampled token's version) are
evicted with their whole group: continuing them would train on very stale samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..trajectory import Trajectory


@dataclass
class Entry:
    traj: Trajectory
    state: dict[str, Any] | None    # resume state for an unfinished run; None for a finished, waiting sibling
    group: str                      # key shared by the attempts at one task
    added_version: int              # trainer version when parked

    def oldest_version(self) -> int:
        v = self.traj.versions
        return min(v) if v else self.added_version

    def to_dict(self) -> dict[str, Any]:
        return {"traj": self.traj.to_dict(), "state": self.state, "group": self.group,
                "added_version": self.added_version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Entry":
        return cls(Trajectory.from_dict(d["traj"]), d["state"], d["group"], int(d["added_version"]))


@dataclass
class ReplayBuffer:
    max_age: int = 2
    """Evict entries whose oldest sampled token is more than this many versions old."""
    entries: list[Entry] = field(default_factory=list)

    # ------------------------------------------------------------------ adding
    def add(self, traj: Trajectory, state: dict[str, Any], version: int, group: str = "") -> None:
        """Park an unfinished trajectory with the state needed to resume it."""
        if traj.finish_reason != "unfinished":
            raise ValueError(f"only unfinished trajectories are resumable (got {traj.finish_reason!r}); "
                             "use hold() for finished siblings")
        if not isinstance(state, dict):
            raise TypeError("resume state must be a dict")
        try:
            json.dumps(state)
        except (TypeError, ValueError) as e:
            raise ValueError(f"resume state must be JSON-serialisable (it is saved in checkpoints): {e}") from None
        self.entries.append(Entry(traj, state, group, int(version)))

    def hold(self, traj: Trajectory, group: str, version: int) -> None:
        """Keep a finished trajectory until the rest of its group has finished."""
        if not traj.finished:
            raise ValueError("hold() is for finished trajectories; use add() for unfinished ones")
        self.entries.append(Entry(traj, None, group, int(version)))

    # ---------------------------------------------------------------- taking
    def pop_resumable(self, limit: int | None = None) -> list[Entry]:
        """Unfinished entries, oldest first (all of them, or at most ``limit``); removed from the buffer."""
        todo = sorted((e for e in self.entries if e.state is not None), key=lambda e: e.added_version)
        todo = todo if limit is None else todo[:limit]
        ids = {id(e) for e in todo}
        self.entries = [e for e in self.entries if id(e) not in ids]
        return todo

    def pop_group(self, group: str) -> list[Trajectory]:
        """Finished siblings waiting for ``group``; removed from the buffer."""
        out = [e.traj for e in self.entries if e.group == group and e.state is None]
        self.entries = [e for e in self.entries if not (e.group == group and e.state is None)]
        return out

    def evict(self, current_version: int) -> list[Entry]:
        """Drop (and return) entries older than ``max_age`` versions, together with their groups."""
        stale_groups = {e.group for e in self.entries if current_version - e.oldest_version() > self.max_age}
        out = [e for e in self.entries if e.group in stale_groups]
        self.entries = [e for e in self.entries if e.group not in stale_groups]
        return out

    # ----------------------------------------------------------------- info
    def __len__(self) -> int:
        return len(self.entries)

    def stats(self, current_version: int) -> dict[str, float]:
        ages = [current_version - e.oldest_version() for e in self.entries]
        return {
            "size": float(len(self.entries)),
            "unfinished": float(sum(e.state is not None for e in self.entries)),
            "held": float(sum(e.state is None for e in self.entries)),
            "groups": float(len({e.group for e in self.entries})),
            "age_max": float(max(ages, default=0)),
            "age_mean": float(sum(ages) / len(ages)) if ages else 0.0,
        }

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {"max_age": self.max_age, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReplayBuffer":
        return cls(max_age=int(d.get("max_age", 2)), entries=[Entry.from_dict(e) for e in d.get("entries", [])])
