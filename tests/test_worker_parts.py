"""The worker's pure parts: batch shapes, messages, the result file, and a worker refusing a
bad job before it ever imports vLLM (a real subprocess, no engine)."""

import json
import time

import pytest
from pydantic import ValidationError

from samullm.worker import EngineWorker, Handoff, JobSpec, Row, RowResult, done_row_ids, read_results
from samullm.worker.batch_shape import ScheduledSeq, batch_shape
from samullm.worker.messages import EXIT_BAD_JOB, IterationRecord, parse_event
from samullm.worker.results import ResultWriter, read_iterations


def result(row_id, tokens=3):
    return RowResult(row_id=row_id, text="x", prompt_tokens=4, output_tokens=tokens,
                     finish_reason="length", finished_at=0.0)


class TestBatchShape:
    def test_fresh_prompts_are_prefill(self):
        shape = batch_shape([ScheduledSeq(10, 0, 10), ScheduledSeq(6, 0, 6)])
        assert (shape.prefill_seqs, shape.prefill_tokens, shape.decode_seqs) == (2, 16, 0)
        assert shape.prefill_attention == 10 * 10 + 6 * 6
        assert (shape.context_tokens, shape.max_seq_len) == (16, 10)

    def test_decodes_count_context_including_the_new_token(self):
        shape = batch_shape([ScheduledSeq(1, 10, 10), ScheduledSeq(1, 20, 8)])
        assert (shape.prefill_seqs, shape.decode_seqs, shape.decode_context) == (0, 2, 11 + 21)
        assert shape.decode_max_context == 21
        assert shape.prefill_attention == 0

    def test_chunk_riding_with_decodes(self):
        # A 100-token prompt whose second chunk (40 tokens after 60 computed) rides with a decode.
        shape = batch_shape([ScheduledSeq(40, 60, 100), ScheduledSeq(1, 7, 5)])
        assert (shape.prefill_seqs, shape.prefill_tokens, shape.prefill_attention) == (1, 40, 40 * 100)
        assert (shape.decode_seqs, shape.decode_context, shape.decode_max_context) == (1, 8, 8)
        assert (shape.context_tokens, shape.max_seq_len) == (108, 100)

    def test_last_single_token_of_a_prompt_is_prefill_and_recompute_is_prefill(self):
        shape = batch_shape([ScheduledSeq(1, 9, 10), ScheduledSeq(15, 0, 10)])
        assert (shape.prefill_seqs, shape.prefill_tokens, shape.decode_seqs) == (2, 16, 0)

    def test_empty(self):
        assert batch_shape([]).prefill_seqs == batch_shape([]).decode_seqs == 0


class TestMessages:
    def test_row_needs_exactly_one_prompt(self):
        with pytest.raises(ValidationError, match="exactly one"):
            Row(row_id="a")
        with pytest.raises(ValidationError, match="exactly one"):
            Row(row_id="a", prompt="x", prompt_token_ids=[1])

    def test_job_rejects_duplicate_rows_and_unknown_options(self):
        base = dict(model="m", result_path="r.jsonl")
        with pytest.raises(ValidationError, match="more than once"):
            JobSpec(rows=[Row(row_id="a", prompt="x"), Row(row_id="a", prompt="y")], **base)
        with pytest.raises(ValidationError, match="max_num_seq"):
            JobSpec(rows=[], engine={"max_num_seq": 4}, **base)

    def test_handoff_needs_a_result_path_unless_it_ends_the_worker(self):
        with pytest.raises(ValidationError, match="result_path"):
            Handoff(rows=[Row(row_id="a", prompt="x")])
        with pytest.raises(ValidationError, match="more than once"):
            Handoff(rows=[Row(row_id="a", prompt="x")] * 2, result_path="r.jsonl")
        assert Handoff(exit=True).rows == []
        # A job with no rows is valid: with a handoff_dir it only loads its engine and waits.
        assert JobSpec(model="m", rows=[], result_path="r.jsonl", handoff_dir="h").idle_timeout_s > 0

    def test_hand_off_writes_numbered_whole_files(self, tmp_path):
        job = JobSpec(model="m", rows=[], result_path=str(tmp_path / "r.jsonl"), handoff_dir=str(tmp_path / "h"))
        worker = EngineWorker(job, tmp_path / "w")  # never started: only the files are checked
        first = worker.hand_off(Handoff(rows=[Row(row_id="a", prompt="x")], result_path=str(tmp_path / "a.jsonl")))
        second = worker.hand_off(Handoff(exit=True))
        assert (first.name, second.name) == ("1.json", "2.json")
        assert sorted(f.name for f in (tmp_path / "h").iterdir()) == ["1.json", "2.json"]  # nothing left aside
        assert Handoff.model_validate_json(first.read_text()).rows[0].row_id == "a"
        assert Handoff.model_validate_json(second.read_text()).exit
        plain = EngineWorker(job.model_copy(update={"handoff_dir": None}), tmp_path / "w2")
        with pytest.raises(RuntimeError, match="handoff_dir"):
            plain.hand_off(Handoff(exit=True))

    def test_iteration_phase(self):
        fields = dict(step=0, wave=0, start_s=0, iter_latency_s=1, exec_s=1, sample_s=0, schedule_s=0,
                      prefill_attention=0, decode_context=0, decode_max_context=0,
                      context_tokens=0, max_seq_len=0,
                      num_waiting=0, num_preempted=0, num_finished=0)
        assert IterationRecord(prefill_seqs=1, prefill_tokens=5, decode_seqs=2, **fields).phase == "mixed"
        assert IterationRecord(prefill_seqs=0, prefill_tokens=0, decode_seqs=2, **fields).phase == "decode"
        record = IterationRecord(prefill_seqs=3, prefill_tokens=30, decode_seqs=0, **fields)
        assert (record.phase, record.num_seqs, record.num_tokens) == ("prefill", 3, 30)

    def test_events_round_trip(self):
        event = parse_event('{"event": "error", "time": 1.0, "stage": "load", "message": "no model"}')
        assert event.stage == "load" and event.message == "no model"
        assert parse_event(event.model_dump_json()) == event
        waiting = parse_event('{"event": "waiting", "time": 2.0, "handoff": 3}')
        assert (waiting.event, waiting.handoff) == ("waiting", 3)


