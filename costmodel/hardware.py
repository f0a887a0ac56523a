"""The devices a node offers: memory, peak matmul FLOP/s, memory bandwidth, and which devices
are connected closely enough (NVLink) for one tensor-parallel group to span them.

A node comes from a preset (`get_node_preset`), from pynvml (`discover_node`), from a JSON or
YAML file (`load_node_file`), or from one string naming any of those (`resolve_node`). Without
GPUs each CPU core is a device, so the planner and runtime work the same way on a CPU machine.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from costmodel.errors import UserInputError

GiB = 1024**3


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator (or one CPU core). `peak_flops` is dense fp16/bf16 matmul throughput;
    `interconnect_bandwidth` the one-direction bytes/s of its fast link (0 when none)."""

    name: str
    kind: str  # "gpu" | "cpu"
    memory_bytes: int
    peak_flops: float
    memory_bandwidth: float
    interconnect_bandwidth: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise UserInputError(f"device {self.name!r}: kind must be 'gpu' or 'cpu', not {self.kind!r}")
        for attr in ("memory_bytes", "peak_flops", "memory_bandwidth"):
            if not getattr(self, attr) > 0:
                raise UserInputError(f"device {self.name!r}: {attr} must be positive")


@dataclass(frozen=True)
class NodeSpec:
    """Devices of one machine, numbered 0..n-1, and the device sets inside which a
    tensor-parallel group may sit (NVLink-connected; a CPU's cores share memory)."""

    name: str
    devices: tuple[DeviceSpec, ...]
    interconnect_groups: tuple[tuple[int, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.devices:
            raise UserInputError(f"node {self.name!r} has no devices")
        seen: set[int] = set()
        for group in self.interconnect_groups:
            for device_id in group:
                if not 0 <= device_id < len(self.devices) or device_id in seen:
                    raise UserInputError(
                        f"node {self.name!r}: interconnect group {list(group)} names device "
                        f"{device_id}, which is out of range 0..{len(self.devices) - 1} or in "
                        f"two groups")
                seen.add(device_id)

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def group_of(self, device_id: int) -> tuple[int, ...]:
        """The interconnect group holding `device_id` (the device alone when in none)."""
        for group in self.interconnect_groups:
            if device_id in group:
                return group
        return (device_id,)

    def connected(self, device_ids) -> bool:
        """Whether these devices all sit inside one interconnect group."""
        ids = set(device_ids)
        return len(ids) <= 1 or any(ids <= set(group) for group in self.interconnect_groups)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "devices": [asdict(d) for d in self.devices],
                "interconnect_groups": [list(g) for g in self.interconnect_groups]}


# ---- presets ------------------------------------------------------------------------------------
# Vendor datasheet figures: A100 SXM4 80GB (312 TFLOP/s dense fp16, 2.039 TB/s HBM2e, NVLink3
# 300 GB/s each way); H100 SXM5 80GB (989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink4 450 GB/s).
DEVICE_PRESETS: dict[str, DeviceSpec] = {
    "a100-80gb": DeviceSpec("a100-80gb", "gpu", 80 * GiB, 312e12, 2.039e12, 300e9),
    "a100-40gb": DeviceSpec("a100-40gb", "gpu", 40 * GiB, 312e12, 1.555e12, 300e9),
    "h100-80gb": DeviceSpec("h100-80gb", "gpu", 80 * GiB, 989e12, 3.35e12, 450e9),
    "l40s-48gb": DeviceSpec("l40s-48gb", "gpu", 48 * GiB, 362e12, 0.864e12, 0.0),
    "a10-24gb": DeviceSpec("a10-24gb", "gpu", 24 * GiB, 125e12, 0.6e12, 0.0),
}

# Substrings of pynvml device names -> device preset.
_GPU_NAMES = [("H100", "h100-80gb"), ("A100-SXM4-80GB", "a100-80gb"), ("A100 80GB", "a100-80gb"),
              ("A100-PCIE-80GB", "a100-80gb"), ("A100", "a100-40gb"), ("L40S", "l40s-48gb"),
              ("A10", "a10-24gb")]


def _gpu_node(name: str, device: str, count: int, groups: list[tuple[int, ...]]) -> NodeSpec:
    return NodeSpec(name, (DEVICE_PRESETS[device],) * count, tuple(groups))


def _pairs(count: int) -> list[tuple[int, ...]]:
    return [(i, i + 1) for i in range(0, count, 2)]


_NODE_BUILDERS: dict[str, Callable[[], NodeSpec]] = {
    # The SamuLLM paper's node: 8 A100-80GB, NVLink connecting GPUs in pairs.
    "a100-80gb-x8": lambda: _gpu_node("a100-80gb-x8", "a100-80gb", 8, _pairs(8)),
    "a100-80gb-x4": lambda: _gpu_node("a100-80gb-x4", "a100-80gb", 4, _pairs(4)),
    "a100-80gb-x2": lambda: _gpu_node("a100-80gb-x2", "a100-80gb", 2, _pairs(2)),
    "a100-80gb-x1": lambda: _gpu_node("a100-80gb-x1", "a100-80gb", 1, [(0,)]),
    # NVSwitch: every GPU reaches every other at full NVLink bandwidth.
    "h100-80gb-x8": lambda: _gpu_node("h100-80gb-x8", "h100-80gb", 8, [tuple(range(8))]),
    "h100-80gb-x4": lambda: _gpu_node("h100-80gb-x4", "h100-80gb", 4, [tuple(range(4))]),
    "h100-80gb-x2": lambda: _gpu_node("h100-80gb-x2", "h100-80gb", 2, [(0, 1)]),
    "h100-80gb-x1": lambda: _gpu_node("h100-80gb-x1", "h100-80gb", 1, [(0,)]),
    "cpu": lambda: cpu_node(),
}


def node_preset_names() -> list[str]:
    return list(_NODE_BUILDERS)


def get_node_preset(name: str) -> NodeSpec:
    """A named node: 'a100-80gb-x8' (the paper's), 'h100-80gb-x8', 'cpu' (this machine), ..."""
    builder = _NODE_BUILDERS.get(name)
    if builder is None:
        raise UserInputError(
            f"unknown node preset {name!r}; presets: {', '.join(_NODE_BUILDERS)} "
            f"(or give a node file, 'gpu' or 'cpu')")
    return builder()


def get_device_preset(name: str) -> DeviceSpec:
    """A named device ('a100-80gb', ...) or the device of a node preset ('a100-80gb-x8')."""
    if name in DEVICE_PRESETS:
        return DEVICE_PRESETS[name]
    if name in _NODE_BUILDERS:
        return get_node_preset(name).devices[0]
    raise UserInputError(
        f"unknown device {name!r}; devices: {', '.join(DEVICE_PRESETS)}, or a node preset: "
        f"{', '.join(_NODE_BUILDERS)}")


# ---- this machine's CPU -------------------------------------------------------------------------
# Peak bf16/fp32 matmul FLOPs per cycle per core by the widest instructions the core has.
# AMX: 1024 bf16 FLOP/cycle; AVX-512 BF16 dot products: 2 units x 32 pairs x 2; AVX-512 FMA:
# 2 x 16 fp32 x 2; AVX2 FMA: 2 x 8 x 2.
_FLOPS_PER_CYCLE = [("amx_bf16", 1024.0), ("avx512_bf16", 128.0), ("avx512f", 64.0),
                    ("avx2", 32.0)]
# Sustained DRAM bandwidth one core can draw; not readable from /proc, so a nominal figure
# (override it with a node file after measuring, e.g. with a STREAM run).
CPU_CORE_BANDWIDTH = 12e9


def _cpuinfo() -> tuple[set[str], float]:
    flags: set[str] = set()
    mhz = 0.0
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return flags, 2000.0
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    if match:
        flags = set(match.group(1).split())
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE)
    if match:
        mhz = float(match.group(1))
    return flags, mhz or 2000.0


