"""A speed probe: a few profile shapes run on a loaded engine right before its real work.

On a shared machine (a cloud VM's cores, CPU steal from neighbours) the same engine steps
take 20-25% longer or shorter from one hour to the next, which no latency model profiled
earlier can know. The probe measures how fast the engine runs now: a warm-up wave, then a
handful of the profiler's shapes (a prefill wave and decode waves at three batch sizes),
timed by the engine's own step records. Their measured time over the latency model's
prediction for the very same batches is the machine's current speed factor. On a dedicated
GPU it stays near 1.

The probe's rows are the profiler's (random prompts, imposed lengths) in waves before the
real rows; `split_records` tells the two apart by wave, and `probe_end_s` is when the real
rows start, so a caller times the real work alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from costmodel.interface import Batch, LatencyModel
from samullm.profiler import WARMUP_WAVE, Sweep, sweep_rows
from samullm.worker.messages import EngineOptions, IterationRecord, Row

# Shapes: one prefill wave filling most of the token budget, decode waves of 16, 64 and 256
# sequences at a few hundred tokens of context (the bulk of an offline run's steps).
PROBE_SWEEP = Sweep(
    prefill=((4, 512),),
    decode=((16, 256), (64, 256), (256, 128)),
    mixed=(),
    decode_steps=8,
)


def probe_rows(engine: EngineOptions, vocab_size: int, seed: int = 0) -> list[Row]:
    """The probe's rows for `engine` (waves 0 .. probe_waves - 1; wave 0 warms up)."""
    budget = engine.max_num_batched_tokens or 4096
    max_len = engine.max_model_len or 2048
    sweep = PROBE_SWEEP.fit(max_len, budget, engine.max_num_seqs or 256)
    return [row.model_copy(update={"row_id": f"probe-{row.row_id}"})
            for row in sweep_rows(sweep, vocab_size, budget, seed, max_model_len=max_len)]


def after_probe(rows: Sequence[Row], probe: Sequence[Row]) -> list[Row]:
    """`rows` moved to the waves after the probe's (their own order of waves kept)."""
    first = 1 + max((r.wave for r in probe), default=-1)
    return [row.model_copy(update={"wave": first + row.wave}) for row in rows]


def split_records(records: Sequence[IterationRecord], probe: Sequence[Row]
                  ) -> tuple[list[IterationRecord], list[IterationRecord]]:
    """(the probe's timed steps, warm-up left out; the real rows' steps)."""
    last = max((r.wave for r in probe), default=-1)
    timed = [r for r in records if WARMUP_WAVE < r.wave <= last]
    return timed, [r for r in records if r.wave > last]


def probe_end_s(records: Sequence[IterationRecord], probe: Sequence[Row]) -> float:
    """Seconds from the engine's start of work to the end of the probe's last step."""
    last = max((r.wave for r in probe), default=-1)
    ends = [r.start_s + r.iter_latency_s for r in records if r.wave <= last]
    return max(ends, default=0.0)


def batch_of(record: IterationRecord) -> Batch:
    return Batch(record.prefill_seqs, record.prefill_tokens, record.prefill_attention,
                 record.decode_seqs, record.decode_context, record.decode_max_context)


def speed_factor(latency: LatencyModel, timed: Sequence[IterationRecord]) -> float:
    """Measured time of the probe's steps over the latency model's time for the same batches
    (1.0 when nothing was timed)."""
    predicted = sum(latency.iteration_time(batch_of(r)) for r in timed)
    measured = sum(r.iter_latency_s for r in timed)
    if predicted <= 0 or measured <= 0:
        return 1.0
    return measured / predicted
