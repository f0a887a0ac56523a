"""Execution plans (TP degree x data-parallel replicas) and where they sit on a node's devices.

A plan runs `dp` replicas of one engine, each a tensor-parallel group of `tp` devices. Placement
is NVLink-aware: a TP group no larger than an interconnect group (NVLink-connected set) lies
inside one such set; a larger group takes whole sets (the A100 node's TP-4 spans two NVLink
pairs, which is how its TP-4 latencies were measured). Blocks are placed largest first, each in
the set whose free room fits it most tightly, so whole sets stay free for later large groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from samullm.errors import UserInputError
from samullm.graph import TP_DEGREES

Replicas = tuple[tuple[int, ...], ...]  # device ids of each replica's TP group


@dataclass(frozen=True, order=True)
class ExecPlan:
    tp: int
    dp: int = 1

    @property
    def num_devices(self) -> int:
        return self.tp * self.dp

    def __str__(self) -> str:
        return f"TP{self.tp}" if self.dp == 1 else f"TP{self.tp}xDP{self.dp}"


def enumerate_plans(num_devices: int, tp_degrees: Iterable[int] = TP_DEGREES) -> list[ExecPlan]:
    """Every (tp, dp) with tp in `tp_degrees` and tp*dp <= num_devices, fewest devices first."""
    plans = [ExecPlan(tp, dp) for tp in tp_degrees for dp in range(1, num_devices // tp + 1)]
    return sorted(plans, key=lambda p: (p.num_devices, p.tp))


@dataclass(frozen=True)
class Topology:
    """What placement needs of a node: its device count and NVLink-connected sets."""

    num_devices: int
    groups: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, num_devices: int, groups: Sequence[Sequence[int]] | None) -> Topology:
        if not groups:
            groups = [tuple(range(num_devices))]
        norm = tuple(tuple(sorted(g)) for g in groups)
        seen = [d for g in norm for d in g]
        if sorted(seen) != list(range(num_devices)):
            raise UserInputError(f"interconnect groups {norm} must cover devices 0..{num_devices - 1} once each")
        return cls(num_devices, norm)

    @property
    def max_group(self) -> int:
        return max(len(g) for g in self.groups)

    def group_of(self, device: int) -> int:
        for i, g in enumerate(self.groups):
            if device in g:
                return i
        raise UserInputError(f"device {device} is not on this node (0..{self.num_devices - 1})")

    def tp_possible(self, tp: int) -> bool:
        """A TP group of this size fits in one set or in a union of whole sets."""
        if tp <= self.max_group:
            return True
        return _whole_groups(self.groups, set(range(self.num_devices)), tp) is not None

    def valid_tp_group(self, devices: Sequence[int]) -> bool:
        """Inside one interconnect set, or exactly a union of whole sets."""
        devs = set(devices)
        touched = {self.group_of(d) for d in devs}
        if len(touched) == 1:
            return True
        return all(set(self.groups[g]) <= devs for g in touched)


def _whole_groups(groups, free: set[int], size: int) -> tuple[int, ...] | None:
    """Whole, fully free groups whose sizes add to `size` (smallest groups first)."""
    chosen: list[int] = []
    for g in sorted((g for g in groups if set(g) <= free), key=len):
        if len(chosen) + len(g) <= size:
            chosen.extend(g)
        if len(chosen) == size:
            return tuple(sorted(chosen))
    return None


def _place_block(topo: Topology, free: set[int], size: int) -> tuple[int, ...] | None:
    if size <= topo.max_group:
        best = None
        for g in topo.groups:
            room = [d for d in g if d in free]
            if len(room) >= size and (best is None or len(room) < len(best)):
                best = room
        return tuple(best[:size]) if best is not None else None
    return _whole_groups(topo.groups, free, size)


def place(
    topo: Topology,
    requests: Sequence[tuple[str, ExecPlan]],
    busy: Iterable[int] = (),
    prefer: dict[str, Replicas] | None = None,
) -> dict[str, Replicas] | None:
    """Devices for each (key, plan) among the devices not `busy`, or None if they do not fit.

    `prefer[key]` asks for exact devices (a warm engine, a pinned plan); it is honoured when those
    devices are free, else the key is placed like the others."""
    free = set(range(topo.num_devices)) - set(busy)
    out: dict[str, Replicas] = {}
    prefer = prefer or {}
    rest = []
    for key, plan in requests:
        want = prefer.get(key)
        if want is not None and all(set(r) <= free for r in want) and len({d for r in want for d in r}) == plan.num_devices:
            out[key] = want
            free -= {d for r in want for d in r}
        else:
            rest.append((key, plan))
    blocks = sorted(((plan.tp, key, i) for key, plan in rest for i in range(plan.dp)), key=lambda b: (-b[0], b[1], b[2]))
    placed: dict[str, list[tuple[int, ...]]] = {}
    for size, key, _ in blocks:
        devs = _place_block(topo, free, size)
        if devs is None:
            return None
        free -= set(devs)
        placed.setdefault(key, []).append(devs)
    for key, reps in placed.items():
        out[key] = tuple(sorted(reps))
    return out


def check_placement(topo: Topology, assignment: dict[str, Replicas]) -> None:
    """Raise if a device is double-booked or a TP group breaks the interconnect rule."""
    used: dict[int, str] = {}
    for key, replicas in assignment.items():
        for group in replicas:
            if not topo.valid_tp_group(group):
                raise AssertionError(f"{key}: TP group {group} splits an interconnect set {topo.groups}")
            for d in group:
                if d in used:
                    raise AssertionError(f"device {d} booked by both {used[d]} and {key}")
                if not 0 <= d < topo.num_devices:
                    raise AssertionError(f"{key}: device {d} is not on the node")
                used[d] = key


@dataclass(frozen=True)
class MemoryFit:
    """Whether a plan's replica holds the weights plus a useful KV cache.

    kv_tokens: KV-cache tokens one replica can hold at the memory fraction; useful means at
    least `min_kv_tokens` (one maximum-length request)."""

    kv_tokens: int
    min_kv_tokens: int

    @property
    def fits(self) -> bool:
        return self.kv_tokens >= self.min_kv_tokens
