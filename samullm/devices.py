"""Binding an engine to a set of device ids, as environment variables for its worker process.

A device is a GPU on a GPU host and a CPU core (or a group of cores) on a CPU-only host, so the
planner and runtime work the same on both. An engine with tensor-parallel degree `tp` over `n`
devices gives each of its `tp` ranks `n / tp` devices, in order.

- GPU: `CUDA_VISIBLE_DEVICES` lists the device ids; vLLM numbers them 0..n-1 inside the process.
- CPU: `VLLM_CPU_OMP_THREADS_BIND` holds one core list per rank, joined by "|" ("0|1" is TP=2
  over cores 0 and 1). vLLM applies it itself only when it starts rank processes (TP > 1, the
  "mp" backend); an engine run inside the worker process (TP=1) is bound by the worker through
  the OpenMP variables below and the process's CPU affinity (`cpu_affinity`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from samullm.errors import UserInputError

DeviceKind = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class DeviceBinding:
    """What a worker process needs to run one engine on its devices."""

    kind: DeviceKind
    device_ids: tuple[int, ...]
    tensor_parallel_size: int
    rank_cores: tuple[tuple[int, ...], ...] = ()  # CPU only: the cores of each rank
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cpu_affinity(self) -> set[int] | None:
        """CPU: every core of the engine (the worker pins itself there); GPU: None."""
        if self.kind != "cpu":
            return None
        return {core for cores in self.rank_cores for core in cores}


def _core_list(cores: Sequence[int]) -> str:
    return ",".join(str(c) for c in cores)


def bind_devices(
    kind: DeviceKind,
    device_ids: Sequence[int],
    tensor_parallel_size: int,
    device_cores: Sequence[Sequence[int]] | None = None,
) -> DeviceBinding:
    """Environment binding `tensor_parallel_size` ranks to `device_ids`.

    device_cores (CPU only): the cores of each device id, indexed by id; default: device i is
    core i. Raises UserInputError when the devices cannot hold the TP degree.
    """
    ids = tuple(int(d) for d in device_ids)
    tp = int(tensor_parallel_size)
    if tp < 1:
        raise UserInputError(f"tensor_parallel_size must be at least 1, got {tp}")
    if not ids:
        raise UserInputError("no device ids given: an engine needs at least one device")
    if len(set(ids)) != len(ids):
        raise UserInputError(f"device ids {list(ids)} repeat an id")
    if tp > len(ids):
        raise UserInputError(
            f"tensor_parallel_size {tp} is larger than the {len(ids)} device(s) {list(ids)}; "
            f"give at least {tp} devices or lower the TP degree"
        )
    if len(ids) % tp:
        raise UserInputError(
            f"{len(ids)} devices {list(ids)} cannot be split evenly among {tp} TP ranks"
        )
    if kind == "gpu":
        if len(ids) != tp:
            raise UserInputError(
                f"a GPU engine with TP {tp} uses exactly {tp} GPUs; got {len(ids)}: {list(ids)}"
            )
        return DeviceBinding(
            kind="gpu",
            device_ids=ids,
            tensor_parallel_size=tp,
            env={"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in ids)},
        )
    if kind != "cpu":
        raise UserInputError(f"device kind must be 'cpu' or 'gpu', got {kind!r}")

    def cores_of(device: int) -> tuple[int, ...]:
        if device_cores is None:
            return (device,)
        if not 0 <= device < len(device_cores):
            raise UserInputError(
                f"CPU device {device} is not described: {len(device_cores)} device(s) known"
            )
        return tuple(int(c) for c in device_cores[device])

    per_rank = len(ids) // tp
    rank_cores = tuple(
        tuple(core for device in ids[r * per_rank : (r + 1) * per_rank] for core in cores_of(device))
        for r in range(tp)
    )
    all_cores = [core for cores in rank_cores for core in cores]
    if len(set(all_cores)) != len(all_cores):
        raise UserInputError(f"CPU devices {list(ids)} share cores: {all_cores}")
    usable = available_cpu_cores()
    missing = sorted(set(all_cores) - set(usable))
    if missing:
        raise UserInputError(
            f"CPU core(s) {missing} are not available to this process (usable cores: {usable})"
        )
    env = {"VLLM_CPU_OMP_THREADS_BIND": "|".join(_core_list(c) for c in rank_cores)}
    if tp == 1:
        # In-process engine: vLLM does not set these for the uniprocess executor.
        env |= {
            "OMP_NUM_THREADS": str(len(rank_cores[0])),
            "OMP_PLACES": "{" + _core_list(rank_cores[0]) + "}",
            "OMP_PROC_BIND": "true",
        }
    return DeviceBinding(
        kind="cpu", device_ids=ids, tensor_parallel_size=tp, rank_cores=rank_cores, env=env
    )


def available_cpu_cores() -> list[int]:
    """Cores this process may run on."""
    return sorted(os.sched_getaffinity(0))


def gpu_count() -> int:
    """GPUs pynvml sees (0 without a driver)."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class DeviceSet:
    """The devices an engine may be placed on: their kind and ids (and CPU cores per id)."""

    kind: DeviceKind
    device_ids: tuple[int, ...]
    device_cores: tuple[tuple[int, ...], ...] | None = None


def resolve_device_set(spec: str) -> DeviceSet:
    """"cpu" (each usable core a device), "gpu" (each GPU pynvml sees), or a node file.

    A node file is read by `costmodel.hardware.load_node_file`; its devices are numbered in
    order and, on CPU, device i is core i of this process's usable cores.
    """
    if spec == "cpu":
        cores = available_cpu_cores()
        return DeviceSet("cpu", tuple(range(len(cores))), tuple((c,) for c in cores))
    if spec == "gpu":
        count = gpu_count()
        if count == 0:
            raise UserInputError("--devices gpu: no GPU found (pynvml sees none); use --devices cpu")
        return DeviceSet("gpu", tuple(range(count)))
    if not os.path.isfile(spec):
        raise UserInputError(f"--devices {spec!r}: give 'cpu', 'gpu' or the path of a node file")
    from costmodel.hardware import load_node_file

    node = load_node_file(spec)
    kinds = {device.kind for device in node.devices}
    if len(kinds) != 1:
        raise UserInputError(f"node file {spec}: mixes device kinds {sorted(kinds)}")
    kind = kinds.pop()
    ids = tuple(range(len(node.devices)))
    if kind == "cpu":
        cores = available_cpu_cores()
        if len(ids) > len(cores):
            raise UserInputError(
                f"node file {spec}: {len(ids)} CPU devices but only {len(cores)} usable cores"
            )
        return DeviceSet("cpu", ids, tuple((c,) for c in cores[: len(ids)]))
    return DeviceSet("gpu", ids)
