"""Sampling-then-simulation: how long an engine takes when the output lengths are unknown.

Total time is not linear in the output lengths (batches shrink as requests finish, the KV cache
fills, long outputs decide the end), so plugging in the mean length is biased. Instead: draw every
request's output length from the model's distribution (truncated by max_tokens and by
max_model_len - input), simulate, and repeat K times; the K totals give the estimate and its
spread, the K finish-time arrays tell how much of the work is done at any time.

Samples are drawn from one generator seeded with `seed`, so two calls with the same requests and
seed see the same lengths: comparing engine plans then compares plans, not luck.
Engine start-up (weight loading) is not included; add costmodel.startup.load_seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from costmodel.engine_config import EngineConfig
from costmodel.errors import UserInputError
from costmodel.interface import LatencyModel
from costmodel.lengths import LengthDistribution
from costmodel.simulate import check_requests, simulate


@dataclass(frozen=True, eq=False)
class Estimate:
    """K simulated runs of one engine over one request set (row k = sample k)."""

    totals: np.ndarray  # (K,) seconds
    finish_times: np.ndarray  # (K, N) seconds from start per request
    output_lens: np.ndarray  # (K, N) the sampled output lengths
    num_iterations: np.ndarray  # (K,)
    num_preemptions: np.ndarray  # (K,)

    @property
    def samples(self) -> int:
        return int(self.totals.size)

    @property
    def mean(self) -> float:
        return float(self.totals.mean())

    @property
    def std(self) -> float:
        return float(self.totals.std(ddof=1)) if self.totals.size > 1 else 0.0

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.totals, q))

    def completed_fraction(self, seconds: float) -> float:
        """Expected fraction of the requests finished `seconds` after the start."""
        return float((self.finish_times <= seconds).mean())

    def remaining(self, seconds: float) -> np.ndarray:
        """(K, N) mask of requests still unfinished `seconds` after the start."""
        return self.finish_times > seconds


def sample_output_lengths(input_lens: np.ndarray, lengths: LengthDistribution,
                          max_tokens: int | np.ndarray, max_model_len: int, samples: int,
                          seed: int) -> np.ndarray:
    """(samples, N) output lengths: drawn, then truncated by max_tokens and max_model_len."""
    caps = max_model_len - np.asarray(input_lens, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.stack([lengths.sample(caps.size, rng, max_tokens=max_tokens, caps=caps)
                     for _ in range(samples)])


def estimate(input_lens: Sequence[int] | np.ndarray, lengths: LengthDistribution,
             max_tokens: int | np.ndarray, latency: LatencyModel, config: EngineConfig,
             num_kv_blocks: int, *, samples: int = 8, seed: int = 0) -> Estimate:
    """K = `samples` output-length samples, K simulations (see module docstring).

    max_tokens: the requests' max_tokens (scalar or per request), at most max_model_len.
    config: needs max_model_len (EngineConfig.resolved(spec.max_position_embeddings)).
    """
    if samples < 1:
        raise UserInputError(f"samples must be >= 1, got {samples}")
    if config.max_model_len is None:
        raise UserInputError("config.max_model_len is not set; resolve the config with the "
                             "model's max_position_embeddings first")
    max_model_len = int(config.max_model_len)
    inputs = np.asarray(input_lens)
    limit = np.asarray(max_tokens)
    if limit.ndim not in (0, 1) or (limit.ndim == 1 and limit.shape != inputs.shape):
        raise UserInputError("max_tokens must be one number or one per request")
    if np.any(limit < 1):
        raise UserInputError("max_tokens must be >= 1")
    if np.any(limit > max_model_len):
        raise UserInputError(f"max_tokens {int(limit.max())} exceeds max_model_len "
                             f"{max_model_len}; lower max_tokens (or raise max_model_len)")
    too_long = inputs >= max_model_len
    if np.any(too_long):
        i = int(np.argmax(too_long))
        raise UserInputError(
            f"request {i}: prompt of {int(inputs[i])} tokens leaves no room for output within "
            f"max_model_len {max_model_len} ({int(too_long.sum())} such requests); drop them")
    # Fail before any work when even the longest possible outputs could not run.
    worst = np.minimum(np.minimum(limit, lengths.max_length), max_model_len - inputs)
    check_requests(inputs, np.broadcast_to(worst, inputs.shape), config, num_kv_blocks)

    drawn = sample_output_lengths(inputs, lengths, max_tokens, max_model_len, samples, seed)
    results = [simulate(inputs, outputs, latency, config, num_kv_blocks) for outputs in drawn]
    return Estimate(totals=np.array([r.total_time for r in results]),
                    finish_times=np.stack([r.finish_times for r in results]),
                    output_lens=drawn,
                    num_iterations=np.array([r.num_iterations for r in results]),
                    num_preemptions=np.array([r.num_preemptions for r in results]))
