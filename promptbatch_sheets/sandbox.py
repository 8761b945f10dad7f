"""The Jinja2 environment templates run in: Jinja's sandbox holds against escapes, this one also
against cost.

A template comes from a workbook someone else made. It may ask for a gigabyte (``'a' * 10**10``,
``center(10**9)``, ``'%0999999999d'|format(1)``), loop without printing anything, or recurse.
Here every text, list or number a template builds is refused before it is built when it would
pass what a prompt can use, and every render stops after ``ROW_SECONDS`` or ``MAX_WORK``
characters written (loops, macros and captured blocks included). Jinja compiles a template to
Python; the hooks used are the sandbox's own (``call``, ``call_binop``, string formatting),
wrapped filters, and a few nodes added to the parsed template: each loop and macro body starts
by charging the budget, and each list, dict or tuple literal and each ``~`` is sized.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import wraps
from string import Formatter
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

MAX_CHARS = 200_000
"""The longest prompt, and so the longest text (or list) a template may build."""
MAX_WORK = 10 * MAX_CHARS
"""Characters one render may write in all, counting what loops, macros and captured blocks
write and then throw away."""
MAX_INT_BITS = 10_000
"""About 3,000 digits: no prompt needs a bigger number, and 2**100000000 takes seconds."""
MAX_DEPTH = 100
"""Lists in lists in lists..."""
ROW_SECONDS = 0.5
"""Rendering one row: a real prompt takes microseconds, so a refusal comes in under 2 s."""
RUN_SECONDS, RUN_SECONDS_PER_ROW = 20.0, 0.001
"""Rendering a whole run (every row of one template): 20 s, and 1 ms more per row rendered."""


class Refused(Exception):
    """A template asked for more than any prompt needs; the text says what, as "it ..."."""


class OutOfTime(Refused):
    """The render ran out of time: the run's later rows are not tried."""


class _Budget(threading.local):
    """What the render running in this thread may still spend."""

    deadline = math.inf
    late = ""
    """What the render did when it passes the deadline."""
    work = 0


_BUDGET = _Budget()


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Run one render within ``seconds`` and ``MAX_WORK`` characters, in this thread."""
    _BUDGET.deadline, _BUDGET.work = time.perf_counter() + seconds, 0
    _BUDGET.late = f"ran longer than {seconds:g} s"
    try:
        yield
    finally:
        _BUDGET.deadline = math.inf


class RunBudget:
    """The render time one template may spend over a run; once a row ran out of time, the
    rows after it are refused at once instead of each taking its full second."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.rows = 0
        self._started = 0.0

    def left(self) -> float:
        """Seconds the next row may take."""
        if self.spent == math.inf:
            raise Refused("ran out of time on an earlier row")
        allowed = RUN_SECONDS + RUN_SECONDS_PER_ROW * (self.rows + 1) - self.spent
        if allowed <= 0:
            raise Refused(self._over)
        return min(ROW_SECONDS, allowed)

    @property
    def _over(self) -> str:
        return (f"took longer than the {RUN_SECONDS:g} s (and {RUN_SECONDS_PER_ROW:g} s a row) "
                "a run's rendering may take")

    def __enter__(self) -> None:
        """One row's render: within the time left, and charged to the run (a class, not a
        generator: this runs for every row)."""
        seconds = self.left()
        self._started = time.perf_counter()
        _BUDGET.deadline, _BUDGET.work = self._started + seconds, 0
        _BUDGET.late = f"ran longer than {seconds:g} s" if seconds == ROW_SECONDS else self._over

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        _BUDGET.deadline = math.inf
        self.rows += 1
        self.spent += math.inf if kind is OutOfTime else time.perf_counter() - self._started


def spend(chars: int = 0) -> None:
    """Count ``chars`` written and check the clock: called by every loop pass, macro call,
    filter, call and operator of a template."""
    _BUDGET.work += chars
    if _BUDGET.work > MAX_WORK:
        raise Refused(f"wrote more than {MAX_WORK:,} characters (counting what loops, macros "
                      "and blocks write and throw away)")
    if time.perf_counter() > _BUDGET.deadline:
        raise OutOfTime(_BUDGET.late)


# --------------------------------------------------------------------------- sizes

_CONTAINERS: tuple[type, ...] = (list, tuple, set, frozenset, dict, type({}.keys()),
                                 type({}.values()), type({}.items()))


def size(value: Any) -> int:
    """About how many characters ``str(value)`` would take. A list holding one list twice counts
    it twice (as ``str`` writes it), but each distinct object is looked at once, so a list
    doubled 100 times is measured in 100 steps, not 2**100."""
    return len(value) if type(value) is str else _size(value, {}, 0)


