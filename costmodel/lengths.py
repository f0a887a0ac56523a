"""Output lengths: how many tokens a model's outputs will have, before it runs.

A `LengthDistribution` is a discrete distribution over positive token counts (support values and
their cumulative probabilities). It is built from
- a PMF (`from_pmf`: pmf[i] = P(length = i + 1)), exact;
- a compact inverse-CDF table (`from_table`: knots (level, length), linear between knots, a
  repeated length = an atom), the form shipped in costmodel/data/;
- observed lengths (`from_observations`), where an output that hit its cap (max_tokens or
  max_model_len) is right-censored: its natural length exceeds the cap. Kaplan-Meier.

`combine(prior, lengths, censored)` mixes a prior (the shipped table) with a model's own
observations. Rule: the prior counts as `prior_weight` pseudo-observations (default 100). Per
length x the hazard is
    h(x) = (w * f0(x) + d(x)) / (w * S0(x-) + n(x)),
with f0, S0 the prior's PMF and survival, d(x) the uncensored observations of length x and n(x)
the observations at risk (length or cap >= x). Without censoring this is the Dirichlet-process
posterior mean (w * prior + counts) / (w + n): with n observations the prior's share is
w / (w + n), so the model's own lengths take over as they accumulate. With censoring it is the
matching Beta-process estimate: beyond the observed caps the prior's shape continues.

`sample(n, rng, max_tokens=..., caps=...)` draws by inverse transform and truncates by both
(caps = max_model_len - input_len per request, as vLLM stops a request at max_model_len).

Shipped defaults (`default_lengths(model)`): per-model tables derived from the no_robots PMFs,
and a generic table derived from the ShareGPT trace's outputs for models without one. Rebuild
them with `python -m costmodel.lengths` (reads the shared data).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from costmodel.errors import UserInputError
from costmodel.paths import package_data, shared_data

DEFAULT_PRIOR_WEIGHT = 100.0
MODEL_TABLES = "output_lengths.json"
GENERIC_TABLE = "output_lengths_default.json"
PMF_SOURCE = "no_robots_output_length_pmf.json"
GENERIC_SOURCE = "traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
GENERIC_SOURCE_CAP = 1024  # the trace's outputs were capped at 1,024 tokens

# Knot levels of the shipped tables: every percentile, finer in the upper tail (where long
# outputs decide the end of a run), plus both ends of every atom of >= ATOM_MASS.
TABLE_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101),
                                         np.linspace(0.99, 1.0, 11),
                                         np.linspace(0.999, 1.0, 11),
                                         [0.99995, 0.99999, 0.999999]]))
ATOM_MASS = 0.005


@dataclass(frozen=True, eq=False)
class LengthDistribution:
    """P(length <= values[i]) = cdf[i]; values increasing positive integers, cdf[-1] = 1."""

    values: np.ndarray
    cdf: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.int64)
        cdf = np.asarray(self.cdf, dtype=float)
        if values.ndim != 1 or values.size == 0 or values.shape != cdf.shape:
            raise UserInputError("a length distribution needs matching, non-empty value and "
                                 "probability lists")
        if values[0] < 1 or np.any(np.diff(values) <= 0):
            raise UserInputError("length values must be increasing positive integers")
        if np.any(np.diff(cdf) < -1e-12) or cdf[0] < 0 or abs(cdf[-1] - 1.0) > 1e-6:
            raise UserInputError("cumulative probabilities must rise to 1")
        cdf = np.maximum.accumulate(np.clip(cdf, 0.0, 1.0))
        cdf[-1] = 1.0
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "cdf", cdf)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_pmf(cls, pmf: Sequence[float] | np.ndarray, *, source: str = "") -> LengthDistribution:
        """pmf[i] = P(length = i + 1); normalised here."""
        pmf = np.asarray(pmf, dtype=float)
        if pmf.ndim != 1 or pmf.size == 0 or np.any(pmf < 0) or not np.isfinite(pmf).all():
            raise UserInputError("a PMF must be a non-empty list of non-negative numbers")
        total = pmf.sum()
        if total <= 0:
            raise UserInputError("a PMF must have positive total mass")
        support = np.flatnonzero(pmf > 0)
        return cls(values=support + 1, cdf=np.cumsum(pmf[support]) / total, source=source)

    @classmethod
    def from_table(cls, levels: Sequence[float], values: Sequence[int], *,
                   source: str = "") -> LengthDistribution:
        """From inverse-CDF knots: at cumulative probability levels[k] the length is values[k].
        Between knots of different lengths the CDF is linear; a length repeated over a range
        of levels is an atom of that mass. levels run from 0 to 1."""
        levels = np.asarray(levels, dtype=float)
        knots = np.asarray(values, dtype=float)
        if levels.shape != knots.shape or levels.size < 2:
            raise UserInputError("a length table needs as many levels as values (at least 2)")
        order = np.lexsort((knots, levels))
        levels, knots = levels[order], knots[order]
        if abs(levels[0]) > 1e-9 or abs(levels[-1] - 1.0) > 1e-9:
            raise UserInputError("a length table's levels must run from 0 to 1")
        if np.any(np.diff(knots) < 0) or knots[0] < 1 or np.any(knots != np.round(knots)):
            raise UserInputError("a length table's values must be whole, positive and rise "
                                 "with the levels")
        unique, first = np.unique(knots, return_index=True)
        last = np.r_[first[1:] - 1, knots.size - 1]
        q_first, q_last = levels[first], levels[last]
        x = np.arange(unique[0], unique[-1] + 1)
        j = np.searchsorted(unique, x, side="right") - 1
        nxt = np.minimum(j + 1, unique.size - 1)
        span = np.where(nxt > j, unique[nxt] - unique[j], 1.0)
        ramp = q_last[j] + (q_first[nxt] - q_last[j]) * (x - unique[j]) / span
        cdf = np.where(unique[j] == x, q_last[j], ramp)
        pmf = np.diff(np.r_[0.0, cdf])
        dense = np.zeros(int(unique[-1]))
        dense[x.astype(np.int64) - 1] = np.clip(pmf, 0.0, None)
        return cls.from_pmf(dense, source=source)

    @classmethod
    def from_observations(cls, lengths: Sequence[int] | np.ndarray,
                          censored: Sequence[bool] | np.ndarray | None = None, *,
                          source: str = "") -> LengthDistribution:
        """Kaplan-Meier fit. censored[i]: output i hit its cap, so its natural length exceeds
        lengths[i]. Mass beyond the largest censored length sits at that length (what a run
        with that cap outputs)."""
        lengths, censored = _observations(lengths, censored)
        if lengths.size == 0:
            raise UserInputError("cannot fit a length distribution to no observations")
        return cls.from_pmf(_hazard_fit(None, 0.0, lengths, censored), source=source)

    @classmethod
    def point(cls, length: int, *, source: str = "") -> LengthDistribution:
        """Every output has `length` tokens."""
        return cls(values=np.array([int(length)]), cdf=np.array([1.0]), source=source)

    # ---- statistics -------------------------------------------------------------------------
    def pmf(self) -> np.ndarray:
        """Dense PMF: index i holds P(length = i + 1)."""
        dense = np.zeros(int(self.values[-1]))
        dense[self.values - 1] = np.diff(np.r_[0.0, self.cdf])
        return dense

    @property
    def max_length(self) -> int:
        return int(self.values[-1])

    def mean(self) -> float:
        return float(np.dot(self.values, np.diff(np.r_[0.0, self.cdf])))

    def std(self) -> float:
        probs = np.diff(np.r_[0.0, self.cdf])
        mean = np.dot(self.values, probs)
        return float(np.sqrt(max(np.dot(self.values.astype(float) ** 2, probs) - mean**2, 0.0)))

    def quantile(self, q: float | np.ndarray) -> np.ndarray | int:
        """Smallest length whose cumulative probability reaches q."""
        index = np.minimum(np.searchsorted(self.cdf, np.asarray(q) - 1e-12, side="left"),
                           self.values.size - 1)
        result = self.values[index]
        return int(result) if np.ndim(result) == 0 else result

    def expected(self, max_tokens: int | np.ndarray | None = None,
                 caps: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
        """E[min(length, max_tokens, cap)] per request: what a mean-length estimate plugs in."""
        limit = _limits(max_tokens, caps, n)
        probs = np.diff(np.r_[0.0, self.cdf])
        # E[min(X, c)] = sum_x P(X = x) * min(x, c), for every distinct c.
        unique, inverse = np.unique(limit, return_inverse=True)
        means = np.array([np.dot(np.minimum(self.values, c), probs) for c in unique])
        return means[inverse]

    # ---- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator, *,
               max_tokens: int | np.ndarray | None = None,
               caps: np.ndarray | None = None) -> np.ndarray:
        """n lengths by inverse transform, truncated by max_tokens (scalar or per request) and
        by caps (per request, e.g. max_model_len - input_len)."""
        index = np.searchsorted(self.cdf, rng.random(n), side="right")
        lengths = self.values[np.minimum(index, self.values.size - 1)]
        if max_tokens is None and caps is None:
            return lengths
        return np.minimum(lengths, _limits(max_tokens, caps, n))

    # ---- compact form -----------------------------------------------------------------------
    def to_table(self, levels: np.ndarray = TABLE_LEVELS, atom_mass: float = ATOM_MASS
                 ) -> dict[str, list]:
        """Inverse-CDF knots at `levels`, plus both ends of every atom of >= atom_mass and of
        the masses at the minimum and maximum lengths, so that atoms survive exactly (a model
        that often stops at once, or often runs to its maximum length). `from_table` reads it
        back."""
        probs = np.diff(np.r_[0.0, self.cdf])
        knots = {(0.0, int(self.values[0])), (1.0, int(self.values[-1]))}
        for q in levels[(levels > 0) & (levels < 1)]:
            knots.add((float(q), int(self.quantile(q))))
        atoms = np.flatnonzero(probs >= atom_mass)
        for k in np.union1d(atoms, [0, self.values.size - 1]):
            start = float(self.cdf[k - 1]) if k else 0.0
            if k:  # close the segment below at the previous length: the atom gets all its mass
                knots.add((start, int(self.values[k - 1])))
            knots.add((start, int(self.values[k])))
            knots.add((float(self.cdf[k]), int(self.values[k])))
        # A level inside an atom names the atom's value; keep knots monotone in both columns.
        ordered = sorted(knots)
        table_levels = [round(q, 9) for q, _ in ordered]
        table_values = [v for _, v in ordered]
        return {"levels": table_levels, "values": table_values}


# ---- prior and observations -------------------------------------------------------------------

def combine(prior: LengthDistribution, lengths: Sequence[int] | np.ndarray,
            censored: Sequence[bool] | np.ndarray | None = None, *,
            prior_weight: float = DEFAULT_PRIOR_WEIGHT) -> LengthDistribution:
    """The prior refined by observed lengths (rule in the module docstring)."""
    if prior_weight < 0:
        raise UserInputError("prior_weight must be >= 0")
    lengths, censored = _observations(lengths, censored)
    if lengths.size == 0:
        return prior
    pmf = _hazard_fit(prior.pmf(), float(prior_weight), lengths, censored)
    source = f"{prior.source or 'prior'} (weight {prior_weight:g}) + {lengths.size} observations"
    return LengthDistribution.from_pmf(pmf, source=source)


def _observations(lengths, censored) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise UserInputError("observed lengths must be a one-dimensional list")
    if lengths.size and (np.any(lengths < 1) or np.any(lengths != np.round(lengths))):
        raise UserInputError("observed lengths must be whole numbers >= 1")
    lengths = lengths.astype(np.int64)
    if censored is None:
        censored = np.zeros(lengths.size, dtype=bool)
    censored = np.asarray(censored, dtype=bool)
    if censored.shape != lengths.shape:
        raise UserInputError(
            f"{lengths.size} observed lengths but {censored.size} censoring flags")
    return lengths, censored


def _hazard_fit(prior_pmf: np.ndarray | None, weight: float, lengths: np.ndarray,
                censored: np.ndarray) -> np.ndarray:
    """Dense PMF from the discrete hazard h(x) = (w f0(x) + d(x)) / (w S0(x-) + n(x))."""
    size = int(max(lengths.max(), 0 if prior_pmf is None else prior_pmf.size))
    f0 = np.zeros(size)
    if prior_pmf is not None:
        f0[:prior_pmf.size] = prior_pmf / prior_pmf.sum()
    events = np.bincount(lengths[~censored] - 1, minlength=size)[:size].astype(float)
    exits = np.bincount(lengths[censored] - 1, minlength=size)[:size].astype(float)
    at_risk = np.cumsum((events + exits)[::-1])[::-1]
    prior_at_risk = np.cumsum(f0[::-1])[::-1]
    numerator = weight * f0 + events
    denominator = weight * prior_at_risk + at_risk
    hazard = np.divide(numerator, denominator, out=np.ones(size), where=denominator > 0)
    survival = np.cumprod(1.0 - np.clip(hazard, 0.0, 1.0))
    pmf = np.r_[1.0, survival[:-1]] - survival
    pmf[-1] += survival[-1]  # mass beyond the last length seen: at that length
    return np.clip(pmf, 0.0, None)


def _limits(max_tokens, caps, n: int | None) -> np.ndarray:
    parts = []
    if max_tokens is not None:
        parts.append(np.asarray(max_tokens, dtype=np.int64))
    if caps is not None:
        parts.append(np.asarray(caps, dtype=np.int64))
    if not parts:
        if n is None:
            raise UserInputError("give max_tokens or caps")
        return np.full(n, np.iinfo(np.int64).max)
    limit = parts[0] if len(parts) == 1 else np.minimum(parts[0], parts[1])
    if n is not None:
        limit = np.broadcast_to(limit, (n,))
    if np.any(limit < 1):
        raise UserInputError(
            "a request has no room for output: its max_tokens or max_model_len - input_len is "
            "below 1; drop requests whose prompt fills max_model_len")
    return limit


# ---- shipped defaults -------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _shipped(name: str) -> dict:
    path = package_data(name)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as err:
        raise UserInputError(f"shipped length table {str(path)!r} is missing: {err}") from err


def shipped_length_models() -> list[str]:
    """Models with their own shipped output-length table."""
    return sorted(_shipped(MODEL_TABLES)["models"])


def default_lengths(model: str) -> LengthDistribution:
    """The shipped output-length distribution of `model` (matched like model specs: exact,
    last path component, case-insensitive), else the generic default."""
    from costmodel.models import match_model_name

    tables = _shipped(MODEL_TABLES)
    key = match_model_name(model, tables["models"])
    if key is not None:
        entry = tables["models"][key]
        return LengthDistribution.from_table(entry["levels"], entry["values"],
                                             source=f"{MODEL_TABLES}:{key}")
    generic = _shipped(GENERIC_TABLE)
    return LengthDistribution.from_table(generic["levels"], generic["values"],
                                         source=f"{GENERIC_TABLE} (no table for {model!r})")


def derive_tables(pmf_path: Path, trace_path: Path) -> tuple[dict, dict]:
    """Rebuild the two shipped tables from the shared data."""
    with open(pmf_path, encoding="utf-8") as handle:
        pmfs = json.load(handle)["pmf"]
    models = {}
    for name, pmf in pmfs.items():
        dist = LengthDistribution.from_pmf(pmf)
        models[name] = {**dist.to_table(), "mean": round(dist.mean(), 3),
                        "max_length": len(pmf)}
    per_model = {
        "source": f"../shared/data/{PMF_SOURCE}",
        "method": ("inverse-CDF knots of each model's output-length PMF (no_robots prompts, "
                   "temperature 1.0): every percentile, every 0.1% above the 99th and 0.01% "
                   "above the 99.9th, 99.995%, 99.999%, 99.9999%, plus both ends of every atom "
                   f"of >= {ATOM_MASS:g} and of the mass at the maximum length (outputs cut "
                   "there); read with "
                   "LengthDistribution.from_table"),
        "models": models,
    }
    from costmodel.requests import load_request_csv

    outputs = load_request_csv(trace_path).output_lens
    dist = LengthDistribution.from_observations(outputs, outputs >= GENERIC_SOURCE_CAP)
    generic = {
        "source": f"../shared/data/{GENERIC_SOURCE}",
        "method": (f"Kaplan-Meier fit of the trace's {outputs.size} output lengths, those at "
                   f"the trace's cap of {GENERIC_SOURCE_CAP} tokens censored; same knots as "
                   f"{MODEL_TABLES}"),
        **dist.to_table(), "mean": round(dist.mean(), 3),
    }
    return per_model, generic


def _write_shipped_tables() -> None:
    per_model, generic = derive_tables(shared_data(PMF_SOURCE), shared_data(GENERIC_SOURCE))
    for name, table in ((MODEL_TABLES, per_model), (GENERIC_TABLE, generic)):
        path = package_data(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_compact_json(table) + "\n")
        print(f"wrote {path}")


def _compact_json(table: dict) -> str:
    """Indented JSON with every list (and every model's entry) on one line."""
    lines = ["{"]
    items = list(table.items())
    for k, (key, value) in enumerate(items):
        comma = "," if k < len(items) - 1 else ""
        if key == "models":
            lines.append(f' "models": {{')
            models = list(value.items())
            for j, (name, entry) in enumerate(models):
                end = "," if j < len(models) - 1 else ""
                lines.append(f"  {json.dumps(name)}: {json.dumps(entry)}{end}")
            lines.append(f" }}{comma}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines)


if __name__ == "__main__":
    _write_shipped_tables()