def _mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_device_spec(num_cores: int | None = None) -> DeviceSpec:
    """One core of this machine as a device: an equal share of RAM, its peak FLOP/s from the
    instruction set and clock in /proc/cpuinfo, and a nominal per-core memory bandwidth."""
    cores = num_cores or len(os.sched_getaffinity(0))
    flags, mhz = _cpuinfo()
    per_cycle = next((f for flag, f in _FLOPS_PER_CYCLE if flag in flags), 16.0)
    return DeviceSpec("cpu-core", "cpu", _mem_total_bytes() // cores, per_cycle * mhz * 1e6,
                      CPU_CORE_BANDWIDTH, 0.0)


def cpu_node() -> NodeSpec:
    """This machine with each usable core as a device; all cores share memory (one group)."""
    cores = len(os.sched_getaffinity(0))
    return NodeSpec("cpu", (cpu_device_spec(cores),) * cores, (tuple(range(cores)),))


# ---- GPUs through pynvml ------------------------------------------------------------------------

def interconnect_groups_from_links(num_devices: int, linked: Callable[[int, int], bool]
                                   ) -> tuple[tuple[int, ...], ...]:
    """Connected components of the device graph whose edges are `linked(i, j)` (NVLink P2P)."""
    parent = list(range(num_devices))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(num_devices):
        for j in range(i + 1, num_devices):
            if linked(i, j):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(num_devices):
        groups.setdefault(root(i), []).append(i)
    return tuple(tuple(g) for g in sorted(groups.values()))


