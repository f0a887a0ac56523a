import json
import os

import pytest

from costmodel.errors import UserInputError
from costmodel.hardware import (DeviceSpec, NodeSpec, cpu_node, discover_node, get_device_preset,
                                get_node_preset, interconnect_groups_from_links, load_node_file,
                                node_preset_names, resolve_node)


def test_paper_node_pairs_and_nvswitch_node():
    a100 = get_node_preset("a100-80gb-x8")
    assert a100.num_devices == 8
    assert a100.interconnect_groups == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert a100.connected([2, 3]) and not a100.connected([1, 2])
    assert a100.group_of(5) == (4, 5)
    device = a100.devices[0]
    assert device.kind == "gpu" and device.memory_bytes == 80 * 1024**3
    assert device.peak_flops == 312e12
    h100 = get_node_preset("h100-80gb-x8")
    assert h100.interconnect_groups == (tuple(range(8)),)
    assert h100.connected(range(8))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UserInputError) as err:
        get_node_preset("tpu-v5")
    assert "tpu-v5" in str(err.value)
    for name in node_preset_names():
        assert name in str(err.value)


def test_cpu_node_has_one_device_per_usable_core():
    node = cpu_node()
    cores = len(os.sched_getaffinity(0))
    assert node.num_devices == cores
    assert node.interconnect_groups == (tuple(range(cores)),)
    device = node.devices[0]
    assert device.kind == "cpu" and device.peak_flops > 0 and device.memory_bytes > 0


def test_device_preset_from_node_preset_name():
    assert get_device_preset("a100-80gb-x8") == get_device_preset("a100-80gb")


def test_groups_from_links_are_connected_components():
    pairs = {(0, 1), (2, 3)}
    assert interconnect_groups_from_links(5, lambda i, j: (i, j) in pairs) == ((0, 1), (2, 3), (4,))
    assert interconnect_groups_from_links(3, lambda i, j: True) == ((0, 1, 2),)


def test_node_file_json_and_yaml(tmp_path):
    description = {"name": "mixed", "devices": [{"preset": "a100-80gb", "count": 2},
                                                 {"name": "small", "kind": "gpu",
                                                  "memory_bytes": 24 * 1024**3,
                                                  "peak_flops": 1.2e14, "memory_bandwidth": 6e11}],
                   "interconnect_groups": [[0, 1]]}
    json_path = tmp_path / "node.json"
    json_path.write_text(json.dumps(description))
    node = load_node_file(json_path)
    assert node.num_devices == 3 and node.devices[2].name == "small"
    assert node.interconnect_groups == ((0, 1),)
    yaml_path = tmp_path / "node.yaml"
    yaml_path.write_text("name: mixed\ndevices:\n  - {preset: a100-80gb, count: 2}\n"
                         "  - {name: small, kind: gpu, memory_bytes: 25769803776, "
                         "peak_flops: 1.2e14, memory_bandwidth: 6.0e11}\n"
                         "interconnect_groups: [[0, 1]]\n")
    assert load_node_file(yaml_path) == node
    assert resolve_node(str(json_path)) == node


def test_bad_node_files(tmp_path):
    bad_field = tmp_path / "a.json"
    bad_field.write_text(json.dumps({"devices": [{"preset": "a100-80gb", "colour": "red"}]}))
    with pytest.raises(UserInputError, match="colour"):
        load_node_file(bad_field)
    bad_group = tmp_path / "b.json"
    bad_group.write_text(json.dumps({"devices": [{"preset": "a100-80gb"}], "interconnect_groups": [[0, 3]]}))
    with pytest.raises(UserInputError, match="out of range"):
        load_node_file(bad_group)
    with pytest.raises(UserInputError, match="must be positive"):
        DeviceSpec("x", "gpu", 0, 1.0, 1.0)
    with pytest.raises(UserInputError, match="no devices"):
        NodeSpec("empty", ())


def test_resolve_cpu_and_discovery_without_gpus():
    assert resolve_node("cpu") == cpu_node()
    assert resolve_node("a100-80gb-x4").num_devices == 4
    node = discover_node()
    if node.devices[0].kind == "cpu":  # this machine: no NVIDIA driver
        assert node == cpu_node()
        with pytest.raises(UserInputError, match="GPU"):
            resolve_node("gpu")
