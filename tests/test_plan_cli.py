"""`samullm plan` end to end on small applications (real cost model, shipped A100 figures)."""

from __future__ import annotations

import json

import pytest

from samullm.cli import main
from samullm.datasets import shared_data_dir

needs_shared = pytest.mark.skipif(
    not (shared_data_dir() / "traces").is_dir(), reason="the shared data folder is not on this machine"
)

APP = """
name: small-ensemble
dataset:
  rows:
    - {q: "", q_tokens: 120}
    - {q: "", q_tokens: 300}
    - {q: "", q_tokens: 80}
    - {q: "", q_tokens: 500}
  token_counts: {q: q_tokens}
nodes:
  - {name: vicuna, model: vicuna-13b-v1.5, prompt: "{{ q }}", sampling: {max_tokens: 128}}
  - {name: koala, model: koala-13B-HF, prompt: "{{ q }}", sampling: {max_tokens: 128}}
  - {name: judge, model: chatglm3-6b, prompt: "{{ q }} {{ vicuna }} {{ koala }}", sampling: {max_tokens: 16}}
"""


def write(tmp_path, text):
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return str(path)


def test_plan_prints_stages_and_writes_svg_and_json(tmp_path, capsys):
    app = write(tmp_path, APP)
    svg, js = tmp_path / "g.svg", tmp_path / "s.json"
    assert main(["plan", app, "--node", "a100-80gb-x2", "--svg", str(svg), "--json", str(js), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "judge" in out and "predicted makespan" in out
    assert svg.read_text().startswith("<svg")
    schedule = json.loads(js.read_text())
    assert schedule["stages"][-1]["nodes"][0]["node"] == "judge"
    assert schedule["makespan"] > 0


def test_plan_with_a_baseline(tmp_path, capsys):
    assert main(["plan", write(tmp_path, APP), "--node", "a100-80gb-x2", "--baseline", "sequential", "--samples", "1"]) == 0
    assert "sequential" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, message",
    [
        (APP.replace("{{ q }} {{ vicuna }}", "{{ question }} {{ vicuna }}"), "question"),
        (APP.replace("model: chatglm3-6b", "model: Llama-2-70b-chat-hf") + "# one device\n", "fits on no device set"),
        (APP.replace("sampling: {max_tokens: 16}", "plan: {tp: 2, dp: 2}"), "pinned plan"),
        ("dataset: {rows: []}\nnodes:\n  - {name: a, model: vicuna-13b-v1.5, prompt: hi}\n", "empty"),
        (APP.replace('model: vicuna-13b-v1.5, prompt: "{{ q }}"', 'model: vicuna-13b-v1.5, prompt: "{{ koala }}"')
            .replace('model: koala-13B-HF, prompt: "{{ q }}"', 'model: koala-13B-HF, prompt: "{{ vicuna }}"'), "cycle"),
        (APP.replace("{{ q }} {{ vicuna }} {{ koala }}", "{{ q }} {{ judge }}"), "its own output"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, text, message):
    node = "a100-80gb-x1" if "# one device" in text else "a100-80gb-x2"
    assert main(["plan", write(tmp_path, text), "--node", node]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unknown_node_preset(tmp_path, capsys):
    assert main(["plan", write(tmp_path, APP), "--node", "tpu-x9"]) == 2
    assert "preset" in capsys.readouterr().err


@needs_shared
def test_example_applications_load_and_resolve():
    from pathlib import Path

    from samullm.datasets import resolve
    from samullm.graph import load_application

    for path in sorted(Path(__file__).resolve().parents[1].joinpath("examples").glob("*.yaml")):
        resolve(load_application(path))


def test_gantt_svg_is_well_formed_and_draws_every_device():
    import xml.etree.ElementTree as ET

    from samullm.gantt import render_svg
    from samullm.schedule import Schedule, Stage, StageNode

    node = StageNode(node="a&b", model="m", tp=2, dp=1, devices=[0, 1], replicas=[[0, 1]], action="start",
                     load_seconds=3.0, requests_total=10, requests_done_before=0, requests_done_after=10, finishes=True)
    schedule = Schedule(application="app", node_spec="n", num_devices=4, method="samullm",
                        stages=[Stage(index=0, nodes=[node], start=0.0, end=12.0, end_std=1.5, ends_with="a&b")],
                        makespan=12.0)
    svg = render_svg(schedule)
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert sum(1 for t in texts if t and t.startswith("device ")) == 4
    assert any(t and "a&b" in t for t in texts)


@needs_shared
def test_bench_optimality_smoke(capsys):
    assert main(["bench", "optimality", "--instances", "2", "--max-nodes", "3", "--seed", "3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["instances"] == 2 and figures["max_gap"] >= 0.0


@needs_shared
def test_bench_planner_quick(capsys):
    assert main(["bench", "planner", "--quick"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {"workloads", "planning_seconds", "geomean_speedup_vs_best_baseline",
                            "min_speedup_vs_best_baseline", "geomean_speedup_vs_sequential", "lower_bounds",
                            "geomean_bound_vs_best_baseline", "geomean_bound_vs_sequential"}
    for name, row in figures["workloads"].items():
        assert row["samullm"] <= 1.01 * min(v for k, v in row.items() if k != "samullm")
        assert 0 < figures["lower_bounds"][name] <= min(row.values()) + 1e-6
