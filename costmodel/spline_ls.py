"""Penalised least squares over piecewise-linear curves (a smoothing spline on knots).

A model that is a sum of terms `multiplier * curve(query)` is linear in the curves' knot values,
so fitting it to measurements is one least-squares problem. `SplineDesign` collects the terms
row by row (each row touches two knots per curve, so the design is stored sparse and the normal
equations are accumulated directly), adds for each curve a penalty on its changes of slope
(which fills knots without data and keeps the curve smooth between measured points) and on steps
where steps are allowed, and solves.

Each curve's unknowns are scaled by a typical magnitude (`Block.scale`), so the penalties and the
relative-error data term are dimensionless and comparable across curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodel.curves import hat_weights


@dataclass
class Block:
    """One curve (or a scalar: a single knot) among the unknowns.

    smoothing: weight of the slope-change penalty (0: none); log_axis: slopes measured
    against log(x); breaks: knot indices i whose segment (i, i+1) may step (only the step's
    size is penalised, by step_penalty); ridge: pull of every knot towards zero."""

    name: str
    knots: np.ndarray
    scale: float
    extrapolate: str = "constant"
    smoothing: float = 0.0
    log_axis: bool = False
    breaks: frozenset = frozenset()
    step_penalty: float = 0.0
    ridge: float = 0.0
    nonnegative: bool = False  # a negative solution is pinned to zero and re-solved
    offset: int = 0


class SplineDesign:
    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self.blocks: dict[str, Block] = {}
        self.num_cols = 0
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self.pinned: np.ndarray | None = None  # unknowns held at zero by the last solve

    def add_block(self, block: Block) -> Block:
        block.knots = np.asarray(block.knots, dtype=float)
        block.offset = self.num_cols
        self.num_cols += len(block.knots)
        self.blocks[block.name] = block
        return block

    def add_term(self, name: str, rows: np.ndarray, query, multiplier) -> None:
        """Rows `rows` gain multiplier * curve_name(query)."""
        rows = np.asarray(rows, dtype=int)
        if len(rows) == 0:
            return
        block = self.blocks[name]
        query = np.broadcast_to(np.asarray(query, dtype=float), rows.shape)
        multiplier = np.broadcast_to(np.asarray(multiplier, dtype=float), rows.shape)
        left, right, wl, wr = hat_weights(block.knots, query, block.extrapolate)
        for idx, w in ((left, wl), (right, wr)):
            self._rows.append(rows)
            self._cols.append(block.offset + idx)
            self._vals.append(w * multiplier * block.scale)

    def solve(self, target: np.ndarray, weights: np.ndarray,
              start: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Minimise sum((weights * (pred - target))^2) + penalties, with the knots of
        non-negative blocks kept >= 0; knot values per curve. `start`: the unknowns pinned at
        zero by an earlier solve of a similar design (a warm start; `self.pinned` after a
        solve)."""
        normal, rhs = self._normal_equations(np.asarray(target, float), np.asarray(weights, float))
        for block in self.blocks.values():
            _add_penalty(normal, block)
        # A faint pull towards zero keeps the system regular (curves no row reaches come out
        # as zero).
        diagonal = np.diag_indices_from(normal)
        normal[diagonal] += 1e-9 * normal[diagonal] + 1e-14 * max(float(np.mean(normal[diagonal])), 1e-12)
        guarded = np.zeros(self.num_cols, dtype=bool)
        for b in self.blocks.values():
            if b.nonnegative:
                guarded[b.offset: b.offset + len(b.knots)] = True
        theta, free = _nonnegative_solve(normal, rhs, guarded, start)
        self.pinned = ~free
        return {name: theta[b.offset: b.offset + len(b.knots)] * b.scale
                for name, b in self.blocks.items()}

    def predict(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Each row's model value for the given knot values (as `solve` returns them)."""
        theta = np.zeros(self.num_cols)
        for name, block in self.blocks.items():
            theta[block.offset: block.offset + len(block.knots)] = values[name] / block.scale
        rows = np.concatenate(self._rows)
        out = np.zeros(self.num_rows)
        np.add.at(out, rows, np.concatenate(self._vals) * theta[np.concatenate(self._cols)])
        return out

    def _normal_equations(self, target: np.ndarray, weights: np.ndarray):
        rows = np.concatenate(self._rows)
        cols = np.concatenate(self._cols)
        vals = np.concatenate(self._vals) * weights[rows]
        normal = np.zeros((self.num_cols, self.num_cols))
        _accumulate_gram(normal, rows, cols, vals, self.num_rows)
        rhs = np.zeros(self.num_cols)
        np.add.at(rhs, cols, vals * (target * weights)[rows])
        return normal, rhs


def _nonnegative_solve(normal: np.ndarray, rhs: np.ndarray, guarded: np.ndarray,
                       pinned: np.ndarray | None = None, max_iterations: int = 200
                       ) -> tuple[np.ndarray, np.ndarray]:
    """argmin 1/2 t'Nt - r't subject to t >= 0 where `guarded`: block principal pivoting
    (Kim & Park's variant of Judice & Pires): solve on the free set, then swap every guarded
    unknown that breaks the optimality conditions (free and negative, or pinned at zero while
    the gradient pushes it up), falling back to one swap at a time when the count of
    violations stops falling. Exact at convergence; without guarded unknowns, one solve.
    Returns the solution and the free set."""
    free = np.ones(len(rhs), dtype=bool)
    if pinned is not None and len(pinned) == len(rhs):
        free &= ~(pinned & guarded)
    best, grace = len(rhs) + 1, 3
    theta = np.zeros(len(rhs))
    for _ in range(max_iterations):
        theta = np.zeros(len(rhs))
        theta[free] = np.linalg.solve(normal[np.ix_(free, free)], rhs[free])
        if not guarded.any():
            return theta, free
        gradient = normal @ theta - rhs
        scale = np.sqrt(np.maximum(np.diag(normal), 1e-300))
        tolerance = 1e-10 * max(float(np.max(np.abs(rhs) / scale)), 1e-300)
        # both conditions in the same units (an unknown times the root of its curvature)
        violated = guarded & ((free & (theta * scale < -tolerance))
                              | (~free & (gradient / scale < -tolerance)))
        count = int(violated.sum())
        if count == 0:
            break
        if count < best:
            best, grace = count, 3
            free[violated] = ~free[violated]
        elif grace > 0:
            grace -= 1
            free[violated] = ~free[violated]
        else:
            last = int(np.flatnonzero(violated)[-1])
            free[last] = not free[last]
    theta[guarded & (theta < 0)] = 0.0
    return theta, free


def _accumulate_gram(normal: np.ndarray, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                     num_rows: int) -> None:
    """normal += X^T X for the sparse X given as (row, col, value) triples."""
    order = np.argsort(rows, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=num_rows)
    width = int(counts.max()) if len(counts) else 0
    if width == 0:
        return
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(rows)) - start[rows]
    col_grid = np.zeros((num_rows, width), dtype=int)
    val_grid = np.zeros((num_rows, width))
    col_grid[rows, slot] = cols
    val_grid[rows, slot] = vals
    outer = val_grid[:, :, None] * val_grid[:, None, :]
    size = normal.shape[0]
    flat = (col_grid[:, :, None] * size + col_grid[:, None, :]).ravel()
    normal += np.bincount(flat, weights=outer.ravel(), minlength=size * size).reshape(size, size)


