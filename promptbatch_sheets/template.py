"""Prompt templates from spreadsheets: untrusted Jinja2, sandboxed, bounded and strict.

Headers become variables by a simple rule (``Product Name`` -> ``product_name``), and every
header is also reachable as ``row["Product Name"]``.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2
from jinja2 import meta

from .errors import TemplateError
from .sandbox import ENV, MAX_CHARS, ROW_SECONDS, Refused, RunBudget, bounded

MAX_RENDERED_CHARS = MAX_CHARS
"""A rendered prompt longer than this is a runaway template, not a prompt."""


@functools.lru_cache(maxsize=4096)
def variable_name(header: str) -> str:
    """The Jinja2 variable a header answers to: lower case, runs of other characters as ``_``."""
    name = re.sub(r"\W+", "_", header.strip().lower()).strip("_")
    if name and name[0].isdigit():
        name = "_" + name
    return name


def _spelling(header: str) -> str:
    """How a template names a header; punctuation-only headers exist only as ``row[...]``."""
    name = variable_name(header)
    return f"{header!r} ({{{{ {name} }}}})" if name else f"{header!r} ({{{{ row[{header!r}] }}}})"


def display(value: Any) -> str:
    """A cell value as a person reads it: 3 not 3.0, dates without midnight, empty for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="minutes" if value.second == 0 else "seconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


_PRINTED = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)
_SYSTEM_OPEN = re.compile(r"\A\s*<system>", re.I)
_SYSTEM_CLOSE = re.compile(r"</system>[ \t]*", re.I)


def split_system(source: str, origin: str) -> tuple[str | None, str]:
    """A template that starts with ``<system>...</system>`` (published prompt templates do):
    the block's text, sent as the system message, and the rest, the user message."""
    opened = _SYSTEM_OPEN.match(source)
    if opened is None:
        return None, source
    closed = _SYSTEM_CLOSE.search(source, opened.end())
    if closed is None:
        raise TemplateError(f"The template in {origin} opens a <system> block but never closes "
                            "it: end the system prompt with </system>.")
    rest = source[closed.end():].lstrip("\r\n")
    if not rest.strip():
        raise TemplateError(f"The template in {origin} holds only a <system> block: write the "
                            "prompt itself after </system>.")
    return source[opened.end():closed.start()].strip(), rest


def _header_as_typed(source: str) -> str | None:
    """``{{Business Challenge}}``: a header typed as it reads is no Jinja name; say which
    variable to write instead of Jinja's "expected token 'end of print statement'"."""
    for found in _PRINTED.finditer(source):
        inner = found.group(1)
        name = variable_name(inner)
        if not name or name == inner or any(c in inner for c in "|()[]'\"+*"):
            continue
        try:
            ENV.parse(f"{{{{ {inner} }}}}")
        except jinja2.TemplateSyntaxError:
            return (f"{found.group()} is a column header as it reads, not a variable name. "
                    f'Write {{{{ {name} }}}} or {{{{ row["{inner}"] }}}}.')
    return None


class Flag(str):
    """A TRUE/FALSE cell in a template: it prints as the sheet shows it, and tests as the
    boolean it is, so ``{% if urgent %}`` is false for FALSE (a plain "FALSE" would be true)."""

    def __bool__(self) -> bool:
        return self == "TRUE"


def template_value(value: Any) -> str:
    """A cell value as a template sees it: its display text, a Flag for booleans."""
    return Flag(display(value)) if isinstance(value, bool) else display(value)


