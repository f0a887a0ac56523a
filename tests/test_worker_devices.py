import os

import pytest

from samullm.devices import available_cpu_cores, bind_devices, resolve_device_set
from samullm.errors import UserInputError

needs_two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores"
)


def test_cpu_tp1_one_core_binds_openmp_and_affinity():
    core = available_cpu_cores()[0]
    binding = bind_devices("cpu", [core], 1)
    assert binding.env == {
        "VLLM_CPU_OMP_THREADS_BIND": str(core),
        "OMP_NUM_THREADS": "1",
        "OMP_PLACES": "{%d}" % core,
        "OMP_PROC_BIND": "true",
    }
    assert binding.cpu_affinity == {core}


@needs_two_cores
def test_cpu_tp2_gives_one_core_list_per_rank():
    a, b = available_cpu_cores()[:2]
    binding = bind_devices("cpu", [a, b], 2)
    assert binding.env == {"VLLM_CPU_OMP_THREADS_BIND": f"{a}|{b}"}  # vLLM binds its ranks
    assert binding.rank_cores == ((a,), (b,))
    assert binding.cpu_affinity == {a, b}


@needs_two_cores
def test_cpu_tp1_over_two_devices_uses_both_cores_in_one_rank():
    a, b = available_cpu_cores()[:2]
    binding = bind_devices("cpu", [0, 1], 1, device_cores=[[a], [b]])
    assert binding.env["VLLM_CPU_OMP_THREADS_BIND"] == f"{a},{b}"
    assert binding.env["OMP_NUM_THREADS"] == "2"


def test_gpu_binding_is_cuda_visible_devices():
    binding = bind_devices("gpu", [2, 3], 2)
    assert binding.env == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert binding.cpu_affinity is None


@pytest.mark.parametrize(
    "kind, ids, tp, words",
    [
        ("cpu", [0], 2, "larger than the 1 device"),
        ("gpu", [0, 1], 4, "larger than the 2 device"),
        ("cpu", [0, 1, 2], 2, "split evenly"),
        ("gpu", [0, 1], 1, "exactly 1 GPUs"),
        ("cpu", [0, 0], 1, "repeat"),
        ("cpu", [], 1, "no device ids"),
        ("cpu", [0], 0, "at least 1"),
        ("tpu", [0], 1, "'cpu' or 'gpu'"),
        ("cpu", [10_000], 1, "not available"),
    ],
)
def test_impossible_bindings_are_refused(kind, ids, tp, words):
    with pytest.raises(UserInputError, match=words):
        bind_devices(kind, ids, tp)


def test_cpu_device_set_has_one_device_per_usable_core():
    devices = resolve_device_set("cpu")
    cores = available_cpu_cores()
    assert devices.kind == "cpu"
    assert devices.device_ids == tuple(range(len(cores)))
    assert devices.device_cores == tuple((c,) for c in cores)


def test_unknown_device_spec_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="'cpu', 'gpu'"):
        resolve_device_set(str(tmp_path / "missing.yaml"))