def _add_penalty(normal: np.ndarray, block: Block) -> None:
    k = len(block.knots)
    entries: list[tuple[np.ndarray, np.ndarray]] = []  # (columns, values) per penalty row
    if k >= 3 and block.smoothing > 0:
        u = np.log(block.knots) if block.log_axis else block.knots
        segments = np.array([i for i in range(k - 1) if i not in block.breaks])
        a, b = segments[:-1], segments[1:]
        ha, hb = u[a + 1] - u[a], u[b + 1] - u[b]
        # sum of (change of slope)^2 / spacing approximates the integral of the squared second
        # derivative, so the penalty means the same on dense and sparse stretches of knots
        weight = block.smoothing / np.sqrt(0.5 * (ha + hb))
        cols = np.stack([a + 1, a, b + 1, b], axis=1)
        vals = np.stack([1 / ha, -1 / ha, -1 / hb, 1 / hb], axis=1) * weight[:, None]
        entries.append((cols, vals))
    if block.breaks and block.step_penalty > 0:
        steps = np.array(sorted(block.breaks))
        entries.append((np.stack([steps + 1, steps], axis=1),
                        np.tile([block.step_penalty, -block.step_penalty], (len(steps), 1))))
    for cols, vals in entries:
        n_rows, width = cols.shape
        rows = np.repeat(np.arange(n_rows), width)
        sub = np.zeros((k, k))
        _accumulate_gram(sub, rows, cols.ravel(), vals.ravel(), n_rows)
        normal[block.offset: block.offset + k, block.offset: block.offset + k] += sub
    if block.ridge > 0:
        idx = np.arange(block.offset, block.offset + k)
        normal[idx, idx] += block.ridge ** 2