def _gpu_device(handle, pynvml) -> DeviceSpec:
    name = pynvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else str(name)
    memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    preset = next((DEVICE_PRESETS[p] for key, p in _GPU_NAMES if key in name), None)
    if preset is None:
        raise UserInputError(
            f"GPU {name!r} has no known peak FLOP/s; describe the node in a file "
            f"(see costmodel.hardware.load_node_file) and pass its path")
    bandwidth = preset.memory_bandwidth
    try:  # bus width (bits) x max memory clock (MHz) x 2 transfers per clock
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        bandwidth = bus_bits / 8 * clock_mhz * 1e6 * 2
    except pynvml.NVMLError:
        pass
    return replace(preset, name=preset.name, memory_bytes=memory, memory_bandwidth=bandwidth)


def discover_node(require_gpu: bool = False) -> NodeSpec:
    """The GPUs pynvml sees, grouped by NVLink peer-to-peer reachability; without GPUs (or
    without the NVIDIA driver) this machine's CPU cores, unless `require_gpu`."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as err:  # no driver / library: a CPU machine
        if require_gpu:
            raise UserInputError(f"no NVIDIA GPU found ({err}); use 'cpu' or a node file") from err
        return cpu_node()
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            if require_gpu:
                raise UserInputError("pynvml sees no GPU; use 'cpu' or a node file")
            return cpu_node()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        devices = tuple(_gpu_device(h, pynvml) for h in handles)

        def linked(i: int, j: int) -> bool:
            try:
                status = pynvml.nvmlDeviceGetP2PStatus(handles[i], handles[j],
                                                       pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
                return status == pynvml.NVML_P2P_STATUS_OK
            except pynvml.NVMLError:
                return False

        groups = interconnect_groups_from_links(count, linked)
        return NodeSpec(f"gpu-{devices[0].name}-x{count}", devices, groups)
    finally:
        pynvml.nvmlShutdown()


# ---- node files ---------------------------------------------------------------------------------

def load_node_file(path: str | os.PathLike) -> NodeSpec:
    """A node described in JSON or YAML:

        name: my-node
        devices:
          - {preset: a100-80gb, count: 4}            # a preset, fields may be overridden
          - {name: x, kind: gpu, memory_bytes: 25769803776, peak_flops: 1.2e14,
             memory_bandwidth: 6.0e11, count: 2}
        interconnect_groups: [[0, 1], [2, 3]]        # default: each device alone
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserInputError(f"cannot read node file {str(path)!r}: {err}") from err
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # a project dependency; imported only for YAML node files

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:
        raise UserInputError(f"node file {str(path)!r} is not valid JSON/YAML: {err}") from err
    return node_from_dict(data, default_name=path.stem)


def node_from_dict(data: dict[str, Any], default_name: str = "node") -> NodeSpec:
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise UserInputError(f"node {default_name!r}: expected a mapping with a 'devices' list")
    devices: list[DeviceSpec] = []
    known = {"name", "kind", "memory_bytes", "peak_flops", "memory_bandwidth",
             "interconnect_bandwidth"}
    for entry in data["devices"]:
        entry = dict(entry)
        count = int(entry.pop("count", 1))
        preset = entry.pop("preset", None)
        unknown = set(entry) - known
        if unknown:
            raise UserInputError(
                f"node {default_name!r}: unknown device fields {sorted(unknown)}; allowed: "
                f"preset, count, {', '.join(sorted(known))}")
        try:
            for key in ("peak_flops", "memory_bandwidth", "interconnect_bandwidth"):
                if key in entry:  # YAML reads 1.2e14 as a string
                    entry[key] = float(entry[key])
            if "memory_bytes" in entry:
                entry["memory_bytes"] = int(float(entry["memory_bytes"]))
            if preset is not None:
                device = replace(get_device_preset(preset), **entry)
            else:
                device = DeviceSpec(**entry)
        except (TypeError, ValueError) as err:
            raise UserInputError(f"node {default_name!r}: device {entry}: {err}") from err
        devices.extend([device] * count)
    groups = tuple(tuple(int(i) for i in g) for g in data.get("interconnect_groups", []))
    return NodeSpec(str(data.get("name", default_name)), tuple(devices), groups)


def resolve_node(spec: str) -> NodeSpec:
    """A node from a preset name, a node file path, 'gpu' (pynvml discovery, GPUs required) or
    'cpu' (this machine's cores)."""
    if spec == "gpu":
        return discover_node(require_gpu=True)
    if spec == "cpu":
        return cpu_node()
    if spec in _NODE_BUILDERS:
        return get_node_preset(spec)
    if Path(spec).is_file():
        return load_node_file(spec)
    return get_node_preset(spec)  # raises, listing the presets
