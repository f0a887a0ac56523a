import json

import pytest

from costmodel.paths import shared_data
from samullm.bench.overhead import make_job, runner_application, text_prompts
from samullm.cli import main as cli_main
from samullm.devices import DeviceSet
from samullm.graph import application_from_dict
from samullm.worker.messages import EngineOptions

needs_traces = pytest.mark.skipif(not shared_data("traces").is_dir(),
                                  reason="the shared traces are not on this machine")
DEVICES = DeviceSet("cpu", (0, 1), ((0,), (1,)))


def test_prompts_have_the_asked_token_counts_under_the_models_tokenizer(tiny_s):
    from tokenizers import Tokenizer

    prompts = text_prompts(tiny_s, [1, 40, 700, 5000], limit=1000, seed=0)
    tokenizer = Tokenizer.from_file(str(tiny_s / "tokenizer.json"))
    counts = [len(tokenizer.encode(p).ids) for p in prompts]
    assert counts[:3] == [1, 40, 700] and counts[3] <= 1000
    assert text_prompts(tiny_s, [1, 40, 700, 5000], limit=1000, seed=0) == prompts  # reproducible


def test_all_sides_get_the_same_requests_and_devices(tiny_s, tmp_path):
    engine = EngineOptions(max_model_len=2048, dtype="bfloat16", kv_cache_memory_bytes=256 << 20)
    prompts = ["a b c", "d e"]
    job = make_job(tiny_s, 1, DEVICES, prompts, 16, engine, tmp_path)
    assert [r.prompt for r in job.rows] == prompts and job.sampling.max_tokens == 16
    assert job.sampling.ignore_eos and job.device_ids == [0]
    app = application_from_dict(runner_application(tiny_s, 1, DEVICES, prompts, 16, engine))
    (node,) = app.nodes
    assert node.plan.devices == [0] and node.plan.tp == 1
    assert node.sampling.max_tokens == 16 and node.sampling.ignore_eos
    assert node.engine.extra == {"kv_cache_memory_bytes": 256 << 20}
    assert [row["prompt"] for row in app.datasets["default"].rows] == prompts


def test_bad_options_fail_before_any_engine(capsys):
    assert cli_main(["bench", "overhead", "--repeats", "0"]) == 2
    assert cli_main(["bench", "overhead", "--tp", "64"]) == 2
    assert "--tp 64" in capsys.readouterr().err


@pytest.mark.integration
@needs_traces
def test_plain_and_worker_sides_run_the_same_work(tmp_path, capsys):
    code = cli_main(["bench", "overhead", "--requests", "20", "--max-tokens", "8", "--repeats", "1",
                     "--via", "worker", "--workdir", str(tmp_path)])
    assert code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["via"] == "worker" and figures["ratio"] > 0 and figures["ratio_end_to_end"] > 0
    assert set(figures["figures"]) == {"plain", "worker"}
    plain = json.loads((tmp_path / "plain-0" / "plain_result.json").read_text())
    assert plain["rows"] == 20 and plain["output_tokens"] == 20 * 8