# ---- knot layouts -------------------------------------------------------------------------------

def token_knots(values, dense_up_to: int = 1024, step: int = 16,
                jump_every: int = 64) -> tuple[np.ndarray, frozenset]:
    """Knots for a curve over token counts fitted to data at `values`: each distinct value
    (rounded to `step` tokens beyond `dense_up_to`), 1, and just past the largest; plus the
    pair k*jump_every, k*jump_every + 1 wherever data lie on both sides within jump_every
    tokens, whose segment may step (GEMM tile boundaries). Between data the curve is one
    straight segment: a long chain of knots no data reach would leave the least-squares
    problem nearly singular."""
    values = np.asarray(values, dtype=float)
    values = values[values >= 1]
    top = float(max(values.max() if len(values) else 2.0, 2.0))
    rounded = np.where(values <= dense_up_to, np.round(values), np.round(values / step) * step)
    knots = np.unique(np.concatenate([[1.0], rounded, [np.ceil(top) + step]]))
    jumps = np.arange(jump_every, top + 1, jump_every) if jump_every else np.array([])
    data = np.sort(values)
    pairs = []
    for j in jumps:
        below = np.searchsorted(data, j, side="right")  # data <= j
        if below and data[below - 1] > j - jump_every and below < len(data) and data[below] <= j + jump_every:
            pairs.extend([j, j + 1])
    knots = np.unique(np.concatenate([knots, pairs])).astype(float)
    at = np.searchsorted(knots, np.asarray(pairs[::2], dtype=float))
    breaks = frozenset(int(i) for i in at if i + 1 < len(knots) and knots[i + 1] == knots[i] + 1)
    return knots, breaks


def grid_knots(top: float, dense_up_to: int = 1024, step: int = 16, far_step: int = 256,
               step_until: int = 8192) -> np.ndarray:
    """An evaluation grid over token counts 1..top: every integer up to `dense_up_to`, every
    `step` up to `step_until`, every `far_step` beyond."""
    top = int(max(np.ceil(top), 2))
    parts = [np.arange(1, min(top, dense_up_to) + 1)]
    if top > dense_up_to:
        parts.append(np.arange(dense_up_to, min(top, step_until) + step, step))
    if top > step_until:
        parts.append(np.arange(step_until, top + far_step, far_step))
    return np.unique(np.concatenate(parts)).astype(float)


def log_knots(top: float, extra=()) -> np.ndarray:
    """Knots at 1, 2, 3, 4, 6, 8, 11, 16, ... (half powers of two) up to `top`, plus `extra`."""
    top = max(float(top), 2.0)
    grid = np.unique(np.round(2 ** np.arange(0, np.log2(top) + 0.75, 0.5)))
    extra = [v for v in extra if 1 <= v <= grid[-1]]
    return np.unique(np.concatenate([grid, extra])).astype(float)


def break_at(knots: np.ndarray, at: float) -> frozenset:
    """The break index for a step between knots `at` and the next one, if both exist."""
    i = int(np.searchsorted(knots, at))
    return frozenset([i]) if i + 1 < len(knots) and knots[i] == at else frozenset()


# ---- shaping fitted curves ----------------------------------------------------------------------

def isotonic_increasing(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit to `y` (pool adjacent violators)."""
    levels: list[float] = []
    sizes: list[int] = []
    for value in np.asarray(y, dtype=float):
        levels.append(value)
        sizes.append(1)
        while len(levels) > 1 and levels[-2] > levels[-1]:
            size = sizes[-2] + sizes[-1]
            level = (levels[-2] * sizes[-2] + levels[-1] * sizes[-1]) / size
            levels[-2:] = [level]
            sizes[-2:] = [size]
    return np.repeat(levels, sizes)


def with_secant_tail(knots: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append a knot at twice the last one on the secant through the curve's upper half, so
    that beyond the data a curve grows at its large-batch rate rather than at the slope of its
    last few knots."""
    last = float(knots[-1])
    half = float(np.interp(last / 2, knots, y))
    slope = max((float(y[-1]) - half) / (last / 2), 0.0)
    return np.append(knots, 2 * last), np.append(y, y[-1] + slope * last)
