"""The engine worker on real vLLM engines (tiny models): completion, stop/restart, kill -9,
process cleanup, start-up failures."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from samullm.worker import EngineWorker, Handoff, JobSpec, Row, RowResult, SamplingSpec, read_iterations, read_results
from samullm.worker.messages import EXIT_ERROR, EXIT_STOPPED
from samullm.worker.results import iter_results

pytestmark = pytest.mark.integration

LOAD_TIMEOUT = 240  # import + engine start, on a busy two-core machine
ENGINE = {"max_model_len": 512, "kv_cache_memory_bytes": 64 << 20}


def make_job(model: Path, tmp: Path, rows: list[Row], **fields) -> JobSpec:
    return JobSpec(
        model=str(model),
        rows=rows,
        result_path=str(tmp / "results.jsonl"),
        iteration_log_path=str(tmp / "iterations.jsonl"),
        progress_interval_s=0.1,
        **({"engine": ENGINE} | fields),
    )


def long_rows(n: int) -> list[Row]:
    """Rows that take a while: long outputs, imposed with ignore_eos."""
    return [
        Row(row_id=f"r{i:03d}", prompt_token_ids=[5 + (7 * i + j) % 300 for j in range(8 + i % 24)],
            sampling=SamplingSpec(max_tokens=200 + (13 * i) % 100, ignore_eos=True))
        for i in range(n)
    ]


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def all_gone(processes: list[psutil.Process]) -> bool:
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def wait_rows_done(worker: EngineWorker, at_least: int, timeout: float = 120):
    while True:
        event = worker.wait_for("progress", timeout=timeout)
        if event.rows_done >= at_least:
            return event


def result_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


def test_runs_every_row_once_and_logs_true_batch_shapes(tiny_s, tmp_path):
    rows = [
        Row(row_id=f"r{i}", prompt_token_ids=[4 + (i * 5 + j) % 400 for j in range(3 + i % 40)],
            sampling=SamplingSpec(max_tokens=1 + (i * 7) % 30, ignore_eos=True, seed=i))
        for i in range(60)
    ]
    rows.append(Row(row_id="text", prompt="the stoun of prai", sampling=SamplingSpec(max_tokens=5, ignore_eos=True)))
    rows.append(Row(row_id="too-long", prompt_token_ids=[9] * 600))  # context is 512
    job = make_job(tiny_s, tmp_path, rows, engine=ENGINE | {"max_num_batched_tokens": 256, "max_num_seqs": 16})
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    loaded = worker.wait_for("loaded", timeout=LOAD_TIMEOUT)
    assert (loaded.max_model_len, loaded.max_num_batched_tokens, loaded.max_num_seqs) == (512, 256, 16)
    # Seeded rows under chunked prefill crash vLLM's CPU runner: the worker drops the seeds.
    assert any("seeds ignored" in note for note in loaded.notes)
    finished = worker.wait_for("finished", timeout=120)
    assert worker.wait(timeout=60) == 0
    assert (finished.rows_done, finished.rows_total, finished.rows_failed) == (62, 62, 1)

    lines = result_lines(job.result_path)
    results = read_results(job.result_path)
    assert len(lines) == len(results) == 62  # each row exactly once
    failed = results.pop("too-long")
    assert failed.finish_reason == "error" and "512" in failed.error and failed.output_tokens == 0
    by_id = {row.row_id: row for row in rows}
    for row_id, r in results.items():
        assert r.output_tokens == by_id[row_id].sampling.max_tokens
        if by_id[row_id].prompt_token_ids is not None:
            assert r.prompt_tokens == len(by_id[row_id].prompt_token_ids)

    # Every token computed is in exactly one iteration's shape: a row's prompt as prefill, then
    # one decode per output token but the last (no preemption, no prefix cache here).
    records = read_iterations(job.iteration_log_path)
    assert len(records) == finished.iterations
    assert sum(x.num_preempted for x in records) == 0
    assert sum(x.prefill_tokens for x in records) == sum(r.prompt_tokens for r in results.values())
    assert sum(x.decode_seqs for x in records) == sum(r.output_tokens - 1 for r in results.values())
    assert all(x.num_tokens <= 256 and x.num_seqs <= 16 for x in records)
    assert {x.phase for x in records} == {"prefill", "decode", "mixed"}
    assert all(x.iter_latency_s >= x.exec_s > 0 for x in records)


def test_stop_keeps_finished_rows_and_restart_runs_only_the_rest(tiny_s, tmp_path):
    job = make_job(tiny_s, tmp_path, long_rows(60), engine=ENGINE | {"max_num_seqs": 4})
    first = EngineWorker(job, tmp_path / "w1")
    first.start()
    first.wait_for("loaded", timeout=LOAD_TIMEOUT)
    wait_rows_done(first, 6)
    processes = tree(first.pid)
    assert first.stop(timeout=60) == EXIT_STOPPED
    assert first.terminal.event == "stopped"
    assert all_gone(processes)

    kept = result_lines(job.result_path)
    assert 6 <= len(kept) < 60
    assert first.terminal.rows_done == len(kept)
    first_iterations = len(read_iterations(job.iteration_log_path))

    second = EngineWorker(job, tmp_path / "w2")
    second.start()
    started = second.wait_for("started", timeout=60)
    assert started.rows_done == len(kept)
    finished = second.wait_for("finished", timeout=LOAD_TIMEOUT + 300)
    assert second.wait(timeout=60) == 0
    lines = result_lines(job.result_path)
    assert lines[: len(kept)] == kept  # nothing rewritten
    assert sorted(r.row_id for r in iter_results(job.result_path)) == [f"r{i:03d}" for i in range(60)]
    assert len(lines) == 60  # none run twice
    assert finished.rows_done == 60
    # The second run computed only the missing rows' prompts.
    missing = {f"r{i:03d}" for i in range(60)} - {RowResult.model_validate_json(k).row_id for k in kept}
    second_records = read_iterations(job.iteration_log_path)[first_iterations:]
    assert len(second_records) == finished.iterations
    prompt_tokens = {r.row_id: r.prompt_tokens for r in iter_results(job.result_path)}
    assert sum(x.prefill_tokens for x in second_records) == sum(prompt_tokens[r] for r in missing)


def short_rows(prefix: str, n: int) -> list[Row]:
    return [Row(row_id=f"{prefix}{i}", prompt_token_ids=[5 + (3 * i + j) % 200 for j in range(6 + i % 9)],
                sampling=SamplingSpec(max_tokens=4 + i % 7, ignore_eos=True)) for i in range(n)]


def test_engine_kept_for_handoffs_runs_the_next_rows_without_a_second_load(tiny_s, tmp_path):
    # Takeover: a node's rows, then the next node's (same model) on the same engine, then exit.
    job = make_job(tiny_s, tmp_path, short_rows("a", 12), handoff_dir=str(tmp_path / "handoffs"))
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    worker.wait_for("loaded", timeout=LOAD_TIMEOUT)
    assert worker.wait_for("finished", timeout=120).rows_done == 12
    assert worker.wait_for("waiting", timeout=30).handoff == 1
    assert worker.is_alive() and worker.terminal.event == "finished"

    second = Handoff(rows=short_rows("b", 9), result_path=str(tmp_path / "b.jsonl"),
                     iteration_log_path=str(tmp_path / "b-iterations.jsonl"))
    worker.hand_off(second)
    started = worker.wait_for("started", timeout=30)
    assert (started.rows_total, started.rows_done) == (9, 0)
    finished = worker.wait_for("finished", timeout=120)
    assert (finished.rows_done, finished.rows_failed) == (9, 0)
    assert worker.wait_for("waiting", timeout=30).handoff == 2
    worker.hand_off(Handoff(exit=True))
    assert worker.wait(timeout=60) == 0

    assert sorted(read_results(job.result_path)) == sorted(f"a{i}" for i in range(12))
    b_results = read_results(second.result_path)
    assert sorted(b_results) == sorted(f"b{i}" for i in range(9))
    assert all(r.output_tokens == 4 + int(k[1:]) % 7 for k, r in b_results.items())
    assert len(read_iterations(second.iteration_log_path)) == finished.iterations > 0
    assert sum(isinstance(e, type(worker.loaded)) for e in worker.history) == 1  # one engine load


def test_engine_loaded_ahead_of_its_rows_then_idle_worker_ends_itself(tiny_s, tmp_path):
    # Preloading: no rows yet, the engine loads and waits; rows come later; then nothing more
    # comes and the worker gives its devices back after idle_timeout_s.
    job = make_job(tiny_s, tmp_path, [], handoff_dir=str(tmp_path / "handoffs"), idle_timeout_s=3.0)
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    assert worker.wait_for("loaded", timeout=LOAD_TIMEOUT).load_s > 0
    assert worker.wait_for("waiting", timeout=30).handoff == 1
    worker.hand_off(Handoff(rows=short_rows("c", 7), result_path=str(tmp_path / "c.jsonl")))
    assert worker.wait_for("finished", timeout=120).rows_done == 7
    assert worker.wait_for("waiting", timeout=30).handoff == 2
    processes = tree(worker.pid)
    stopped = worker.wait_for("stopped", timeout=60)
    assert "no handoff within 3 s" in stopped.reason
    assert worker.wait(timeout=60) == EXIT_STOPPED
    assert all_gone(processes)
    assert sorted(read_results(str(tmp_path / "c.jsonl"))) == sorted(f"c{i}" for i in range(7))


def test_kill_9_loses_no_row_reported_finished(tiny_s, tmp_path):
    job = make_job(tiny_s, tmp_path, long_rows(40), engine=ENGINE | {"max_num_seqs": 4})
    worker = EngineWorker(job, tmp_path / "w1")
    worker.start()
    worker.wait_for("loaded", timeout=LOAD_TIMEOUT)
    reported = wait_rows_done(worker, 4)
    os.kill(worker.pid, signal.SIGKILL)
    assert worker.wait(timeout=30) == -signal.SIGKILL
    assert worker.terminal is None
    on_disk = read_results(job.result_path)
    assert len(on_disk) >= reported.rows_done

    again = EngineWorker(job, tmp_path / "w2")
    again.start()
    assert again.wait_for("started", timeout=60).rows_done == len(on_disk)
    again.wait_for("finished", timeout=LOAD_TIMEOUT + 300)
    assert again.wait(timeout=60) == 0
    final = read_results(job.result_path)
    assert sorted(final) == [f"r{i:03d}" for i in range(40)]
    assert all(final[k] == v for k, v in on_disk.items())  # finished rows were not re-run
    assert len(result_lines(job.result_path)) == 40


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="TP=2 needs two cores")
def test_tp2_worker_killed_with_9_leaves_no_rank_process(tiny_s, tmp_path):
    job = make_job(tiny_s, tmp_path, long_rows(40), tensor_parallel_size=2,
                   device_ids=sorted(os.sched_getaffinity(0))[:2])
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    worker.wait_for("loaded", timeout=LOAD_TIMEOUT)
    processes = tree(worker.pid)
    assert len(processes) >= 3  # the worker and its two rank processes
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone: its ranks are orphaned
    worker.wait(timeout=30)  # reaps it and sweeps its process group
    assert all_gone(processes)


def test_engine_that_cannot_start_reports_vllm_error(tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    job = make_job(not_a_model, tmp_path, [Row(row_id="a", prompt="x")])
    worker = EngineWorker(job, tmp_path / "w")
    worker.start()
    event = worker.wait_for("error", timeout=LOAD_TIMEOUT)
    assert event.stage == "load"
    assert "no-such-architecture" in event.message
    assert worker.wait(timeout=60) == EXIT_ERROR
    assert not Path(job.result_path).exists() or read_results(job.result_path) == {}