class TestResultFile:
    def test_append_read_and_dedupe(self, tmp_path):
        path = tmp_path / "sub" / "results.jsonl"
        writer = ResultWriter(path)
        assert writer.write([result("a"), result("b")]) == 2
        assert writer.write([]) == 0
        writer.write([result("a", tokens=99)])  # a duplicate: the first copy counts
        writer.close()
        assert read_results(path)["a"].output_tokens == 3
        assert done_row_ids(path) == {"a", "b"}

    def test_torn_last_line_is_ignored_then_terminated(self, tmp_path):
        path = tmp_path / "results.jsonl"
        path.write_text(result("a").model_dump_json() + "\n" + result("b").model_dump_json()[:20])
        assert done_row_ids(path) == {"a"}
        writer = ResultWriter(path)
        writer.write([result("c")])
        writer.close()
        assert done_row_ids(path) == {"a", "c"}
        assert path.read_text().count("\n") == 3

    def test_missing_files_read_as_empty(self, tmp_path):
        assert done_row_ids(tmp_path / "none.jsonl") == set()
        assert read_iterations(tmp_path / "none.jsonl") == []


def test_bad_job_reports_an_error_event_fast(tmp_path):
    job = JobSpec(model=str(tmp_path), tensor_parallel_size=2, device_ids=[0],
                  rows=[Row(row_id="a", prompt="x")], result_path=str(tmp_path / "r.jsonl"))
    worker = EngineWorker(job, tmp_path / "w")
    start = time.monotonic()
    worker.start()
    event = worker.wait_for("error", timeout=60)
    assert event.stage == "job"
    assert "larger than the 1 device" in event.message
    assert worker.wait(timeout=30) == EXIT_BAD_JOB
    assert time.monotonic() - start < 30  # vLLM was never imported
    assert not (tmp_path / "r.jsonl").exists()


def test_missing_model_path_is_a_job_error(tmp_path):
    job = JobSpec(model=str(tmp_path / "no-such-model"), rows=[Row(row_id="a", prompt="x")],
                  result_path=str(tmp_path / "r.jsonl"))
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    event = worker.wait_for("error", timeout=60)
    assert event.stage == "job" and "does not exist" in event.message
    assert worker.wait(timeout=30) == EXIT_BAD_JOB


def test_job_with_every_row_done_finishes_without_an_engine(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(result("a").model_dump_json() + "\n")
    job = JobSpec(model=str(tmp_path), rows=[Row(row_id="a", prompt="x")], result_path=str(path))
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    finished = worker.wait_for("finished", timeout=60)
    assert (finished.rows_done, finished.rows_total, finished.iterations) == (1, 1, 0)
    assert worker.wait(timeout=30) == 0
    assert worker.loaded is None
    assert json.loads(path.read_text())["row_id"] == "a"