@dataclass(frozen=True)
class Template:
    """A compiled prompt template and where it came from (for error messages)."""

    source: str
    origin: str
    variables: frozenset[str]
    uses_row: bool
    """The template reads ``row[...]``, so any column may matter."""
    _compiled: jinja2.Template
    _globals: dict[str, Any] = field(compare=False, repr=False)
    """Jinja's globals (``range``, ``dict``...) merged once: Jinja would merge them into the
    context of every row, most of the cost of rendering a short prompt."""
    _run: RunBudget = field(default_factory=RunBudget, compare=False, repr=False)
    """The render time left to this template in the run it serves."""
    system: Template | None = None
    """The template's leading ``<system>`` block, rendered with the same row as the system
    message; ``variables`` and ``uses_row`` cover it too."""

    @classmethod
    def parse(cls, source: str, origin: str = "the template") -> Template:
        """Compile ``source``; a syntax error names ``origin`` (a cell or file) and the line.
        A leading ``<system>`` block becomes ``system``, the rest is the prompt."""
        if not source or not source.strip():
            raise TemplateError(f"The template in {origin} is empty. Write a prompt there, "
                                "for example: Describe {{ product_name }} in one sentence.")
        block, user = split_system(source, origin)
        if block is not None:
            system = cls.parse(block, f"the <system> block of {origin}")
            main = cls.parse(user, origin)
            return replace(main, source=source, system=system,
                           variables=main.variables | system.variables,
                           uses_row=main.uses_row or system.uses_row)
        try:
            names, compiled = _compile(source)
        except (Refused, RecursionError) as exc:
            raise _stopped(origin, "while it was read", exc) from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"Template syntax error in {origin}, line {exc.lineno}: "
                + (_header_as_typed(source) or str(exc.message))) from None
        return cls(source, origin, names - {"row"}, "row" in names, compiled,
                   dict(compiled.globals))

    def check_columns(self, headers: Sequence[str]) -> None:
        """Fail before any model call if the template names a variable no header provides."""
        known = {variable_name(h) for h in headers if h}
        missing = sorted(self.variables - known)
        if missing:
            names = ", ".join(f"{{{{ {m} }}}}" for m in missing)
            columns = ", ".join(_spelling(h) for h in headers if h)
            raise TemplateError(
                f"The template in {self.origin} uses {names}, but the header row has no such "
                f"column. Columns present: {columns or 'none'}. "
                "Rename a header or fix the template."
            )

    def render_system(self, row: Mapping[str, Any], where: str = "") -> str | None:
        """The system message for one row, from the ``<system>`` block; None without one."""
        return None if self.system is None else self.system.render(row, where)

    def render(self, row: Mapping[str, Any], where: str = "") -> str:
        """Render one row (header -> cell value); errors name ``where`` (the row) and the cause.
        A ``<system>`` block is not part of it (see ``render_system``)."""
        values = {h: template_value(v) for h, v in row.items() if h}
        context = self._globals.copy()
        context.update({variable_name(h): v for h, v in values.items()})
        context["row"] = values
        where = where or "a row"
        try:
            with self._run:
                text = self._render_bounded(context)
        except (Refused, RecursionError) as exc:
            raise _stopped(self.origin, f"on {where}", exc) from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"The template in {self.origin} tried something unsafe "
                                f"({exc}); templates may only format the row's values.") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"The template in {self.origin} failed on {where}: "
                                f"{exc}") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise TemplateError(f"The template in {self.origin} failed on {where}: "
                                f"{type(exc).__name__}: {exc}") from None
        if text is None:
            raise TemplateError(
                f"The template in {self.origin} rendered more than {MAX_RENDERED_CHARS:,} "
                f"characters on {where}: is a loop running away?"
            )
        if not text.strip():
            raise TemplateError(f"The template in {self.origin} renders nothing on "
                                f"{where}: every prompt must have some text.")
        return text

    def _render_bounded(self, context: dict[str, Any]) -> str | None:
        """Render piece by piece and stop early, so a runaway loop costs no memory.

        ``context`` already holds the globals, so it is shared with Jinja as it is, and
        Jinja's low-level render function is called without ``generate``'s copy of it."""
        parts: list[str] = []
        size = 0
        compiled = self._compiled
        for part in compiled.root_render_func(compiled.new_context(context, shared=True)):
            size += len(part)
            if size > MAX_RENDERED_CHARS:
                return None
            parts.append(part)
        return "".join(parts)


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> tuple[frozenset[str], jinja2.Template]:
    """A template's variables and its compiled form, made once per text: Excel recalculates
    thousands of formulas over a handful of templates. A Template is made fresh each time
    from them, so each run's render time is its own."""
    ast = ENV.parse(source)
    with bounded(ROW_SECONDS):
        return (frozenset(meta.find_undeclared_variables(ast)),
                ENV.from_string(ENV.guard(ast)))


def _stopped(origin: str, where: str, exc: Exception) -> TemplateError:
    """The message for a template that asked for too much, or recursed without end."""
    if isinstance(exc, RecursionError):
        return TemplateError(f"The template in {origin} was stopped {where}: it calls itself "
                             "without end (a macro or block that recurses). Simplify it.")
    return TemplateError(f"The template in {origin} was stopped {where}: it {exc}. A template "
                         "only formats a row's values; simplify it.")