def _size(value: Any, memo: dict[int, int], depth: int) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, int):
        return 1 + value.bit_length() // 3
    if not isinstance(value, (*_CONTAINERS, Namespace)) or isinstance(value, Undefined):
        return 1
    key = id(value)
    if key in memo:
        return memo[key]
    if depth > MAX_DEPTH:
        raise Refused(f"nested lists more than {MAX_DEPTH} deep")
    memo[key] = 1  # a value holding itself (through a namespace) counts once
    if isinstance(value, Namespace):
        value = object.__getattribute__(value, "_Namespace__attrs")
    items = [*value.keys(), *value.values()] if isinstance(value, Mapping) else value
    total = 2
    for item in items:
        total += 2 + _size(item, memo, depth + 1)
        if total > MAX_CHARS:
            break
    memo[key] = total
    return total


def check(value: Any, chars: int | None = None) -> Any:
    """``value``, if it (or what would be built: ``chars``) fits in a prompt."""
    chars = size(value) if chars is None else chars
    if chars > MAX_CHARS:
        raise Refused(f"would build a value of {chars:,} or more characters, more than the "
                      f"{MAX_CHARS:,} of the longest prompt")
    return value


def _check_int(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise Refused(f"would build a number of more than {MAX_INT_BITS * 3 // 10:,} digits")


def _count(value: Any) -> int:
    """A width, count or length argument, as Python would take it."""
    return value if isinstance(value, int) else 0


def _check_width(width: Any) -> None:
    """Padding (``center(n)``, ``'%*d'``, ``'{:>n}'``) costs n characters."""
    check(None, _count(width))


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")


def check_printf(text: Any, args: Any) -> None:
    """``'%0999999999d' % 1`` and ``|format`` pad before any check could see the result."""
    if not isinstance(text, str):
        return
    for spec in _PRINTF.finditer(text):
        for number in spec.groups():
            if number == "*":
                raise Refused("used a * width in a % format; write the width as a number")
            if number and (len(number) > 7 or int(number) > MAX_CHARS):
                check(None, int(number) if len(number) <= 7 else MAX_CHARS + 1)
    check(None, len(text) + size(args))


def _check_binop(operator: str, left: Any, right: Any) -> None:
    sequences = (str, bytes, list, tuple)
    if operator == "*":
        if isinstance(left, sequences) or isinstance(right, sequences):
            seq, times = (left, right) if isinstance(left, sequences) else (right, left)
            check(None, size(seq) * max(_count(times), 0))
        elif isinstance(left, int) and isinstance(right, int):
            _check_int(left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int(left.bit_length() * right)
    elif operator == "+":
        if isinstance(left, sequences) and isinstance(right, sequences):
            check(None, size(left) + size(right))
    elif operator == "%":
        check_printf(left, right)


# --------------------------------------------------------------------------- filters


def _check_join(items: list[Any], separator: Any) -> None:
    check(None, sum(size(i) for i in items) + size(separator) * len(items))


def _check_replace(text: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old, new = str(text), str(old), str(new)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    check(None, len(text) + found * max(len(new) - len(old), 0))


def _check_indent(text: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    pad = len(width) if isinstance(width, str) else _count(width)
    check(None, size(text) + (str(text).count("\n") + 1) * pad)


def _check_wordwrap(text: Any, width: Any = 79, breaks: Any = True, wrapstring: Any = None,
                    *_: Any, **kwargs: Any) -> None:
    wrap = kwargs.get("wrapstring", wrapstring)
    check(None, size(text) * (1 + len(str(wrap or "\n"))))


def _check_urlize(text: Any, *args: Any, **kwargs: Any) -> None:
    extra = sum(size(a) for a in (*args, *kwargs.values()) if isinstance(a, str))
    check(None, 3 * size(text) + (len(str(text).split()) + 1) * (extra + 100))


def _check_tojson(value: Any, indent: Any = None) -> None:
    pad = len(indent) if isinstance(indent, str) else _count(indent)
    if pad > 8:
        raise Refused(f"asked tojson for an indent of {pad:,}; use at most 8")
    check(None, size(value) * (1 + pad))


def _check_count(value: Any, count: Any = 0, *_: Any, **__: Any) -> None:
    """``center(n)``, ``batch(n)``, ``slice(n)``: n characters or items at least."""
    _check_width(count)


FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_count,
    "batch": _check_count,
    "slice": _check_count,
    "indent": _check_indent,
    "replace": _check_replace,
    "format": lambda text, *args, **kwargs: check_printf(text, kwargs or args),
    "wordwrap": _check_wordwrap,
    "urlize": _check_urlize,
    "tojson": _check_tojson,
}
"""Filters whose output grows with an argument: what they would build, known beforehand."""


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    pre = FILTER_CHECKS.get(name)

    @wraps(func)
    def bounded_filter(*args: Any, **kwargs: Any) -> Any:
        spend()
        if len(args) > skip and size(args[skip]) > MAX_WORK:
            check(None, size(args[skip]))
        if name == "join" and len(args) > skip:  # the items are counted, so listed first
            args = (*args[:skip], list(args[skip]), *args[skip + 1:])
            rest = args[skip + 1:]
            _check_join(args[skip], rest[0] if rest else kwargs.get("d", ""))
        if pre is not None:
            pre(*args[skip:], **kwargs)
        return check(func(*args, **kwargs))

    return bounded_filter


def _sum(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's ``sum``, checked at each step: ``[big]*n|sum(start=[])`` grows quadratically."""
    items = iterable if attribute is None else (
        jinja2.filters.make_attrgetter(ENV, attribute)(i) for i in iterable)
    total = start
    for item in items:
        spend()
        _check_binop("+", total, item)
        total = total + item
    return total


# --------------------------------------------------------------------------- calls

_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _check_call(obj: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Methods of texts and numbers whose result grows with an argument; ``join`` gets its
    items as a list, counted before they are joined."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if isinstance(owner, (str, bytes)) and args:
        if name in _WIDTH_METHODS:
            _check_width(args[0])
        elif name == "expandtabs":
            check(None, len(owner) * max(_count(args[0]), 1))
        elif name == "replace" and len(args) >= 2:
            _check_replace(owner, *args)
        elif name == "join":
            args = (list(args[0]), *args[1:])
            _check_join(args[0], owner)
        elif name == "translate" and isinstance(args[0], Mapping):
            check(None, len(owner) * max((size(v) for v in args[0].values()), default=1))
    elif isinstance(owner, int) and name == "to_bytes" and args:
        _check_width(args[0])
    return args


class _BoundedFormatter(SandboxedFormatter):
    """``'{:>1000000000}'.format(1)`` pads before any check could see the result."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in _DIGITS.findall(format_spec):
            check(None, int(number) if len(number) <= 7 else MAX_CHARS + 1)
        check(value)
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    pass


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no escapes, no ``list.append``), bounded in cost."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    """Jinja also leaves these out of folding constants when it compiles, so ``2**100000000``
    is not computed by merely parsing the template."""

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False,
                         finalize=_finalize)
        self.globals.pop("lipsum", None)  # lipsum(100000) builds megabytes of Latin
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters["sum"] = _bounded_filter("sum", _sum)
        self.filters["_spend"] = _spend_filter
        self.filters["_sized"] = _sized_filter
        self.filters["_concat"] = _concat_filter

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        spend()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        spend()
        args = _check_call(getattr(obj, "__wrapped__", obj), args)
        return check(super().call(context, obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text: str = value.__self__
        formatter: Formatter = (_BoundedEscapeFormatter(self, escape=text.escape)
                                if isinstance(text, Markup) else _BoundedFormatter(self))
        is_map = value.__name__ == "format_map"

        @wraps(wrapped)
        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            return type(text)(formatter.vformat(text, args, kwargs))

        return bounded_format

    def guard(self, template: nodes.Template) -> nodes.Template:
        """The parsed template with the budget's checks added (see the module docstring)."""
        result: nodes.Template = _Guard().visit(template)
        return result


def _finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` written, wherever it goes: counted, and refused if too long (the
    clock is left to loops and calls: a template without them ends by itself)."""
    chars = len(value) if type(value) is str else size(value)
    _BUDGET.work += chars
    if _BUDGET.work > MAX_WORK or chars > MAX_CHARS:
        spend()
        check(value, chars)
    return value


@jinja2.pass_context  # so that Jinja does not run it once while compiling, and never again
def _spend_filter(context: Any, value: Any, chars: int) -> Any:
    spend(chars)
    return value


def _sized_filter(value: Any) -> Any:
    spend()
    return check(value)


def _concat_filter(parts: tuple[Any, ...]) -> str:
    spend()
    check(None, sum(size(p) for p in parts))
    return "".join(map(str, parts))


# --------------------------------------------------------------------------- the added nodes

_BODIES = (nodes.For, nodes.Macro, nodes.CallBlock)


def _literal_chars(node: nodes.Node) -> int:
    """Characters a part of a body writes as plain text, leaving out the loops and macros
    inside it (each charges its own)."""
    if isinstance(node, _BODIES):
        return 0
    if isinstance(node, nodes.TemplateData):
        return len(node.data)
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return len(node.value)
    return sum(_literal_chars(child) for child in node.iter_child_nodes())


def _filter(node: nodes.Expr, name: str, *args: Any) -> nodes.Filter:
    return nodes.Filter(node, name, [nodes.Const(a) for a in args], [], None, None,
                        lineno=node.lineno)


class _Guard(NodeTransformer):
    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
        node = super().generic_visit(node, *args, **kwargs)
        if isinstance(node, _BODIES):
            chars = sum(_literal_chars(n) for n in node.body)
            node.body.insert(0, nodes.ExprStmt(_filter(nodes.Const(""), "_spend", chars),
                                               lineno=node.lineno))
        elif isinstance(node, (nodes.List, nodes.Dict)) or (
                isinstance(node, nodes.Tuple) and node.ctx == "load"):
            return _filter(node, "_sized")
        elif isinstance(node, nodes.Concat):
            return _filter(nodes.Tuple(node.nodes, "load", lineno=node.lineno), "_concat")
        return node


ENV = BoundedEnvironment()
