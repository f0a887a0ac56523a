"""Requests per node: which rows, how long each prompt is, and (sampled) how long each output is.

Per node: the rows it sees (its dataset's rows, kept by `where`, routed to it by its router),
minus rows already done. Input length of a row = the prompt's own tokens (literal text plus the
columns it reads, counted from `token_counts` columns when the dataset gives them, else
estimated from text) plus the output tokens of each upstream node it reads. Output lengths are
drawn per sample from the model's length distribution, truncated by `max_tokens` and by
`max_model_len - input_len`.

Samples use common random numbers: sample s draws every node's outputs from one seeded stream
per (s, node), and a downstream node's inputs in sample s use its upstream's outputs of the same
sample. So plans compared on sample s see the same requests, and a judge's prompt lengths follow
the answers it judges. Until a router has run, each row goes to one of its routed nodes with
the declared shares (equal by default), drawn per sample.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from samullm import templates
from samullm.datasets import LoadedDataset, ResolvedApp
from samullm.errors import UserInputError
from samullm.state import PlannerState


class LengthSampler(Protocol):
    def sample(self, n: int, rng: np.random.Generator, max_tokens: int | None = None,
               caps: np.ndarray | None = None) -> np.ndarray: ...


@dataclass
class NodeRequests:
    node: str
    rows: np.ndarray  # row ids of the node's dataset, in submission order
    input_lens: np.ndarray
    output_lens: np.ndarray

    @property
    def n(self) -> int:
        return int(self.rows.size)


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def _token_value(value: Any, count: Any, key: Any) -> int:
    """Tokens of one referenced cell: from its token-count column when given, else its text."""
    if key is not None:
        if isinstance(value, (list, tuple)) or isinstance(count, (list, tuple)):
            try:
                if count is not None:
                    return int(count[key])
                value = value[key]
            except (IndexError, KeyError, TypeError):
                return 0
        elif isinstance(value, dict):
            value = value.get(key, "")
    elif count is not None:
        return int(count) if not isinstance(count, (list, tuple)) else int(sum(count))
    return templates.estimate_tokens("" if value is None else str(value))


def static_prompt_tokens(data: LoadedDataset, prompt: str, rows: np.ndarray, upstream: set[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Per-row prompt tokens without upstream outputs, and how often each upstream is read."""
    shape = templates.template_shape(prompt)
    counts = data.token_counts
    if shape.simple:
        tokens = np.full(rows.size, shape.literal_tokens, dtype=np.int64)
        uses: dict[str, int] = {}
        for ref in shape.references:
            if ref.name in upstream:
                uses[ref.name] = uses.get(ref.name, 0) + 1
                continue
            count_col = counts.get(ref.name)
            tokens += np.fromiter(
                (
                    _token_value(data.rows[r].get(ref.name), data.rows[r].get(count_col) if count_col else None, ref.key)
                    for r in rows
                ),
                dtype=np.int64,
                count=rows.size,
            )
        return tokens, uses
    # A template with control flow: render each row; token-count columns replace their text by
    # a filler of the right length, upstream outputs by a marker counted separately.
    marker = "\x00UP\x00"
    uses = {u: 0 for u in upstream}
    out = np.empty(rows.size, dtype=np.int64)
    filler_per_token = "x" * int(templates.CHARS_PER_TOKEN)
    for j, r in enumerate(rows):
        row = dict(data.rows[r])
        for text_col, count_col in counts.items():
            c = row.get(count_col)
            if isinstance(c, (list, tuple)):
                row[text_col] = [filler_per_token * int(x) for x in c]
            elif c is not None:
                row[text_col] = filler_per_token * int(c)
        for u in upstream:
            row[u] = f"{marker}{u}{marker}"
        text = templates.render(prompt, row)
        for u in upstream:
            found = text.count(f"{marker}{u}{marker}")
            uses[u] = max(uses[u], found)
            text = text.replace(f"{marker}{u}{marker}", "")
        out[j] = templates.estimate_tokens(text)
    return out, {u: k for u, k in uses.items() if k}


