"""The runner's pure parts on hand-made cases: device pool, plan application, stage records,
row sets and prompts, job options, observations, several runs planned as one."""

from __future__ import annotations

import numpy as np
import pytest

from samullm.datasets import resolve
from samullm.devices import DeviceSet
from samullm.errors import UserInputError
from samullm.graph import application_from_dict
from samullm.planner import PlannerOptions, search
from samullm.runtime import feedback, jobs
from samullm.runtime.pool import DevicePool
from samullm.runtime.reconcile import Placement, diff_stage, stage_placements
from samullm.runtime.rows import FILLER, node_rows, render_prompt, with_context
from samullm.runtime.stages import StageMember, StageTracker
from samullm.runtime.union import UnionCoster, member_name, split_name, split_schedule
from samullm.schedule import NodeSpan, Schedule, Stage, StageNode
from samullm.timeline import Launch, Timeline
from samullm.plans import ExecPlan
from samullm.worker.messages import IterationRecord, Loaded, Row, RowResult
from tests.toy import ToyCoster, ToyNode, pairs

# --- device pool -----------------------------------------------------------------------------


def test_pool_never_books_a_device_twice():
    pool = DevicePool([0, 1, 2, 3])
    assert pool.try_acquire("a", [0, 1])
    assert not pool.try_acquire("b", [1, 2])  # 1 is a's: nothing taken
    assert pool.free() == {2, 3}
    assert pool.try_acquire("b", [2])
    assert pool.try_acquire("a", [0])  # its own device again: fine
    assert pool.busy() == {0: "a", 1: "a", 2: "b"}
    assert pool.release("a") == {0, 1}
    assert pool.try_acquire("b", [1, 3]) and pool.held_by("b") == {1, 2, 3}
    with pytest.raises(ValueError, match="unknown device"):
        pool.try_acquire("c", [7])


def test_pool_hands_devices_over_without_freeing_them():
    pool = DevicePool([0, 1, 2])
    assert pool.try_acquire("node", [0, 1])
    assert pool.transfer("node", "idle engine") == {0, 1}
    assert pool.busy() == {0: "idle engine", 1: "idle engine"} and pool.held_by("node") == set()
    assert not pool.try_acquire("other", [1])


# --- applying stages[0] ------------------------------------------------------------------------


def P(tp, *replicas):
    return Placement.of(tp, replicas)


def test_diff_keeps_same_placement_stops_moved_and_paused_launches_new():
    stage = {"a": P(1, [0]), "b": P(2, [2, 3]), "c": P(1, [1])}
    running = {"a": P(1, [0]), "b": P(1, [2]), "d": P(1, [1])}
    diff = diff_stage(stage, running, launchable={"c"})
    assert diff.keep == {"a"}
    assert set(diff.stop) == {"b", "d"}
    assert "moved" in diff.stop["b"] and "TP2 on devices [2, 3]" in diff.stop["b"]
    assert diff.stop["d"] == "paused by the plan"
    assert diff.launch == {"c": P(1, [1])}
    # b is launched where the stage says only once it is no longer running (its engine exited)
    later = diff_stage(stage, {"a": P(1, [0])}, launchable={"b", "c"})
    assert later.launch == {"b": P(2, [2, 3]), "c": P(1, [1])} and later.keep == {"a"}


def test_placement_ignores_replica_and_device_order():
    assert P(1, [3], [1]) == P(1, [1], [3])
    assert P(2, [1, 0]).devices == (0, 1) and P(1, [2], [0]).dp == 2
    assert diff_stage({"a": P(1, [1], [0])}, {"a": P(1, [0], [1])}, set()).keep == {"a"}


def test_a_stage_member_that_may_not_run_yet_is_not_launched():
    diff = diff_stage({"judge": P(1, [0])}, {}, launchable=set())
    assert not diff.launch and not diff.stop


def test_preload_members_of_a_stage_are_not_run_by_the_runtime():
    def sn(node, action, replicas):
        return StageNode(node=node, model="m", tp=1, dp=len(replicas), devices=sorted(d for r in replicas for d in r),
                         replicas=replicas, action=action, requests_total=4, requests_done_before=0,
                         requests_done_after=0)

    stage = stage_placements([sn("a", "start", [[0]]), sn("judge", "preload", [[1]])])
    assert stage == {"a": P(1, [0])}
    # even if the judge became launchable meanwhile, the preload does not launch it there
    assert diff_stage(stage, {}, launchable={"a", "judge"}).launch == {"a": P(1, [0])}


