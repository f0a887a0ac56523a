import json

import numpy as np
import pytest

from costmodel.errors import UserInputError
from costmodel.paths import shared_data
from costmodel.requests import load_request_csv, trace_path
from samullm.bench.accuracy import (DEFAULT_WORKLOADS, TRACES, Workload, scaled_trace, token_rows,
                                    workload_requests)
from samullm.cli import main as cli_main

needs_traces = pytest.mark.skipif(not shared_data("traces").is_dir(),
                                  reason="the shared traces are not on this machine")


def test_workloads_parse_and_defaults_cover_the_brief():
    w = Workload.parse("tiny-m:2:conv:500:128")
    assert (w.model, w.tp, w.trace, w.requests, w.max_tokens) == ("tiny-m", 2, "conv", 500, 128)
    assert Workload.parse("tiny-s:1:code:10").max_tokens == 256
    defaults = [Workload.parse(t) for t in DEFAULT_WORKLOADS]
    assert len(defaults) >= 6 and len({w.model for w in defaults}) >= 2
    assert all(200 <= w.requests <= 2000 for w in defaults)
    for bad in ("tiny-s:1:sharegpt", "tiny-s:x:sharegpt:10", "tiny-s:1:nope:10", "tiny-s:0:code:10"):
        with pytest.raises(UserInputError):
            Workload.parse(bad)


@needs_traces
def test_trace_lengths_are_scaled_to_the_context():
    raw = load_request_csv(trace_path(TRACES["arxiv"][0]))
    scaled, cap = scaled_trace("arxiv", 2048)  # arXiv's context is 4,096: half
    assert cap is None and len(scaled) == len(raw)  # every halved prompt stays below 2,048
    assert scaled.input_lens[:3].tolist() == [max(1, round(v / 2)) for v in raw.input_lens[:3]]
    sharegpt, cap = scaled_trace("sharegpt", 2048)  # 8,192 -> 2,048: a quarter; outputs cut at 1,024
    assert cap == 256 and sharegpt.output_lens.max() == 256
    assert sharegpt.input_lens.max() < 2048


@needs_traces
def test_run_requests_and_the_estimators_lengths_come_from_disjoint_halves():
    w = Workload.parse("tiny-s:1:sharegpt:300:200")
    req = workload_requests(w, 2048, seed=3)
    assert len(req.input_lens) == 300 and req.max_tokens == 200
    assert req.output_lens.max() <= 200 and np.all(req.input_lens + req.output_lens <= 2048)
    # the estimator's distribution is fitted on the other half: about as many lengths as the
    # half has, censored at the scaled cap (256)
    scaled, _ = scaled_trace("sharegpt", 2048)
    run_half, known_half = scaled.split(0.5, seed=3)
    assert req.lengths.max_length == known_half.output_lens.max() == 256
    assert abs(req.lengths.mean() - known_half.output_lens.mean()) < 1.0
    again = workload_requests(w, 2048, seed=3)
    assert np.array_equal(again.input_lens, req.input_lens)  # reproducible
    with pytest.raises(UserInputError, match="requests asked"):
        workload_requests(Workload.parse("tiny-s:1:code:100000"), 2048, seed=0)


def test_token_rows_impose_lengths_without_shared_prefixes():
    rows = token_rows([5, 3], [7, 1], vocab_size=512, seed=0)
    assert [len(r.prompt_token_ids) for r in rows] == [5, 3]
    assert [(r.sampling.max_tokens, r.sampling.ignore_eos) for r in rows] == [(7, True), (1, True)]
    assert all(4 <= t < 512 for r in rows for t in r.prompt_token_ids)
    assert rows[0].prompt_token_ids[:3] != rows[1].prompt_token_ids


def test_bad_options_fail_before_any_engine(capsys, tmp_path):
    assert cli_main(["bench", "accuracy", "--repeats", "0", "--calibration", str(tmp_path)]) == 2
    assert cli_main(["bench", "accuracy", "--only", "99", "--calibration", str(tmp_path)]) == 2
    assert "numbers run from 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.integration
@needs_traces
def test_smoke_run_measures_and_predicts(tmp_path, capsys):
    """A quick calibration and one small workload, twice: the figures are all there, and the
    replay ran exactly as many iterations as the engine (the schedules agree)."""
    code = cli_main(["bench", "accuracy", "--workload", "tiny-s:1:sharegpt:60:48", "--repeats", "2",
                     "--quick-calibration", "--calibration", str(tmp_path / "cal"),
                     "--workdir", str(tmp_path / "runs"), "--samples", "4"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"workloads", "median_error", "max_error", "noise"} <= set(figures)
    (w,) = figures["workloads"].values()
    assert len(w["measured_s"]) == 2 and all(t > 0 for t in w["measured_s"])
    assert w["iterations"] == [w["oracle_iterations"]] * 2 and w["replay_shape_match"] > 0.95
    assert w["limits"]["block_size"] == 128 and w["limits"]["max_num_batched_tokens"] == 4096
    assert np.isfinite(figures["max_error"]) and figures["noise"] >= 0
    assert w["startup_predicted_s"] > 0
    # The speed probe ran on each run's engine before its rows and was timed apart from them.
    assert len(w["speed_factors"]) == 2 and all(0.2 < f < 5 for f in w["speed_factors"])
    assert w["predicted_s"] == pytest.approx(w["calibrated_s"] * np.mean(w["speed_factors"]), rel=1e-3)
