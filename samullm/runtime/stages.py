"""Actual stages as they ran: a stage is a period during which the set of a run's engines is
constant. The tracker says when that set changed, so that the runner closes the stage in the
store and opens the next (or only closes it, when nothing of the run runs any more)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class StageMember:
    """One launch of a node: what the UI draws as a bar of an actual stage."""

    node: str
    tp: int
    dp: int
    devices: tuple[int, ...]
    node_run_id: int

    def as_dict(self) -> dict:
        return {"node": self.node, "tp": self.tp, "dp": self.dp, "devices": list(self.devices),
                "node_run_id": self.node_run_id}


class StageTracker:
    def __init__(self) -> None:
        self.current: frozenset[StageMember] = frozenset()

    def update(self, members: Iterable[StageMember]) -> tuple[str, list[StageMember]] | None:
        """("open", members) when the set changed and is not empty, ("close", []) when it
        became empty, None when unchanged."""
        now = frozenset(members)
        if now == self.current:
            return None
        self.current = now
        if not now:
            return ("close", [])
        return ("open", sorted(now))
