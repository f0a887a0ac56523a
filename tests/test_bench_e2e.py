import json

import pytest

from costmodel.paths import shared_data
from samullm.bench.e2e import (
    MethodRun,
    check_context,
    ensemble_app,
    parse_members,
    parse_methods,
    summarise,
)
from samullm.cli import main as cli_main
from samullm.errors import UserInputError
from samullm.graph import application_from_dict

needs_traces = pytest.mark.skipif(not shared_data("traces").is_dir(),
                                  reason="the shared traces are not on this machine")


def _run(method: str, measured: float | None, predicted: float | None, state: str = "success") -> MethodRun:
    return MethodRun(method=method, run_id=f"r-{method}", home="/tmp/x", state=state, error=None,
                     measured_s=measured, predicted_s=predicted, predicted_std=0.0, planning_s=0.1,
                     plan_versions=1, launches=1, rows_failed=0, output_tokens=10,
                     planned_stages="", actual_stages="")


def test_members_parse_with_presets_seeds_and_token_caps():
    members = parse_members("big=tiny-l:128, twin=tiny-m@1:256,small=tiny-s:64")
    assert [(m.name, m.model.describe(), m.max_tokens) for m in members] == [
        ("big", "tiny-l", 128), ("twin", "tiny-m@1", 256), ("small", "tiny-s", 64)]


@pytest.mark.parametrize("text, fragment", [
    ("a=tiny-s:8", "at least two members"),
    ("a=tiny-s:8,a=tiny-m:8", "distinct names"),
    ("judge=tiny-s:8,b=tiny-m:8", "other than 'judge'"),
    ("a=tiny-s,b=tiny-m:8", "MODEL:MAX_TOKENS"),
    ("a=tiny-s:0,b=tiny-m:8", "positive"),
    ("a=/no/such/dir:8,b=tiny-m:8", "neither a tiny preset"),
    ("a=tiny-s@x:8,b=tiny-m:8", "seed after @"),
])
def test_bad_members_are_refused_with_the_reason(text, fragment):
    with pytest.raises(UserInputError, match=fragment):
        parse_members(text)


def test_unknown_method_is_refused():
    assert parse_methods("samullm,sequential") == ["samullm", "sequential"]
    with pytest.raises(UserInputError):
        parse_methods("samullm,fastest-possible")


def test_judge_context_bound_counts_every_answer_tokenized_again():
    members = parse_members("a=tiny-s:250,b=tiny-m:250")
    check_context(members, 32, 256, 2048)  # 256 + 16 + 2 * (2 * 250 + 8) + 32 = 1320
    with pytest.raises(UserInputError, match="up to 2320 tokens"):
        check_context(members, 32, 1256, 2048)


@needs_traces
def test_ensemble_app_is_a_valid_application_whose_judge_reads_every_member(tiny_s):
    members = parse_members("a=tiny-s:16,b=tiny-s:32")
    app = application_from_dict(ensemble_app(members, members[0].model, 8, rows=5))
    judge = app.node("judge")
    assert "{{ a }}" in judge.prompt and "{{ b }}" in judge.prompt
    assert [n.sampling.max_tokens for n in app.nodes] == [16, 32, 8]


def test_summary_takes_medians_and_compares_with_the_best_baseline():
    runs = {
        "samullm": [_run("samullm", 10.0, 11.0), _run("samullm", 12.0, 11.0), _run("samullm", 14.0, 11.0)],
        "sequential": [_run("sequential", 20.0, 18.0)],
        "even-split": [_run("even-split", 15.0, 15.0), _run("even-split", None, 15.0, state="failed")],
    }
    figures = summarise(runs)
    assert figures["makespans"] == {"samullm": 12.0, "sequential": 20.0, "even-split": 15.0}
    assert figures["best_baseline"] == "even-split"
    assert figures["speedup_vs_best_baseline"] == pytest.approx(15.0 / 12.0, abs=1e-4)
    # signed: (predicted - measured) / measured, median over the successful runs: +1/10, -1/12, -3/14
    assert figures["prediction_error"] == pytest.approx(-1 / 12, abs=1e-4)
    assert figures["prediction_errors"]["sequential"] == pytest.approx(-0.1)


def test_bad_options_fail_before_any_engine(capsys):
    assert cli_main(["bench", "e2e", "--repeats", "0"]) == 2
    assert cli_main(["bench", "e2e", "--methods", "samullm,nope"]) == 2
    assert cli_main(["bench", "e2e", "--members", "a=tiny-s:9000,b=tiny-m:8"]) == 2
    assert "--max-model-len" in capsys.readouterr().err


@pytest.mark.integration
@needs_traces
def test_small_ensemble_runs_under_samullm_and_a_baseline(tmp_path, capsys, monkeypatch):
    """A few rows, short answers, on a machine not calibrated yet (as CI's clean clone): the
    missing calibration is made first, both methods execute for real, every figure is produced."""
    calibration = tmp_path / "calibration"
    monkeypatch.setenv("SAMULLM_LATENCY_DIR", str(calibration))  # restored after the test
    code = cli_main(["bench", "e2e", "--rows", "8", "--members", "a=tiny-s:8,b=tiny-s@1:8",
                     "--judge", "tiny-s:4", "--methods", "samullm,sequential", "--prior-rows", "4",
                     "--max-prompt-tokens", "64", "--max-model-len", "512", "--kv-cache-gib", "0.25",
                     "--calibration", str(calibration), "--quick-calibration",
                     "--workdir", str(tmp_path / "runs"), "--timeout", "600"])
    captured = capsys.readouterr()
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    assert (calibration / "startup").is_dir()
    figures = json.loads(captured.out.strip().splitlines()[-1])
    assert set(figures["makespans"]) == {"samullm", "sequential"}
    assert all(s is not None and s > 0 for s in figures["makespans"].values())
    assert figures["speedup_vs_best_baseline"] > 0 and figures["best_baseline"] == "sequential"
    assert figures["prediction_error"] is not None
    for method_runs in figures["runs"].values():
        (run,) = method_runs
        assert run["state"] == "success" and run["rows_failed"] == 0 and run["output_tokens"] > 0
