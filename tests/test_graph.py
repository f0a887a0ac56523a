"""Application graph: building, loading, edges, and bad input caught before planning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from samullm.datasets import resolve
from samullm.errors import UserInputError
from samullm.graph import Application, application_from_dict, load_application
from samullm.workloads import Workloads, static_prompt_tokens


def ensemble_dict(**over):
    data = {
        "name": "ens",
        "dataset": {"rows": [{"question": "What is 2+2?"}, {"question": "Name a colour."}]},
        "nodes": [
            {"name": "a", "model": "vicuna-13b-v1.5", "prompt": "Q: {{ question }}"},
            {"name": "b", "model": "koala-13B-HF", "prompt": "Q: {{ question }}"},
            {"name": "judge", "model": "chatglm3-6b", "prompt": "Q: {{ question }}\n1: {{ a }}\n2: {{ b }}\nBest?"},
        ],
    }
    data.update(over)
    return data


def test_edges_follow_template_references():
    app = application_from_dict(ensemble_dict())
    assert app.upstream("judge") == ["a", "b"]
    assert app.upstream("a") == []
    assert app.downstream("a") == ["judge"]
    order = app.topological_order()
    assert order.index("judge") > order.index("a") and order.index("judge") > order.index("b")


def test_round_trips_through_json():
    app = application_from_dict(ensemble_dict())
    again = Application.model_validate_json(app.model_dump_json())
    assert again == app


def test_loads_yaml_and_resolves_relative_paths(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"question": "hi"}\n{"question": "there"}\n')
    (tmp_path / "app.yaml").write_text(
        "name: y\ndataset: {path: rows.jsonl}\nnodes:\n  - {name: a, model: vicuna-13b-v1.5, prompt: '{{ question }}'}\n"
    )
    app = load_application(tmp_path / "app.yaml")
    resolved = resolve(app)
    assert len(resolved.data["default"].rows) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"nodes": [{"name": "a", "model": "m", "prompt": "{{ b }}", "depends_on": ["b"]},
                    {"name": "b", "model": "m", "prompt": "{{ a }}"}]}, "cycle"),
        ({"nodes": [{"name": "a", "model": "m", "prompt": "x", "depends_on": ["ghost"]}]}, "unknown node 'ghost'"),
        ({"nodes": [{"name": "a", "model": "m", "prompt": "{{ x "}]}, "syntax"),
        ({"nodes": [{"name": "a", "model": "m", "prompt": "x"}, {"name": "a", "model": "m", "prompt": "y"}]}, "repeat"),
        ({"nodes": [{"name": "a", "model": "m", "prompt": "x", "plan": {"tp": 3}}]}, "tp must be one of"),
    ],
)
def test_structural_errors_name_the_problem(change, message):
    with pytest.raises(UserInputError, match=message):
        application_from_dict(ensemble_dict(**change))


def test_template_naming_a_missing_column_is_refused():
    data = ensemble_dict(nodes=[{"name": "a", "model": "m", "prompt": "{{ qestion }}"}])
    with pytest.raises(UserInputError, match="qestion"):
        resolve(application_from_dict(data))


def test_empty_dataset_is_refused():
    data = ensemble_dict(dataset={"rows": []})
    with pytest.raises(UserInputError, match="empty"):
        resolve(application_from_dict(data))


def test_node_named_like_a_column_is_refused():
    data = ensemble_dict(nodes=[{"name": "question", "model": "m", "prompt": "x"}])
    with pytest.raises(UserInputError, match="named like nodes"):
        resolve(application_from_dict(data))


def test_missing_application_file(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_application(tmp_path / "nope.yaml")


def test_where_filter_and_routes_select_rows():
    data = {
        "dataset": {"rows": [{"chunks": ["a"]}, {"chunks": ["a", "b"]}, {"chunks": ["a", "b", "c"]}]},
        "nodes": [
            {"name": "s0", "model": "m", "prompt": "{{ chunks[0] }}"},
            {"name": "s1", "model": "m", "prompt": "{{ s0 }} {{ chunks[1] }}", "where": "chunks|length > 1"},
            {"name": "s2", "model": "m", "prompt": "{{ s1 }} {{ chunks[2] }}", "where": "chunks|length > 2"},
        ],
    }
    resolved = resolve(application_from_dict(data))
    assert resolved.rows_of["s0"].tolist() == [0, 1, 2]
    assert resolved.rows_of["s1"].tolist() == [1, 2]
    assert resolved.rows_of["s2"].tolist() == [2]


def test_prompt_tokens_from_token_count_columns():
    data = {
        "dataset": {"rows": [{"q": "", "q_tokens": 10}, {"q": "", "q_tokens": 30}], "token_counts": {"q": "q_tokens"}},
        "nodes": [{"name": "a", "model": "m", "prompt": "{{ q }}"}, {"name": "j", "model": "m", "prompt": "{{ q }}{{ a }}{{ a }}"}],
    }
    resolved = resolve(application_from_dict(data))
    ds = resolved.data["default"]
    tokens, uses = static_prompt_tokens(ds, "{{ q }}{{ a }}{{ a }}", np.arange(2), {"a"})
    assert tokens.tolist() == [10, 30]
    assert uses == {"a": 2}


def test_control_flow_templates_are_rendered_per_row():
    data = {
        "dataset": {"rows": [{"q": "abcdefgh"}, {"q": ""}]},
        "nodes": [{"name": "a", "model": "m", "prompt": "{% if q %}{{ q }}{% endif %}"}],
    }
    resolved = resolve(application_from_dict(data))
    tokens, uses = static_prompt_tokens(resolved.data["default"], "{% if q %}{{ q }}{% endif %}", np.arange(2), set())
    assert tokens.tolist() == [2, 0]  # 8 characters at 4 per token


class FixedLengths:
    def __init__(self, value):
        self.value = value

    def sample(self, n, rng, max_tokens=None, caps=None):
        out = np.full(n, self.value)
        if max_tokens is not None:
            out = np.minimum(out, max_tokens)
        if caps is not None:
            out = np.minimum(out, caps)
        return out


def judge_of_two() -> dict:
    """One row of 10 prompt tokens; a (model m) and b (model m2) answer, j reads both."""
    return {
        "dataset": {"rows": [{"q": "", "q_tokens": 10}], "token_counts": {"q": "q_tokens"}},
        "nodes": [
            {"name": "a", "model": "m", "prompt": "{{ q }}"},
            {"name": "b", "model": "m2", "prompt": "{{ q }}"},
            {"name": "j", "model": "m", "prompt": "{{ q }}{{ a }}{{ b }}"},
        ],
    }


JUDGE_LENGTHS = {"a": FixedLengths(7), "b": FixedLengths(5), "j": FixedLengths(3)}


def test_judge_inputs_add_upstream_outputs_of_the_same_sample():
    resolved = resolve(application_from_dict(judge_of_two()))
    wl = Workloads(resolved, lambda n: JUDGE_LENGTHS[n], lambda n: 1000)
    s = wl.sample(0)
    assert s["j"].input_lens.tolist() == [10 + 7 + 5]
    assert s["a"].output_lens.tolist() == [7]


def test_upstream_outputs_cost_what_their_texts_take_when_encoded_again():
    """Model m's outputs were seen to take 1.5 tokens per generated token once read as text."""
    from samullm.state import ObservedStats, PlannerState

    resolved = resolve(application_from_dict(judge_of_two()))
    state = PlannerState(observed=ObservedStats(prompt_tokens_per_output_token={"m": 1.5}))
    s = Workloads(resolved, lambda n: JUDGE_LENGTHS[n], lambda n: 1000, state=state).sample(0)
    assert s["j"].input_lens.tolist() == [10 + round(7 * 1.5) + 5]  # m2 never observed: 1 per token
    assert s["a"].output_lens.tolist() == [7]


