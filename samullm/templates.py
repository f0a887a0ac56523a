"""Prompt templates: Jinja (what Airflow users already write), sandboxed, strict about names.

A node's prompt is rendered once per row from the row's columns and the outputs of upstream
nodes, each available under its own name: `Q: {{ question }}\nA: {{ vicuna }}`. Before anything
runs, the planner needs only *how many tokens* each prompt will have; `TemplateShape` answers
that without rendering every row when the template is a plain concatenation of literals and
references (the common case), and falls back to rendering otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox

from samullm.errors import UserInputError

# Llama-family BPE tokenizers average close to 4 characters per token on English text; used
# only when a dataset gives no token counts (the runtime later records the real ones).
CHARS_PER_TOKEN = 4.0

_ENV = jinja2.sandbox.SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


def estimate_tokens(text: str) -> int:
    """Token count of `text` by the characters-per-token rule (0 for empty text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


@lru_cache(maxsize=512)
def _parse(source: str) -> jinja2.nodes.Template:
    return _ENV.parse(source)


def check_syntax(source: str, where: str) -> None:
    try:
        _parse(source)
    except jinja2.TemplateSyntaxError as err:
        raise UserInputError(f"{where}: template syntax error at line {err.lineno}: {err.message}") from None


def referenced_names(source: str) -> set[str]:
    """Top-level names a template reads (columns, upstream node names)."""
    return set(_referenced(source))


@lru_cache(maxsize=1024)
def _referenced(source: str) -> frozenset[str]:
    return frozenset(jinja2.meta.find_undeclared_variables(_parse(source)))


@lru_cache(maxsize=512)
def _compiled(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render(source: str, context: dict[str, Any]) -> str:
    try:
        return _compiled(source).render(context)
    except jinja2.UndefinedError as err:
        raise UserInputError(f"template {source!r}: {err.message}") from None


@lru_cache(maxsize=256)
def compile_condition(expression: str):
    """A row filter such as `chunks|length > 2`, evaluated per row to a bool."""
    try:
        return _ENV.compile_expression(expression, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as err:
        raise UserInputError(f"row filter {expression!r}: syntax error: {err.message}") from None


def condition_names(expression: str) -> set[str]:
    return referenced_names("{{ " + expression + " }}")


@dataclass(frozen=True)
class Reference:
    """One `{{ name }}`, `{{ name[index] }}` or `{{ name.attr }}` in a template body."""

    name: str
    key: str | int | None = None


@dataclass(frozen=True)
class TemplateShape:
    """A template seen as literal text plus references, when it is that simple.

    `literal_tokens` counts the template's own text; `references` lists each reference in
    order (a name read twice appears twice). `simple` is False when the template has control
    flow, filters or calls; then token counts need a real render per row.
    """

    simple: bool
    literal_tokens: int
    references: tuple[Reference, ...]


@lru_cache(maxsize=512)
def template_shape(source: str) -> TemplateShape:
    body = _parse(source).body
    literal = []
    refs: list[Reference] = []
    for stmt in body:
        if not isinstance(stmt, jinja2.nodes.Output):
            return TemplateShape(False, 0, ())
        for part in stmt.nodes:
            if isinstance(part, jinja2.nodes.TemplateData):
                literal.append(part.data)
            elif isinstance(part, jinja2.nodes.Name):
                refs.append(Reference(part.name))
            elif (
                isinstance(part, jinja2.nodes.Getitem)
                and isinstance(part.node, jinja2.nodes.Name)
                and isinstance(part.arg, jinja2.nodes.Const)
                and isinstance(part.arg.value, (int, str))
            ):
                refs.append(Reference(part.node.name, part.arg.value))
            elif isinstance(part, jinja2.nodes.Getattr) and isinstance(part.node, jinja2.nodes.Name):
                refs.append(Reference(part.node.name, part.attr))
            else:
                return TemplateShape(False, 0, ())
    return TemplateShape(True, estimate_tokens("".join(literal)), tuple(refs))
