"""Which rows a node runs and the prompt of each, as the runner renders them.

A node's rows: its dataset's rows that its `where` filter keeps (`ResolvedApp.rows_of`) and,
for a routed node, those whose router output equals its `route.equals` (both stripped and
case-folded), in dataset order. Row ids are the row's index in its dataset, as text.

A prompt is rendered per row from the row's columns (the run's context, values every prompt may
read such as Airflow params, is added to every row as columns the row does not have: see
`with_context`), then `overrides` (the node's submit context for those context keys), then the
output text of every upstream node the prompt reads. An upstream without an output for the row (its `where` skipped
the row, or the row failed there) reads as empty text, which is also what the planner assumed.
Rows of request traces and synthetic datasets know only their prompt's token count: their empty
text columns are filled with a one-token filler word repeated that many times, so that the
engine sees prompts of the planned length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from samullm import templates
from samullm.datasets import LoadedDataset, ResolvedApp, load_rows
from samullm.errors import UserInputError
from samullm.graph import Application, Dataset

# One token in byte-level BPE and SentencePiece vocabularies alike (a common word with its
# leading space); tokenizers split on spaces first, so n copies make about n tokens.
FILLER = " the"


def route_matches(router_text: str, equals: str) -> bool:
    return router_text.strip().casefold() == equals.strip().casefold()


def node_rows(resolved: ResolvedApp, node: str, router_texts: Mapping[str, str] | None = None) -> list[str]:
    """Row ids the node runs. A routed node needs its router's texts (row id -> output)."""
    spec = resolved.app.node(node)
    rows = [int(r) for r in resolved.rows_of[node]]
    if spec.route is not None:
        if router_texts is None:
            raise ValueError(f"node {node!r} is routed: its router's outputs are needed")
        rows = [r for r in rows if route_matches(router_texts.get(str(r), ""), spec.route.equals)]
    return [str(r) for r in rows]


def _filled(value: Any, count: Any) -> Any:
    """Filler text for an empty text cell whose token count is known."""
    if isinstance(value, list) and isinstance(count, list):
        return [_filled(v, c) for v, c in zip(value, count)]
    if (value is None or value == "") and isinstance(count, (int, float)) and not isinstance(count, bool):
        return FILLER * int(count)
    return value


def row_columns(data: LoadedDataset, row: int) -> dict[str, Any]:
    """A row's columns, with known-length empty texts filled (see module docstring)."""
    columns = dict(data.rows[row])
    for text_col, count_col in data.token_counts.items():
        if count_col in columns:
            columns[text_col] = _filled(columns.get(text_col), columns[count_col])
    return columns


def with_context(app: Application, context: Mapping[str, Any]) -> Application:
    """The application with `context` added to every row of every dataset as columns (a row's
    own column of the same name wins), so that prompts may read those names; unchanged when
    the context is empty. Datasets become inline rows (token-count columns kept)."""
    if not context:
        return app
    datasets = {}
    for name, spec in app.datasets.items():
        loaded = LoadedDataset(name, spec, load_rows(spec))
        rows = [{**context, **row} for row in loaded.rows]
        datasets[name] = Dataset(rows=rows, token_counts=loaded.token_counts)
    return app.model_copy(update={"datasets": datasets})


def render_prompt(
    resolved: ResolvedApp,
    node: str,
    row_id: str,
    upstream_texts: Mapping[str, Mapping[str, str]],
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """The prompt of one row. upstream_texts: upstream node -> row id -> output text.
    Raises UserInputError when the template fails on this row."""
    spec = resolved.app.node(node)
    values: dict[str, Any] = row_columns(resolved.dataset(node), int(row_id))
    values.update(overrides or {})
    for up in resolved.app.prompt_inputs(node):
        values[up] = upstream_texts.get(up, {}).get(row_id, "")
    try:
        return templates.render(spec.prompt, values)
    except UserInputError as err:
        raise UserInputError(f"prompt of node {node!r} fails on row {row_id}: {err}") from None
    except Exception as err:  # the sandbox raises many kinds (IndexError, TypeError, ...)
        raise UserInputError(f"prompt of node {node!r} fails on row {row_id}: {type(err).__name__}: {err}") from None