# --- actual stages -----------------------------------------------------------------------------


def test_stage_tracker_opens_on_every_change_and_closes_when_idle():
    t = StageTracker()
    a = StageMember("a", 1, 1, (0,), 1)
    b = StageMember("b", 1, 1, (1,), 2)
    b2 = StageMember("b", 2, 1, (0, 1), 3)
    assert t.update([]) is None
    assert t.update([a, b]) == ("open", [a, b])
    assert t.update([b, a]) is None  # same set
    assert t.update([b]) == ("open", [b])
    assert t.update([b2]) == ("open", [b2])  # moved: another launch
    assert t.update([]) == ("close", [])


# --- rows and prompts --------------------------------------------------------------------------

ROUTED = {
    "name": "r",
    "dataset": {"rows": [{"q": "one"}, {"q": "two"}, {"q": "three"}, {"q": "four"}]},
    "nodes": [
        {"name": "router", "model": "m", "prompt": "{{ q }}"},
        {"name": "small", "model": "m", "prompt": "S: {{ q }}", "route": {"router": "router", "equals": "Small"}},
        {"name": "big", "model": "m", "prompt": "B: {{ q }}", "route": {"router": "router", "equals": "big"}},
        {"name": "judge", "model": "m", "where": "q != 'two'", "prompt": "{{ q }}|{{ small }}|{{ big }}|{{ tag }}"},
    ],
}


def test_routed_rows_follow_the_router_output_stripped_and_casefolded():
    resolved = resolve(with_context(application_from_dict(ROUTED), {"tag": "x"}))
    router = {"0": " small\n", "1": "BIG", "2": "medium", "3": "Small"}
    assert node_rows(resolved, "small", router) == ["0", "3"]
    assert node_rows(resolved, "big", router) == ["1"]
    assert node_rows(resolved, "judge") == ["0", "2", "3"]  # where keeps all but row 1
    with pytest.raises(ValueError, match="routed"):
        node_rows(resolved, "small")


def test_prompt_reads_row_upstream_outputs_and_context_with_overrides():
    resolved = resolve(with_context(application_from_dict(ROUTED), {"tag": "ctx", "q": "never"}))
    upstream = {"small": {"0": "s0"}, "big": {"3": "b3"}}
    # An upstream without an output for the row reads as empty text (as the planner assumed);
    # a row column wins over the run's context; a submit override replaces a context value.
    assert render_prompt(resolved, "judge", "0", upstream) == "one|s0||ctx"
    assert render_prompt(resolved, "judge", "3", upstream, {"tag": "over"}) == "four||b3|over"


def test_template_failing_on_a_row_is_a_user_error_naming_the_row():
    app = application_from_dict({
        "dataset": {"rows": [{"chunks": ["a", "b"]}, {"chunks": ["c"]}]},
        "nodes": [{"name": "s", "model": "m", "prompt": "{{ chunks[1] }}"}],
    })
    resolved = resolve(app)
    assert render_prompt(resolved, "s", "0", {}) == "b"
    with pytest.raises(UserInputError, match="row 1"):
        render_prompt(resolved, "s", "1", {})


def test_rows_known_only_by_token_count_get_a_filler_of_that_length():
    app = application_from_dict({
        "dataset": {"synthetic": {"num_rows": 3, "mean_tokens": 5, "column": "p"}},
        "nodes": [{"name": "n", "model": "m", "prompt": "Q:{{ p }}"}],
    })
    resolved = resolve(app)
    assert render_prompt(resolved, "n", "2", {}) == "Q:" + FILLER * 5


# --- jobs ---------------------------------------------------------------------------------------


def _node(engine=None, sampling=None):
    app = application_from_dict({
        "dataset": {"rows": [{"q": 1}]},
        "nodes": [{"name": "n", "model": "/m", "prompt": "{{ q }}", "engine": engine or {}, "sampling": sampling or {}}],
    })
    return app, app.node("n")


