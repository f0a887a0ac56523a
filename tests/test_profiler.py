import csv
import json
from collections import Counter

import pytest

from samullm.cli import main as cli_main
from samullm.profiler import (
    A100_COLUMNS,
    CSV_COLUMNS,
    WARMUP_WAVE,
    Sweep,
    default_sweep,
    quick_sweep,
    sweep_rows,
    write_profile_csv,
)
from samullm.worker.messages import IterationRecord


def record(wave, prefill_seqs=0, prefill_tokens=0, decode_seqs=0, latency=0.01):
    return IterationRecord(
        step=0, wave=wave, start_s=0.0, iter_latency_s=latency, exec_s=latency * 0.8,
        sample_s=latency * 0.1, schedule_s=latency * 0.05, prefill_seqs=prefill_seqs,
        prefill_tokens=prefill_tokens, prefill_attention=float(prefill_tokens * prefill_tokens),
        decode_seqs=decode_seqs, decode_context=decode_seqs * 100,
        decode_max_context=100 if decode_seqs else 0,
        context_tokens=prefill_tokens + decode_seqs * 100, max_seq_len=100,
        num_waiting=0, num_preempted=0, num_finished=0,
    )


def test_fit_drops_points_the_engine_cannot_run():
    sweep = Sweep(
        prefill=((1, 100), (1, 600), (300, 4)),
        decode=((2, 100), (2, 505), (300, 10), (64, 400)),
        mixed=((4, 100, 200), (4, 100, 600), (300, 10, 10)),
        decode_steps=10,
        max_decode_kv_tokens=20_000,
    )
    fitted = sweep.fit(max_model_len=512, max_num_batched_tokens=256, max_num_seqs=256)
    assert fitted.prefill == ((1, 100),)
    assert fitted.decode == ((2, 100),)  # 505 + 11 tokens > 512; 300 > seqs; 64*400 > 20,000
    assert fitted.mixed == ((4, 100, 200),)
    assert fitted.num_points == 3


def test_rows_come_in_waves_with_the_asked_shapes():
    sweep = Sweep(prefill=((3, 10),), decode=((2, 20),), mixed=((4, 300, 50),), decode_steps=5)
    rows = sweep_rows(sweep, vocab_size=512, max_num_batched_tokens=256)
    waves = Counter(row.wave for row in rows)
    assert waves[1] == 3 and waves[2] == 2 and waves[3] == 5 and WARMUP_WAVE in waves
    prefill = [r for r in rows if r.wave == 1]
    assert all(len(r.prompt_token_ids) == 10 and r.sampling.max_tokens == 1 for r in prefill)
    decode = [r for r in rows if r.wave == 2]
    # 2 x 20 tokens prefill in one step; then 5 steps of both decoding; one more token sampled
    assert all(len(r.prompt_token_ids) == 20 and r.sampling.max_tokens == 7 for r in decode)
    mixed = [r for r in rows if r.wave == 3]
    late = [r for r in mixed if r.delay_steps]
    # 4 decoders x 300 tokens take ceil(1200 / 256) = 5 prefill steps; the prompt comes after.
    assert len(late) == 1 and late[0].delay_steps == 6 and len(late[0].prompt_token_ids) == 50
    assert all(r.sampling.max_tokens > 6 for r in mixed if not r.delay_steps)
    assert all(4 <= t < 512 for r in rows for t in r.prompt_token_ids)
    assert len({r.row_id for r in rows}) == len(rows)
    assert len({tuple(r.prompt_token_ids) for r in rows}) == len(rows)


def test_default_sweep_respects_the_token_budget():
    sweep = default_sweep(1024)
    assert all(n * p <= 1024 for n, p in sweep.prefill)
    assert sweep.decode and sweep.mixed and quick_sweep().num_points < 10


