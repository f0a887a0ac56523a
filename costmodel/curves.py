"""Piecewise-linear curves of one variable, evaluated in a few hundred nanoseconds.

A `Curve` is given by knots (x ascending, y). It is evaluated through a table of its values at
every integer up to its last knot (built once), so a call is an index, a subtraction and a
multiply: no search and no numpy allocation, as the simulator's hot path needs. Below the first
knot it holds the first value; beyond the last it continues along its last segment ("linear")
or holds the last value ("constant").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from costmodel.errors import UserInputError

# Dense tables stop here; larger arguments are rare and computed from the knots directly.
MAX_TABLE = 1 << 17


@dataclass(frozen=True)
class Curve:
    x: tuple[float, ...]
    y: tuple[float, ...]
    extrapolate: str = "linear"  # "linear" | "constant"
    _table: list[float] = field(init=False, repr=False, compare=False)
    _tail_slope: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or not self.x:
            raise UserInputError("a curve needs as many y as x values, at least one")
        xs = np.asarray(self.x, dtype=float)
        if np.any(np.diff(xs) <= 0):
            raise UserInputError("curve knots must be strictly increasing")
        if self.extrapolate not in ("linear", "constant"):
            raise UserInputError(f"curve extrapolation {self.extrapolate!r} is not linear|constant")
        last = int(min(np.ceil(xs[-1]), MAX_TABLE))
        table = np.interp(np.arange(last + 1, dtype=float), xs, np.asarray(self.y, dtype=float))
        slope = 0.0
        if self.extrapolate == "linear" and len(xs) > 1:
            slope = (self.y[-1] - self.y[-2]) / (xs[-1] - xs[-2])
        object.__setattr__(self, "_table", table.tolist())
        object.__setattr__(self, "_tail_slope", float(slope))

    def __call__(self, value: float) -> float:
        table = self._table
        i = int(value)
        if 0 <= i < len(table) - 1:
            low = table[i]
            return low + (value - i) * (table[i + 1] - low)
        return self._outside(value)

    def _outside(self, value: float) -> float:
        if value <= self.x[0]:
            return self.y[0]
        if value >= self.x[-1]:
            return self.y[-1] + self._tail_slope * (value - self.x[-1])
        return float(np.interp(value, self.x, self.y))  # beyond the dense table

    def evaluate(self, values) -> np.ndarray:
        """The curve at many points at once, each exactly as `__call__` computes it (the same
        table, the same arithmetic): for costing many simulated iterations with numpy."""
        values = np.asarray(values, dtype=float)
        table = self._table_array
        whole = np.trunc(values)  # int(value)
        inside = (whole >= 0) & (whole < len(table) - 1)
        i = np.where(inside, whole, 0).astype(np.intp)
        low = table[i]
        high = table[np.minimum(i + 1, len(table) - 1)]
        result = low + (values - whole) * (high - low)
        if inside.all():
            return result
        return np.where(inside, result, self._outside_many(values))

    def _outside_many(self, values: np.ndarray) -> np.ndarray:
        """`_outside` at many points."""
        tail = self.y[-1] + self._tail_slope * (values - self.x[-1])
        between = np.interp(values, self.x, self.y)
        return np.where(values <= self.x[0], self.y[0],
                        np.where(values >= self.x[-1], tail, between))

    @cached_property
    def _table_array(self) -> np.ndarray:
        return np.asarray(self._table, dtype=float)

    def at(self, values) -> np.ndarray:
        """The curve at many points at once (numpy; for building models, not the hot path).
        It interpolates the knots, not the table: `evaluate` is what matches `__call__` to the
        last bit."""
        values = np.asarray(values, dtype=float)
        xs = np.asarray(self.x, dtype=float)
        out = np.interp(values, xs, np.asarray(self.y, dtype=float))
        if self._tail_slope:
            out = np.where(values > xs[-1], self.y[-1] + self._tail_slope * (values - xs[-1]), out)
        return out

    def simplified(self, rel_tol: float = 2e-4) -> "Curve":
        """The same curve with the knots dropped that linear interpolation between the kept
        neighbours reproduces within `rel_tol` (relative) at every dropped knot."""
        x = np.asarray(self.x, dtype=float)
        y = np.asarray(self.y, dtype=float)
        if len(x) <= 2:
            return self
        keep = [0]
        start = 0
        for end in range(2, len(x)):
            span = slice(start + 1, end)
            line = y[start] + (y[end] - y[start]) * (x[span] - x[start]) / (x[end] - x[start])
            tol = rel_tol * np.maximum(np.abs(y[span]), 1e-12)
            if np.any(np.abs(line - y[span]) > tol):
                keep.append(end - 1)
                start = end - 1
        keep.append(len(x) - 1)
        return Curve(tuple(x[keep]), tuple(y[keep]), self.extrapolate)

    def to_dict(self) -> dict[str, Any]:
        return {"x": [_compact(v) for v in self.x], "y": [float(f"{v:.6g}") for v in self.y],
                "extrapolate": self.extrapolate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Curve":
        return cls(tuple(float(v) for v in data["x"]), tuple(float(v) for v in data["y"]),
                   data.get("extrapolate", "linear"))

    @classmethod
    def constant(cls, value: float) -> "Curve":
        return cls((1.0,), (float(value),), "constant")


def _compact(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(f"{value:.6g}")


def hat_weights(knots, values, extrapolate: str = "constant"):
    """Linear-interpolation weights of each value on its two neighbouring knots:
    (left index, right index, left weight, right weight), so that for any knot values y,
    curve(values) = wl * y[left] + wr * y[right]. Beyond the last knot the weights continue
    the last segment when `extrapolate` is "linear", else they hold the last knot."""
    knots = np.asarray(knots, dtype=float)
    values = np.asarray(values, dtype=float)
    if len(knots) == 1:
        zeros = np.zeros(len(values), dtype=int)
        return zeros, zeros, np.ones(len(values)), np.zeros(len(values))
    clipped = np.clip(values, knots[0], knots[-1])
    right = np.clip(np.searchsorted(knots, clipped, side="right"), 1, len(knots) - 1)
    left = right - 1
    span = knots[right] - knots[left]
    frac = (clipped - knots[left]) / span
    if extrapolate == "linear":
        frac = np.where(values > knots[-1], (values - knots[left]) / span, frac)
    return left, right, 1.0 - frac, frac
