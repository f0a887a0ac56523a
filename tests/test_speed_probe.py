"""The speed probe: its rows, the split of the engine's steps, and the factor."""

import pytest

from costmodel.interface import Batch
from samullm.profiler import WARMUP_WAVE
from samullm.speed_probe import after_probe, probe_end_s, probe_rows, speed_factor, split_records
from samullm.worker.messages import EngineOptions, IterationRecord, Row, SamplingSpec


def record(wave: int, start: float, seconds: float, decode_seqs: int = 4) -> IterationRecord:
    return IterationRecord(step=0, wave=wave, start_s=start, iter_latency_s=seconds, exec_s=seconds,
                           sample_s=0.0, schedule_s=0.0, prefill_seqs=0, prefill_tokens=0,
                           prefill_attention=0.0, decode_seqs=decode_seqs, decode_context=decode_seqs * 10,
                           decode_max_context=10, context_tokens=decode_seqs * 10, max_seq_len=10,
                           num_waiting=0, num_preempted=0, num_finished=0)


class PerSequence:
    """1 ms per decoding sequence."""

    def iteration_time(self, batch: Batch) -> float:
        return 1e-3 * batch.decode_seqs


def test_probe_rows_warm_up_first_and_fit_the_engine():
    rows = probe_rows(EngineOptions(max_model_len=512, max_num_batched_tokens=1024, max_num_seqs=64), 100)
    waves = sorted({r.wave for r in rows})
    assert waves[0] == WARMUP_WAVE and len(waves) > 2
    assert all(r.row_id.startswith("probe-") for r in rows)
    assert all(len(r.prompt_token_ids) + r.sampling.max_tokens <= 512 for r in rows)
    assert max(sum(1 for r in rows if r.wave == w) for w in waves) <= 64  # no wave beyond max_num_seqs


def test_real_rows_follow_the_probe_and_their_steps_are_told_apart():
    probe = [Row(row_id=f"p{w}", prompt="x", wave=w, sampling=SamplingSpec(max_tokens=2)) for w in (0, 1, 2)]
    real = after_probe([Row(row_id="a", prompt="y"), Row(row_id="b", prompt="z", wave=1)], probe)
    assert [r.wave for r in real] == [3, 4]
    records = [record(0, 0.0, 0.5), record(1, 0.5, 0.2), record(2, 0.7, 0.3), record(3, 1.0, 0.1), record(4, 1.1, 0.1)]
    timed, rest = split_records(records, probe)
    assert [r.wave for r in timed] == [1, 2]  # the warm-up wave is not timed
    assert [r.wave for r in rest] == [3, 4]
    assert probe_end_s(records, probe) == pytest.approx(1.0)
    assert split_records(records, []) == ([], records) and probe_end_s(records, []) == 0.0


def test_factor_is_measured_over_predicted_time_of_the_same_steps():
    # Predicted 4 ms + 8 ms; measured 6 ms + 12 ms: the machine runs 1.5x slower than the model.
    timed = [record(1, 0.0, 0.006, decode_seqs=4), record(2, 0.1, 0.012, decode_seqs=8)]
    assert speed_factor(PerSequence(), timed) == pytest.approx(1.5)
    assert speed_factor(PerSequence(), []) == 1.0