def test_cpu_engines_get_a_fixed_kv_cache_eager_mode_and_bfloat16():
    _, node = _node({"max_model_len": 512, "gpu_memory_utilization": 0.9})
    cpu = jobs.worker_engine_options(node, "cpu", 1 << 26)
    assert (cpu.kv_cache_memory_bytes, cpu.gpu_memory_utilization, cpu.enforce_eager, cpu.dtype) == (1 << 26, None, True, "bfloat16")
    assert cpu.max_model_len == 512
    gpu = jobs.worker_engine_options(node, "gpu", 1 << 26)
    assert (gpu.kv_cache_memory_bytes, gpu.gpu_memory_utilization, gpu.enforce_eager, gpu.dtype) == (None, 0.9, False, "auto")
    _, node = _node({"extra": {"kv_cache_memory_bytes": 1 << 20, "block_size": 16}})
    opts = jobs.worker_engine_options(node, "cpu", 1 << 26)
    assert (opts.kv_cache_memory_bytes, opts.block_size) == (1 << 20, 16)


def test_unknown_engine_extra_is_refused_before_anything_runs():
    app, _ = _node({"extra": {"swap_space": 4}})
    with pytest.raises(UserInputError, match="swap_space"):
        jobs.check_engine_options(app)


def test_job_binds_one_replica_and_splits_rows_round_robin():
    _, node = _node(sampling={"max_tokens": 7, "ignore_eos": True})
    devices = DeviceSet("cpu", (0, 1, 2, 3), ((4,), (5,), (6,), (7,)))
    job = jobs.make_job(node, 2, (2, 3), devices, [Row(row_id="0", prompt="x")], "/r.jsonl", "/i.jsonl")
    assert (job.tensor_parallel_size, job.device_ids, job.device_cores) == (2, [2, 3], [[4], [5], [6], [7]])
    assert (job.sampling.max_tokens, job.sampling.ignore_eos) == (7, True)
    assert jobs.split_rows(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert jobs.split_rows(["a"], 3) == [["a"], [], []]


# --- observations --------------------------------------------------------------------------------


def _result(row, tokens, reason="stop", error=None):
    return RowResult(row_id=row, text="", prompt_tokens=3, output_tokens=tokens, finish_reason=reason,
                     error=error, finished_at=0.0)


def test_rows_cut_by_a_limit_are_censored_and_failed_rows_left_out():
    payload = feedback.output_lengths_payload(
        [_result("0", 5), _result("1", 16, "length"), _result("2", 0, "error", "too long")], "n")
    assert payload == {"node": "n", "lengths": [5, 16], "censored": [False, True]}


def _iteration(step, decode_seqs, seconds):
    return IterationRecord(step=step, wave=0, start_s=0, iter_latency_s=seconds, exec_s=seconds, sample_s=0,
                           schedule_s=0, prefill_seqs=0, prefill_tokens=0, prefill_attention=0,
                           decode_seqs=decode_seqs, decode_context=10 * decode_seqs, decode_max_context=10,
                           context_tokens=0, max_seq_len=10, num_waiting=0, num_preempted=0, num_finished=0)


class PerSequence:
    """A latency model computable on paper: 1 ms per decoding sequence."""

    kind, source = "test", "paper"

    def iteration_time(self, batch):
        return 0.001 * batch.decode_seqs

    def decode_run_time(self, decode_seqs, decode_context, num_iterations):
        return 0.001 * decode_seqs * num_iterations


def test_latency_correction_is_wall_time_over_predicted_time_of_the_same_iterations():
    iterations = [_iteration(i, 4, 0.01) for i in range(5000)]  # model says 4 ms, wall 10 ms
    payload = feedback.latency_payload(iterations, wall_seconds=60.0)
    assert payload["count"] == 5000 and len(payload["iterations"]) == feedback.MAX_ITERATIONS_KEPT
    assert payload["iter_s"] == pytest.approx(50.0)
    # predicted for all 5000 iterations from the sample: 5000 * 4 ms = 20 s; wall 60 s -> 3x
    assert feedback.predicted_seconds(payload, PerSequence()) == pytest.approx(20.0)
    assert feedback.pooled_factor([(60.0, 20.0), (20.0, 20.0)]) == pytest.approx(2.0)
    assert feedback.pooled_factor([]) is None
    assert feedback.pooled_factor([(1000.0, 1.0)]) == feedback.FACTOR_BOUNDS[1]
    scaled = feedback.ScaledLatency(PerSequence(), 3.0)
    assert scaled.decode_run_time(2, 0, 10) == pytest.approx(0.06)


def test_engine_limits_keep_what_the_engine_reported():
    loaded = Loaded(time=0, import_s=1, load_s=2, max_model_len=512, max_num_seqs=256,
                    max_num_batched_tokens=4096, block_size=128, kv_cache_blocks=999)
    payload = feedback.engine_limits_payload(loaded, {"dtype": "bfloat16"})
    assert payload["block_size"] == 128 and payload["kv_cache_blocks"] == 999 and payload["options"] == {"dtype": "bfloat16"}


# --- several runs planned as one -------------------------------------------------------------------


def test_union_coster_keeps_each_runs_graph_and_costs_apart():
    one = ToyCoster({"a": ToyNode(4), "j": ToyNode(2, deps=("a",))}, pairs(2))
    two = ToyCoster({"a": ToyNode(2, unit=2.0)}, pairs(2))
    union = UnionCoster([one, two])
    assert union.nodes() == ["0/a", "0/j", "1/a"]
    assert union.upstream("0/j") == ["0/a"] and union.upstream("1/a") == []
    assert union.engine_key("0/a") != union.engine_key("1/a")
    assert union.run_times("1/a", ExecPlan(1), np.arange(2), 0).tolist() == [2.0, 4.0]
    assert split_name(member_name(12, "x")) == (12, "x")
    # Run side by side on the two devices, the second run's node ends at 4 s, the first's at 4 s
    tl = Timeline.start(union, 0)
    record = tl.apply({"0/a": Launch(ExecPlan(1)), "1/a": Launch(ExecPlan(1))})
    devices = [record.members[n].replicas for n in ("0/a", "1/a")]
    assert set(devices[0][0]).isdisjoint(devices[1][0])
    result = search(lambda: Timeline.start(union, 0), PlannerOptions())
    assert result.makespan <= 6.0  # a: 4, j after it: 2 more; the other run fits beside


def test_split_schedule_gives_each_run_its_own_nodes_and_finish():
    def sn(node, devices):
        return StageNode(node=node, model="m", tp=1, dp=1, devices=devices, replicas=[devices], action="start",
                         requests_total=1, requests_done_before=0, requests_done_after=1)

    schedule = Schedule(
        application="x+y", node_spec="cpu", num_devices=2, method="samullm", makespan=9.0,
        stages=[
            Stage(index=0, nodes=[sn("0/a", [0]), sn("1/b", [1])], start=0, end=4, ends_with="1/b"),
            Stage(index=1, nodes=[sn("0/a", [0]), sn("0/c", [1])], start=4, end=9, ends_with="0/a"),
        ],
        spans=[NodeSpan(node="0/a", model="m", start=0, end=9), NodeSpan(node="1/b", model="m", start=0, end=4)],
    )
    mine = split_schedule(schedule, 1, "y", ["run-x"])
    assert [[n.node for n in s.nodes] for s in mine.stages] == [["b"]]
    assert mine.makespan == 4.0 and mine.application == "y" and "run-x" in mine.notes[-1]
    theirs = split_schedule(schedule, 0, "x", [])
    assert [s.index for s in theirs.stages] == [0, 1]
    assert theirs.stages[0].ends_with == "b (another run)" and theirs.stages[1].ends_with == "a"
    assert theirs.makespan == 9.0


def test_retokenized_outputs_are_counted_on_a_sample_of_successful_rows(tiny_s):
    rows = [RowResult(row_id=str(i), text="a b c", prompt_tokens=3, output_tokens=2, finish_reason="stop",
                      error=None, finished_at=0.0) for i in range(4)]
    rows.append(_result("x", 0, "error", "too long"))
    payload = feedback.retokenized_payload(rows, "n", lambda text: len(text.split()))
    assert payload == {"node": "n", "generated": 8, "retokenized": 12}
    assert feedback.retokenized_payload(rows, "n", None) is None
    count = feedback.load_tokenizer(str(tiny_s))
    assert count is not None and count("hello world, hello") > 0
    assert feedback.load_tokenizer("/no/such/model") is None


def test_prompt_tokens_per_output_token_pools_the_latest_and_is_bounded(tmp_path):
    from samullm.store import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    observations = feedback.Observations(store, "cpu-core")
    assert observations.prompt_tokens_per_output_token("m") is None
    store.add_observation("m", "retokenized", {"node": "a", "generated": 100, "retokenized": 140})
    store.add_observation("m", "retokenized", {"node": "b", "generated": 300, "retokenized": 460})
    assert observations.prompt_tokens_per_output_token("m") == pytest.approx(600 / 400)
    store.add_observation("z", "retokenized", {"node": "a", "generated": 10, "retokenized": 1000})
    assert observations.prompt_tokens_per_output_token("z") == feedback.RATIO_BOUNDS[1]
    store.close()


def test_observed_start_up_is_the_median_of_the_latest(tmp_path):
    from samullm.store import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    observations = feedback.Observations(store, "cpu-core")
    assert observations.load_seconds("m", 1) is None
    for seconds in (10.0, 30.0, 12.0):
        store.add_observation("m", "load", {"seconds": seconds}, device="cpu-core", tp=1)
    store.add_observation("m", "load", {"seconds": 99.0}, device="other", tp=1)
    store.add_observation("m", "load", {"seconds": 99.0}, device="cpu-core", tp=2)
    assert observations.load_seconds("m", 1) == 12.0
    store.close()


def test_replica_slowdown_is_the_median_slowest_over_mean_per_dp_width(tmp_path):
    from samullm.store import Store

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    observations = feedback.Observations(store, "cpu-core")
    assert observations.replica_slowdowns() == {}
    for elapsed in ([10.0, 12.0], [10.0, 11.0], [8.0, 8.0]):  # 12/11, 11/10.5, 1
        store.add_observation("m1", "replica_balance", feedback.replica_balance_payload(elapsed),
                              device="cpu-core", tp=1)
    store.add_observation("m2", "replica_balance", feedback.replica_balance_payload([1.0, 1.0, 1.0, 3.0]),
                          device="cpu-core", tp=1)  # 3 / 1.5 = 2, any model counts
    store.add_observation("m1", "replica_balance", feedback.replica_balance_payload([1.0, 9.0]),
                          device="other", tp=1)  # another device does not count
    assert observations.replica_slowdowns() == pytest.approx({2: 11 / 10.5, 4: 2.0})
    store.close()


def test_runtime_coster_applies_cpu_limits_latency_correction_and_start_up(tmp_path, tiny_s):
    from costmodel.hardware import cpu_node
    from costmodel.latency import latency_model_for
    from costmodel.models import load_model_spec

    from samullm.store import Store

    node_spec = cpu_node()
    app = application_from_dict({
        "dataset": {"rows": [{"q": "x"}] * 3},
        "nodes": [{"name": "a", "model": str(tiny_s), "prompt": "{{ q }}", "sampling": {"max_tokens": 4},
                   "engine": {"max_model_len": 256}}],
    })
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    device = node_spec.devices[0].name
    observations = feedback.Observations(store, device)
    options = jobs.worker_engine_options(app.node("a"), "cpu", 1 << 26)

    def coster():
        return feedback.runtime_coster(app, resolve(app), node_spec, None, observations,
                                       engine_options=lambda n: options.model_dump(), kv_bytes=lambda n: 1 << 26)

    spec = load_model_spec(str(tiny_s))
    plain = coster().models["a"]
    assert plain.engine_config(1).block_size == jobs.CPU_BLOCK_SIZE
    assert plain.kv_blocks[1] == (1 << 26) // (spec.kv_bytes_per_token(1) * jobs.CPU_BLOCK_SIZE)
    assert plain.latency(1) is latency_model_for(spec, 1, node_spec.devices[0])

    iterations = [_iteration(i, 2, 0.01) for i in range(50)]
    payload = feedback.latency_payload(iterations, wall_seconds=3.0)
    store.add_observation(str(tiny_s), "latency", payload, device=device, tp=1)
    store.add_observation(str(tiny_s), "engine_limits",
                          {"max_model_len": 256, "max_num_seqs": 7, "max_num_batched_tokens": 300, "block_size": 64,
                           "kv_cache_blocks": 55, "options": options.model_dump()}, device=device, tp=1)
    store.add_observation(str(tiny_s), "load", {"seconds": 4.5}, device=device, tp=1)
    learned = coster().models["a"]
    config = learned.engine_config(1)
    assert (config.block_size, config.max_num_seqs, config.max_num_batched_tokens) == (64, 7, 300)
    assert learned.kv_blocks[1] == 55 and learned.load(1) == 4.5
    base = latency_model_for(spec, 1, node_spec.devices[0])
    expected = 3.0 / feedback.predicted_seconds(payload, base)
    assert isinstance(learned.latency(1), feedback.ScaledLatency)
    assert learned.latency(1).factor == pytest.approx(min(expected, feedback.FACTOR_BOUNDS[1]))
    store.close()


# --- engines kept for the next node of the same model (runtime/warm.py) ----------------------

def _idle_engine(key: str, placement: Placement):
    from samullm.runtime.warm import IdleEngine

    return IdleEngine(1, "run", "first", key, placement, workers=[])


def test_an_idle_engine_is_kept_only_for_a_node_the_plan_runs_on_it_before_its_devices_serve_another():
    from samullm.runtime.warm import engine_key, wanted
    from samullm.worker.messages import EngineOptions

    key = engine_key("m", EngineOptions(max_model_len=128))
    assert key == engine_key("m", EngineOptions(max_model_len=128))
    assert key != engine_key("m", EngineOptions(max_model_len=256)) and key != engine_key("n", EngineOptions(max_model_len=128))
    other = engine_key("n", EngineOptions())
    engine = _idle_engine(key, Placement.of(1, [[1], [0]]))
    same, elsewhere = Placement.of(1, [[0], [1]]), Placement.of(1, [[2]])
    assert wanted(engine, [[(key, same, True)]])  # replicas in any order
    assert wanted(engine, [[(other, elsewhere, True)], [(key, same, True)]])  # a later stage, devices untouched before
    assert not wanted(engine, [[(other, Placement.of(1, [[0]]), True)], [(key, same, True)]])  # device 0 serves n first
    assert not wanted(engine, [[(key, Placement.of(2, [[0, 1]]), True)]])  # another plan on the same devices
    assert not wanted(engine, [[(key, Placement.of(1, [[0]]), True)]])  # a part of it
    assert not wanted(engine, [[(other, same, True)]])
    assert not wanted(engine, [[(other, elsewhere, True)]]) and not wanted(engine, [])


def test_a_replica_ends_idle_when_its_worker_has_finished_its_rows_and_waits(tmp_path):
    import time

    from samullm.runtime.launch import Replica
    from samullm.worker import EngineWorker, Handoff, JobSpec
    from samullm.worker.messages import Finished, Started, Waiting

    def finished(total):
        return Finished(time=time.time(), rows_done=total, rows_total=total, rows_failed=0, output_tokens=total,
                        iterations=total, elapsed_s=1.0)

    job = JobSpec(model="m", rows=[], result_path=str(tmp_path / "a.jsonl"), handoff_dir=str(tmp_path / "h"))
    worker = EngineWorker(job, tmp_path / "w")  # never started: its events are set by hand
    worker.history = [Started(time=0, pid=1, rows_total=2, rows_done=0), finished(2), Waiting(time=0, handoff=1)]
    rep = Replica(0, (0,), ["x", "y", "z"])
    rep.take_over(worker, Handoff(rows=[Row(row_id=r, prompt=r) for r in "xyz"], result_path=str(tmp_path / "b.jsonl")))
    assert (tmp_path / "h" / "1.json").exists() and rep.took_over
    assert not rep.waiting()  # the earlier node's Finished and Waiting are not this replica's
    worker.history += [Started(time=0, pid=1, rows_total=3, rows_done=0), finished(3)]
    assert not rep.waiting()  # finished, but the worker has not said it waits yet
    worker.history.append(Waiting(time=0, handoff=2))
    assert rep.waiting()
    rep.settle_idle()
    assert (rep.outcome, rep.ended, rep.idle, rep.finished.rows_total) == ("finished", True, True, 3)