def test_csv_has_the_a100_columns_then_batch_columns_and_skips_warmup(tmp_path):
    path = tmp_path / "m_tp1.csv"
    written = write_profile_csv(path, [
        record(WARMUP_WAVE, prefill_seqs=1, prefill_tokens=50),
        record(1, prefill_seqs=2, prefill_tokens=64),
        record(2, decode_seqs=8),
        record(3, prefill_seqs=1, prefill_tokens=30, decode_seqs=4),
    ])
    assert written == 3
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        assert CSV_COLUMNS[: len(A100_COLUMNS)] == A100_COLUMNS
        rows = list(reader)
    assert [r["phase"] for r in rows] == ["prefill", "decode", "mixed"]
    assert [int(r["num_tokens"]) for r in rows] == [64, 8, 34]
    assert [int(r["num_seqs"]) for r in rows] == [2, 8, 5]
    assert rows[1]["decode_context"] == "800" and rows[0]["prefill_attention"] == "4096"
    assert rows[1]["decode_max_context"] == "100" and rows[0]["decode_max_context"] == "0"
    assert rows[0]["prepare_inputs_s"] == ""


def test_profile_refuses_bad_arguments(tmp_path, capsys):
    assert cli_main(["profile", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert cli_main(["profile", "--model", str(tmp_path), "--tp", "1,x", "--out", str(tmp_path)]) == 2
    assert cli_main(["profile", "--model", str(tmp_path), "--tp", "64", "--out", str(tmp_path)]) == 2
    assert "larger than" in capsys.readouterr().err


@pytest.mark.integration
def test_quick_profile_writes_a_parsable_csv(tiny_s, tmp_path, capsys):
    out = tmp_path / "profiles"
    assert cli_main(["profile", "--model", str(tiny_s), "--tp", "1", "--out", str(out), "--quick",
                     "--kv-cache-gib", "0.0625"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = out / "tiny-s_tp1.csv"
    assert summary["tp1"]["csv"] == str(path)
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == summary["tp1"]["iterations"] > 0
    assert {r["phase"] for r in rows} == {"prefill", "decode", "mixed"}
    for r in rows:
        assert float(r["iter_latency_s"]) >= float(r["exec_s"]) > 0
        assert int(r["num_tokens"]) == int(r["prefill_tokens"]) + int(r["decode_seqs"])
        assert int(r["num_seqs"]) == int(r["prefill_seqs"]) + int(r["decode_seqs"])
    # The quick sweep's pure prefill points appear as asked: 1 x 64 and 4 x 128 tokens.
    shapes = {(int(r["num_seqs"]), int(r["num_tokens"])) for r in rows if r["phase"] == "prefill"}
    assert {(1, 64), (4, 512)} <= shapes
    meta = json.loads((out / "tiny-s_tp1.meta.json").read_text())
    assert meta["load_s"] > 0 and meta["engine"]["max_num_batched_tokens"] == 4096
    # The cost model's reader takes the file as it is (the contract between the two sides).
    from costmodel.profiles import read_profile

    profile = read_profile(path)
    assert (profile.model, profile.tp, len(profile)) == ("tiny-s", 1, len(rows))
    last = rows[-1]
    assert profile.batch(len(rows) - 1).decode_max_context == int(last["decode_max_context"])


@pytest.mark.parametrize("seqs, context", [(8, 100), (64, 512), (256, 512)])
def test_a_large_decode_wave_decodes_all_its_rows_together(seqs, context):
    """Replayed by vLLM v1's scheduler rules (costmodel's replay), a decode wave whose prefill
    takes many steps still has `decode_steps` pure-decode steps of all its rows: its first rows
    do not finish before its last ones start."""
    from costmodel.engine_config import EngineConfig
    from costmodel.interface import Batch
    from costmodel.simulate import simulate

    class OneSecond:
        def iteration_time(self, batch: Batch) -> float:
            return 1.0

        def decode_run_time(self, decode_seqs, decode_context, num_iterations, decode_max_context=0):
            return float(num_iterations)

    budget = 256 if seqs == 8 else 4096
    sweep = Sweep(prefill=(), decode=((seqs, context),), mixed=(), decode_steps=16)
    rows = [r for r in sweep_rows(sweep, vocab_size=512, max_num_batched_tokens=budget) if r.wave == 1]
    config = EngineConfig(max_num_seqs=256, max_num_batched_tokens=budget, block_size=16, max_model_len=2048)
    out = simulate([len(r.prompt_token_ids) for r in rows], [r.sampling.max_tokens for r in rows],
                   OneSecond(), config, num_kv_blocks=100_000, record_iterations=True)
    log = out.iterations
    full = sum(1 for k in range(len(log.decode_seqs))
               if log.decode_seqs[k] == seqs and log.prefill_tokens[k] == 0)
    assert full >= 16