def test_ignore_eos_outputs_run_to_their_limit():
    data = {
        "dataset": {"rows": [{"q": "", "q_tokens": 10}, {"q": "", "q_tokens": 995}], "token_counts": {"q": "q_tokens"}},
        "nodes": [{"name": "a", "model": "m", "prompt": "{{ q }}", "sampling": {"max_tokens": 9, "ignore_eos": True}}],
    }
    resolved = resolve(application_from_dict(data))
    s = Workloads(resolved, lambda n: FixedLengths(4), lambda n: 1000).sample(0)
    assert s["a"].output_lens.tolist() == [9, 1000 - 995]  # max_tokens, or what the context leaves


def test_routing_split_estimate_and_observed_routes():
    from samullm.state import ObservedStats, PlannerState

    rows = [{"q": "x"} for _ in range(1000)]
    data = {
        "dataset": {"rows": rows},
        "nodes": [
            {"name": "router", "model": "m", "prompt": "{{ q }}"},
            {"name": "e1", "model": "m", "prompt": "{{ q }}", "route": {"router": "router", "equals": "1", "share": 0.8}},
            {"name": "e2", "model": "m", "prompt": "{{ q }}", "route": {"router": "router", "equals": "2"}},
        ],
    }
    resolved = resolve(application_from_dict(data))
    wl = Workloads(resolved, lambda n: FixedLengths(4), lambda n: 1000)
    s = wl.sample(0)
    assert 700 < s["e1"].n < 900 and s["e1"].n + s["e2"].n == 1000
    state = PlannerState(finished=["router"], observed=ObservedStats(routes={"e1": [1, 2, 3], "e2": [4]}))
    s = Workloads(resolved, lambda n: FixedLengths(4), lambda n: 1000, state=state).sample(0)
    assert s["e1"].rows.tolist() == [1, 2, 3] and s["e2"].rows.tolist() == [4] and s["router"].n == 0


def test_done_rows_are_not_requested_again():
    from samullm.state import PlannerState

    data = ensemble_dict()
    resolved = resolve(application_from_dict(data))
    state = PlannerState(done_rows={"a": [0]})
    s = Workloads(resolved, lambda n: FixedLengths(4), lambda n: 1000, state=state).sample(0)
    assert s["a"].rows.tolist() == [1]
    assert s["b"].rows.tolist() == [0, 1]


def test_trace_dataset(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("num_prefill_tokens,num_decode_tokens\n5,1\n7,2\n9,3\n")
    app = application_from_dict(
        {"dataset": {"trace": {"path": str(trace), "num_rows": 5}}, "nodes": [{"name": "a", "model": "m", "prompt": "{{ prompt }}"}]}
    )
    resolved = resolve(app)
    wl = Workloads(resolved, lambda n: FixedLengths(4), lambda n: 1000)
    assert set(wl.sample(0)["a"].input_lens.tolist()) <= {5, 7, 9}
    assert json.loads(app.model_dump_json())["datasets"]["default"]["trace"]["num_rows"] == 5


def test_synthetic_dataset_declares_prompt_lengths():
    app = application_from_dict({
        "dataset": {"synthetic": {"num_rows": 2000, "mean_tokens": 400, "std_tokens": 200, "max_tokens": 2000, "seed": 3}},
        "nodes": [{"name": "a", "model": "m", "prompt": "{{ prompt }}"}],
    })
    wl = Workloads(resolve(app), lambda n: FixedLengths(4), lambda n: 4096)
    lens = wl.sample(0)["a"].input_lens
    assert lens.size == 2000 and lens.max() <= 2000
    assert abs(lens.mean() - 400) < 25 and abs(lens.std() - 200) < 30