class Workloads:
    """Requests of every node of an application, per sample (memoised)."""

    def __init__(
        self,
        resolved: ResolvedApp,
        lengths: Callable[[str], LengthSampler],
        max_model_len: Callable[[str], int],
        state: PlannerState | None = None,
        seed: int = 0,
    ) -> None:
        self.resolved = resolved
        self.app = resolved.app
        self.lengths = lengths
        self.max_model_len = max_model_len
        self.state = state or PlannerState()
        self.seed = seed
        self.order = self.app.topological_order()
        self._static: dict[str, tuple[np.ndarray, dict[str, int]]] = {}
        self._samples: dict[int, dict[str, NodeRequests]] = {}
        self._all_rows: dict[int, dict[str, np.ndarray]] = {}

    def _static_tokens(self, name: str) -> tuple[np.ndarray, dict[str, int]]:
        """Prompt tokens over all rows the node could see (indexed by row id)."""
        if name not in self._static:
            node = self.app.node(name)
            data = self.resolved.dataset(name)
            rows = np.arange(len(data.rows))
            self._static[name] = static_prompt_tokens(data, node.prompt, rows, set(self.app.prompt_inputs(name)))
        return self._static[name]

    def _routed_rows(self, sample: int) -> dict[str, np.ndarray]:
        """Rows each routed node receives in this sample (observed once its router has run)."""
        out: dict[str, np.ndarray] = {}
        routers = {n.route.router for n in self.app.nodes if n.route is not None}
        for router in routers:
            targets = self.app.routed_by(router)
            known = {t: np.asarray(self.state.observed.routes[t], dtype=np.int64)
                     for t in targets if t in self.state.observed.routes}
            if len(known) == len(targets):
                out.update(known)
                continue
            shares = [self.app.node(t).route.share for t in targets]
            given = sum(s for s in shares if s is not None)
            if given > 1.0 + 1e-9:
                raise UserInputError(f"router {router!r}: the shares of its routed nodes add to {given:.3f} > 1")
            unset = sum(1 for s in shares if s is None)
            fill = (1.0 - given) / unset if unset else 0.0
            probs = np.array([s if s is not None else fill for s in shares] + [max(0.0, 1.0 - given - fill * unset)])
            probs = probs / probs.sum()
            router_rows = self.resolved.rows_of[router]
            rng = np.random.default_rng(_seed(self.seed, sample, "route", router))
            pick = rng.choice(len(probs), size=router_rows.size, p=probs)
            for i, t in enumerate(targets):
                out[t] = known.get(t, router_rows[pick == i])
        return out

    def sample(self, sample: int) -> dict[str, NodeRequests]:
        if sample in self._samples:
            return self._samples[sample]
        routed = self._routed_rows(sample)
        outputs: dict[str, dict[str, np.ndarray]] = {}  # node -> row-indexed output tokens
        result: dict[str, NodeRequests] = {}
        for name in self.order:
            node = self.app.node(name)
            data = self.resolved.dataset(name)
            rows = self.resolved.rows_of[name]
            if name in routed:
                rows = np.intersect1d(rows, routed[name])
            static, uses = self._static_tokens(name)
            inputs = static[rows].copy()
            ratios = self.state.observed.prompt_tokens_per_output_token
            for up, k in uses.items():
                ratio = ratios.get(self.app.node(up).model, 1.0)
                read = outputs[up][rows]
                inputs += k * (read if ratio == 1.0 else np.rint(read * ratio).astype(np.int64))
            cap = self.max_model_len(name)
            if node.sampling.max_tokens >= cap:
                raise UserInputError(
                    f"node {name!r}: max_tokens {node.sampling.max_tokens} leaves no room for a prompt "
                    f"in max_model_len {cap}; lower max_tokens or raise max_model_len"
                )
            # Prompts longer than the context are cut, as a prompt template would be.
            inputs = np.minimum(inputs, cap - 1)
            rng = np.random.default_rng(_seed(self.seed, sample, "out", name))
            if node.sampling.ignore_eos:  # every output runs to its limit: nothing to sample
                outs = np.minimum(node.sampling.max_tokens, cap - inputs)
            else:
                outs = self.lengths(name).sample(rows.size, rng, max_tokens=node.sampling.max_tokens, caps=cap - inputs)
            outs = np.maximum(np.asarray(outs, dtype=np.int64), 1)
            observed = self.state.observed.output_tokens.get(name)
            if observed:
                pos = {int(r): i for i, r in enumerate(rows)}
                for r, tok in observed.items():
                    if int(r) in pos:
                        outs[pos[int(r)]] = int(tok)
            full = np.zeros(len(data.rows), dtype=np.int64)
            full[rows] = outs
            outputs[name] = full
            done = self.state.done_rows.get(name)
            keep = np.ones(rows.size, dtype=bool)
            if name in self.state.finished:
                keep[:] = False
            elif done:
                keep = ~np.isin(rows, np.asarray(done, dtype=np.int64))
            result[name] = NodeRequests(name, rows[keep], inputs[keep], outs[keep])
        self._samples[sample] = result
        return result
