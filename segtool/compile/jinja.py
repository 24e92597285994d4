"""The one Jinja environment: sandboxed, StrictUndefined, no autoescape, bounded.

Used for SQL models, text templates, rule predicates and profiles.yml. Errors
come back as ProjectError pointing at the template's file and line.

Bounded: Jinja's sandbox stops attribute escapes but not resource exhaustion,
so the operators and functions that can build a huge value in one step
(`**`, `*` and `+` on sequences, `~`, `%`, `format` and str.format with
their widths, str padding methods, replace, join and sum) refuse results above
MAX_SIZE, a container is measured before it is made text (printed, joined,
formatted, filtered), and each render has a time limit
(RENDER_SECONDS, in the main thread) so a runaway loop names its template
line instead of hanging the run."""

from __future__ import annotations

import math
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache, wraps
from itertools import chain
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, operators
from jinja2.runtime import LoopContext
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    SecurityError,
)
from jinja2.utils import Namespace
from markupsafe import Markup

from segtool.errors import ProjectError

# the largest string or sequence one operation may build (a text is at most
# a few thousand characters; this leaves room for honest intermediate values)
MAX_SIZE = 1_000_000
# the largest integer a `**` may produce, in bits
MAX_POW_BITS = 4096
# the deepest a container may nest to be printed, compared or hashed (hashing
# a tuple nested 190,000 deep overflowed C's stack: the process crashed)
MAX_DEPTH = 1000
# seconds one render may take (per user for texts); SEGTOOL_RENDER_TIMEOUT overrides
RENDER_SECONDS = 2.0
# CPU seconds, as a multiple of the time limit, that one render may use before
# the process is ended (cpu_backstop): the limit cannot stop a running C call
BACKSTOP_FACTOR = 10
# seconds compiling one template may take (a time limit, ceiling and backstop
# as for a render), the longest template source, and the most Python its code
# generator may write for Python's compile() (one C call: ~5 s at this size)
COMPILE_SECONDS = 10.0
MAX_TEMPLATE_CHARS = 1_000_000
MAX_CODE_CHARS = 10_000_000

_WIDTH = re.compile(r"(\d+)")
_PADDING_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs"}
# methods whose cost is the text's length times their argument's, in one C
# call: reverse searches (CPython's is quadratic at worst: 1,000,000 by
# 500,000 characters ran past 20 s), stripping a set of characters, and a
# tuple of prefixes or suffixes (each compared in turn)
_QUADRATIC_METHODS = frozenset(
    (
        "rfind",
        "rindex",
        "rsplit",
        "rpartition",
        "strip",
        "lstrip",
        "rstrip",
        "startswith",
        "endswith",
    )
)
# the most character comparisons such a call may make (~0.2 s)
MAX_WORK = 1_000_000_000
# the longest text the int filter reads (Python's own bound for base 10;
# base 16 has none: 1,000,000 hex digits made ints whose sum ran 20 s)
MAX_INT_DIGITS = 4300
# Attribute lookups the sandbox answers the same way every time, so they skip
# its checks (`c.category` on a row's struct, `loop.last`): a dict's key that is
# not a dict attribute (getattr() fails, then the sandbox reads obj[key]), and
# a for-loop's public counters (never internal, never a mutating method). The
# checks were a third of a shopper story's rendering time.
_DICT_ATTRIBUTES = frozenset(dir(dict))
_LOOP_ATTRIBUTES = frozenset(n for n in dir(LoopContext) if not n.startswith("_"))


class RenderTimeout(Exception):
    """A render ran past RENDER_SECONDS."""


_TOO_LARGE = "a template this large is not compiled in the sandbox: split it, or use fewer tags"


class TemplateTooLarge(jinja2.TemplateSyntaxError):
    """A template past what the sandbox compiles (a syntax error to the
    callers that parse templates: validate reports it at the file)."""


def _too_big(what: str) -> SecurityError:
    return SecurityError(f"{what} would exceed the sandbox limit of {MAX_SIZE:,} items")


def _check_widths(fmt: str, what: str) -> None:
    if any(int(n) > MAX_SIZE for n in _WIDTH.findall(fmt)):
        raise _too_big(f"{what} width")


def _size_of(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


# values whose text is built from what they hold (a namespace's is its
# attributes' repr)
# (a dict's own view types: isinstance against the abc views is a Python call)
_CONTAINERS = (
    list, tuple, dict, set, frozenset,
    type({}.keys()), type({}.values()), type({}.items()), Namespace,
)  # fmt: skip
_STR_ONLY = frozenset((str,))
_CONTAINERS_AND_TYPES = (*_CONTAINERS, type)
_COMPARING_METHODS = frozenset(("count", "index", "changed", "fromkeys"))


def _text_len(value: Any, limit: int = MAX_SIZE, indent: int = 0) -> int:
    """About how long str(value) (or its JSON) is, told without building it,
    and at most just past `limit`: a container repeats references, so
    `[["x" * 100000] * 100] * 30` is small in memory and 300,000,000
    characters as text (str(), tojson and pprint built it in one C call,
    past the time limit). Counts each string's characters (twelve per
    character where repr or JSON may escape them: `\\U000e0001`), two per
    item, and with `indent` a new line of indent x depth per item; stops
    once past `limit`."""
    if type(value) is str and not indent:
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return _str_len(value)
    if type(value) in (list, tuple) and not indent and set(map(type, value)) <= _STR_ONLY:
        # texts only (`x in ['none', top_category]`): at most twelve
        # characters each, and a separator and quotes
        return 12 * sum(map(len, value)) + 4 * len(value) + 2
    # a stack of [items, depth, container, its size so far]: a million items
    # are not copied to be counted, and a container met again (a reference
    # repeated: doubling levels, `[[s] * 100] * 30`) adds the size counted
    # the first time instead of being walked again (with indent the size
    # depends on the depth: walked each time)
    seen: dict[int, int] = {}
    total, stack = 0, [[iter((value,)), 1, None, 0]]
    while stack and total <= limit:
        if len(stack) > MAX_DEPTH:  # hashing a deeper tuple crashed the process
            return limit + 1
        frame = stack[-1]
        v = next(frame[0], _END)
        if v is _END:
            stack.pop()
            if frame[2] is not None:
                seen[id(frame[2])] = frame[3]
                if stack:
                    stack[-1][3] += frame[3]
            continue
        size = indent * frame[1] + (1 if indent else 0)
        known = None if indent or not isinstance(v, _CONTAINERS) else seen.get(id(v))
        if known is not None:
            size += known
        elif isinstance(v, dict):
            stack.append([chain(v.keys(), v.values()), frame[1] + 1, v, 2 + 4 * len(v)])
            total += stack[-1][3] + size
            frame[3] += size
            continue
        elif isinstance(v, Namespace):
            stack.append([iter((v._Namespace__attrs,)), frame[1], v, 13])
            total += 13 + size
            frame[3] += size
            continue
        elif isinstance(v, _CONTAINERS):
            stack.append([iter(v), frame[1] + 1, v, 2 + 2 * len(v)])
            total += stack[-1][3] + size
            frame[3] += size
            continue
        else:
            size += _str_len(v)
        total += size
        frame[3] += size
    return total


_END = object()


def _str_len(v: Any) -> int:
    """The most characters repr() or JSON of a scalar may take."""
    if isinstance(v, str):
        plain = v.isascii() and v.isprintable()
        # a str subclass prints its type too: Markup('...')
        return (len(v) if plain else 12 * len(v)) + (2 if type(v) is str else 12)
    if isinstance(v, (bytes, bytearray)):
        return 4 * len(v) + 3
    return len(str(v))


def _check_text_len(value: Any, what: str, indent: int = 0) -> Any:
    """`value`, refused when it is a container whose text (_text_len) would
    pass MAX_SIZE."""
    if isinstance(value, _CONTAINERS) and _text_len(value, indent=indent) > MAX_SIZE:
        raise SecurityError(f"{what} would exceed the sandbox limit of {MAX_SIZE:,} characters")
    return value


def _text_size(values) -> int:
    total = 0
    for v in values:
        total += len(v) if type(v) is str else _text_len(v, MAX_SIZE - total)
        if total > MAX_SIZE:
            break
    return total


def _check_format_size(fmt: str, fields: int, values, what: str) -> None:
    """A format fills each of its `fields` with an argument, and one argument
    may fill them all (`("{0}" * 1000).format("x" * 300000)`: 300,000,000)."""
    longest = max((_text_len(v) for v in values), default=0)
    if len(fmt) + fields * longest > MAX_SIZE:
        raise _too_big(what)


class _Bounds:
    """str.format / format_map: a width or precision is checked once nested
    fields are filled in (`"{:>{w}}".format(1, w=3000000000)` asked for 3 GB
    in one step), the arguments' text with the format's may not exceed
    MAX_SIZE, nor may the fields formatted so far (a mapping's values are
    met one field at a time); a date's own format (`{0:%1279c}`) is
    strftime's."""

    def vformat(self, format_string, args, kwargs):
        values = [*args, *(kwargs.values() if isinstance(kwargs, dict) else ())]
        _check_format_size(format_string, format_string.count("{"), values, "a str.format")
        self._total = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value, format_spec):
        _check_widths(format_spec, "a str.format")
        if format_spec and hasattr(value, "strftime"):
            _check_strftime(format_spec)
        _check_text_len(value, "a str.format")
        out = super().format_field(value, format_spec)
        self._total += len(out)
        if self._total > MAX_SIZE:
            raise _too_big("a str.format")
        return out


class _BoundedFormatter(_Bounds, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_Bounds, SandboxedEscapeFormatter):
    """Markup.format: its arguments escaped, as Jinja's."""


class _CodeGenerator(CodeGenerator):
    """Jinja's code, with the checks written into it: what `{{ }}` prints,
    comparisons' operands, dict literal keys and `-` operands are measured
    inline (a call only for a container); `a ~ b` goes through the
    environment, which bounds its result (a namespace doubled by `~` in a
    loop reached 128,000,000 characters); nothing but constants is folded
    while compiling."""

    # What a `{{ }}` prints is str() of its value, built in one C call: a
    # list or dict of shared references (`[["x" * 100000] * 100] * 30`, or
    # dict.fromkeys) is small in memory and 300,000,000 characters as text.
    # A str, int or float is printed as Jinja would; anything else goes
    # through environment.to_text, which measures a container first. Inline,
    # not an environment.finalize: a function call per `{{ }}` made a
    # shopper story 15% slower to render.
    def _output_child_pre(self, node, frame, finalize) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            # {% autoescape %}: Jinja's escape()/str(), the value measured first
            super()._output_child_pre(node, frame, finalize)
            self.write("environment.printable(")
            return
        self.write("(_segtool_out if (_segtool_type := type(_segtool_out := (")
        if finalize.src is not None:
            self.write(finalize.src)

    def _output_child_post(self, node, frame, finalize) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            self.write(")")
            return super()._output_child_post(node, frame, finalize)
        if finalize.src is not None:
            self.write(")")
        self.write(
            "))) is str else str(_segtool_out) if _segtool_type is int or _segtool_type is float "
            "else environment.to_text(_segtool_out))"
        )

    # `a == b`, `a in b`, `a < b` on containers compare item by item in one
    # C call the time limit cannot stop (two lists of 1,000,000 references to
    # a 1,000,000-character string: 31 s): an operand that is not a str,
    # number, bool or None is measured first (environment.comparable).
    def visit_Compare(self, node, frame) -> None:
        self.write("(")
        self._operand(node.expr, frame)
        for op in node.ops:
            self.write(f" {operators[op.op]} ")
            self._operand(op.expr, frame)
        self.write(")")

    def _operand(self, expr, frame) -> None:
        if isinstance(expr, nodes.Const):
            self.visit(expr, frame)
            return
        if isinstance(expr, (nodes.List, nodes.Tuple)):
            # a literal (`x in ['none', top]`): its items are checked where
            # they are written, so a list of texts needs no call
            one = len(expr.items) == 1
            opening, closing = (
                ("[", "]") if isinstance(expr, nodes.List) else ("(", ",)" if one else ")")
            )
            self.write(opening)
            for idx, item in enumerate(expr.items):
                if idx:
                    self.write(", ")
                self._operand(item, frame)
            self.write(closing)
            return
        self.write("(_segtool_cmp if (_segtool_cmpt := type(_segtool_cmp := (")
        self.visit(expr, frame)
        self.write(
            "))) is str or _segtool_cmpt is int or _segtool_cmpt is float or "
            "_segtool_cmp is None or _segtool_cmpt is bool else environment.comparable(_segtool_cmp))"
        )

    def _output_child_to_const(self, node, frame, finalize):
        """Only plain text and constants are folded while compiling: a folded
        filter ran at compile time, with no time limit and no bound on what it
        built (`{{ ("x"|center(999999)) ~ ... }}`: 1.2 GB before rendering)."""
        if not isinstance(node, (nodes.TemplateData, nodes.Const)):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_Sub(self, node, frame) -> None:
        # a dict view's difference hashes every item: operands as a comparison's
        self.write("(")
        self._operand(node.left, frame)
        self.write(" - ")
        self._operand(node.right, frame)
        self.write(")")

    def visit_Dict(self, node, frame) -> None:
        # a key is hashed: measured as a comparison's operand
        self.write("{")
        for idx, item in enumerate(node.items):
            if idx:
                self.write(", ")
            self._operand(item.key, frame)
            self.write(": ")
            self.visit(item.value, frame)
        self.write("}")

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.concat_bounded((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "%", "+"])
    code_generator_class = _CodeGenerator

    @staticmethod
    def comparable(value: Any) -> Any:
        """An operand of a comparison (_CodeGenerator.visit_Compare), measured."""
        return _check_text_len(value, "comparing a value")

    @staticmethod
    def printable(value: Any) -> Any:
        """A value printed in an {% autoescape %} block, measured."""
        return _check_text_len(value, "printing a value")

    @staticmethod
    def to_text(value: Any) -> str:
        """str() of a printed value that is not a str (_CodeGenerator), a
        container measured first."""
        if isinstance(value, _CONTAINERS):
            _check_text_len(value, "printing a value")
        return str(value)

    def concat_bounded(self, parts) -> str:
        parts = [_check_text_len(p, "joining with ~") for p in parts]
        return _join_within(map(str, parts), MAX_SIZE, "joining with ~")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Jinja's optimizer evaluates constant expressions while compiling,
        # outside the time limit and the bounds (a 66-character template
        # compiled for 36 s): they are evaluated when rendered
        kwargs.setdefault("optimized", False)
        super().__init__(*args, **kwargs)
        self.compiled_code: dict[tuple[str, str], Any] = {}  # see compile_template

    def _parse(self, source: str, name: str | None, filename: str | None):
        # parsing is linear but slow (~5 us a character); every parse passes here
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateTooLarge(
                f"the template is {len(source):,} characters long; the sandbox compiles at most "
                f"{MAX_TEMPLATE_CHARS:,}",
                1,
                name,
                filename,
            )
        return super()._parse(source, name, filename)

    def _compile(self, source: str, filename: str):
        # Python's compile() of the generated code is one C call the time limit
        # cannot stop (a 450 KB template of `{{ key }}` lines took 19.7 s and
        # 1.3 GB): its input is bounded first; each `{{ }}` is ~270 characters
        if len(source) > MAX_CODE_CHARS:
            raise TemplateTooLarge(
                f"the template compiles to {len(source):,} characters of Python; the sandbox "
                f"compiles at most {MAX_CODE_CHARS:,} (fewer {{{{ }}}} and {{% %}} tags)",
                1,
                filename,
                filename,
            )
        return super()._compile(source, filename)

    def getitem(
        self, obj: Any, argument: Any, _sandboxed=ImmutableSandboxedEnvironment.getitem
    ) -> Any:
        if isinstance(argument, _CONTAINERS):  # a key is hashed (and compared)
            _check_text_len(argument, "looking up a key")
        return _sandboxed(self, obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        kind = type(obj)  # exact types: a subclass may define its own attributes
        if kind is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        if kind is LoopContext and attribute in _LOOP_ATTRIBUTES:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * math.log2(abs(left)) > MAX_POW_BITS:
                    raise SecurityError(
                        f"{left} ** {right} is too large for the sandbox (over {MAX_POW_BITS} bits)"
                    )
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                size = _size_of(seq)
                if size is not None and isinstance(n, int) and size * n > MAX_SIZE:
                    raise _too_big("repeating a sequence")
        elif operator == "+":
            a, b = _size_of(left), _size_of(right)
            if a is not None and b is not None and a + b > MAX_SIZE:
                raise _too_big("adding two sequences")
        elif operator == "%" and isinstance(left, (str, bytes)):
            fmt = left if isinstance(left, str) else left.decode("latin-1")
            _check_widths(fmt, "a % format")
            _check_percent_widths(fmt, "a % format")
            args = right if isinstance(right, tuple) else (right,)
            _check_star_widths(fmt, args, "a % format")
            values = list(right.values()) if isinstance(right, dict) else args
            _check_format_size(fmt, fmt.count("%"), values, "a % format")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's signature
        name = getattr(__obj, "__name__", "")
        owner = getattr(__obj, "__self__", None)
        text = isinstance(owner, (str, bytes))
        if text and name in _PADDING_METHODS:
            widths = [*args, *kwargs.values()]
            if any(isinstance(a, int) and a > MAX_SIZE for a in widths):
                raise _too_big(f"{type(owner).__name__}.{name}")
            if name == "expandtabs":  # every tab may become that many spaces
                width = args[0] if args else kwargs.get("tabsize", 8)
                tab = "\t" if isinstance(owner, str) else b"\t"
                if isinstance(width, int) and len(owner) + owner.count(tab) * width > MAX_SIZE:
                    raise _too_big("str.expandtabs")
        elif isinstance(owner, int) and name == "to_bytes":
            length = args[0] if args else kwargs.get("length", 1)
            if isinstance(length, int) and length > MAX_SIZE:
                raise _too_big("int.to_bytes")
        elif text and name == "translate" and args:
            table = args[0]
            items = table.values() if isinstance(table, dict) else table
            if isinstance(table, (dict, list, tuple)):  # a list or tuple is indexed by code point
                longest = max((len(v) for v in items if isinstance(v, (str, bytes))), default=1)
                if len(owner) * longest > MAX_SIZE:
                    raise _too_big("str.translate")
        elif text and name == "replace" and len(args) >= 2:
            _check_replace(owner, *args[:3])
        elif text and name == "join" and args:
            args = (list(args[0]), *args[1:])  # a generator is measured too
            _check_join(owner, args[0])
        elif name == "strftime" and args and isinstance(args[0], str):
            _check_strftime(args[0])
        elif text and name == "encode":  # utf-32: four bytes a character
            if len(owner) * 4 > MAX_SIZE:
                raise _too_big("str.encode")
        elif text and name in _QUADRATIC_METHODS and args:
            _check_search(owner, args[0], f"{type(owner).__name__}.{name}")
        elif __obj is dict or __obj is Namespace or name == "fromkeys":
            # their arguments' items become keys, hashed in one C call: a
            # generator is listed and measured too (`dict([[t, 1]])` or
            # `dict.fromkeys([t] | select)` hashed a tuple nested 200,000 deep:
            # the process crashed)
            what = "namespace()" if __obj is Namespace else f"{name}()"
            args = tuple(list(a) if isinstance(a, Iterator) else a for a in args)
            for v in args:
                _check_text_len(v, what)
        elif name in _COMPARING_METHODS or isinstance(owner, _CONTAINERS_AND_TYPES):
            # list.count/index compare the owner's items with the argument;
            # loop.changed, dict.get/fromkeys and constructors compare or hash
            # their arguments (a row's dict.get need not measure the row)
            measured = (owner, *args) if name in ("count", "index") else args
            for v in (*measured, *kwargs.values()):
                _check_text_len(v, f"{name}()")
        out = super().call(__context, __obj, *args, **kwargs)
        if isinstance(out, (str, bytes)) and len(out) > MAX_SIZE:  # decode, hex, ...
            raise _too_big(f"{name}()")
        return out

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_widths(value.__self__, "a str.format")
        f_self, is_map = value.__self__, value.__name__ == "format_map"
        formatter = (
            _BoundedEscapeFormatter(self, escape=f_self.escape)
            if isinstance(f_self, Markup)
            else _BoundedFormatter(self)
        )

        def bounded(*args, **kwargs):
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(f_self)(formatter.vformat(f_self, args, kwargs))

        return bounded


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?[a-zA-Z%]")


def _check_percent_widths(fmt: str, what: str) -> None:
    """A % format's fields each pad to their width and precision: a thousand
    `%999999d` built 975 MB though each width was within the limit."""
    total = sum(int(w or 0) + int(p or 0) for w, p in _PERCENT_FIELD.findall(fmt))
    if total > MAX_SIZE:
        raise _too_big(what)


def _check_star_widths(fmt: str, args, what: str) -> None:
    """A `*` width or precision is read from the arguments; a negative width
    left-justifies to its absolute value (`"%*d" % (-300000000, 1)`)."""
    if "*" in fmt and any(isinstance(a, int) and abs(a) > MAX_SIZE for a in args):
        raise _too_big(what)


_STRFTIME_FIELD = re.compile(r"%[-_0^#]*(\d*)[a-zA-Z%]")


def _check_strftime(fmt: str) -> None:
    """glibc's strftime pads a field to a width (`%1279c`): 160,000 of them
    built 200,000,000 characters in one call. Each field counts its width,
    or 64 characters."""
    size = len(fmt) + sum(int(w) if w else 64 for w in _STRFTIME_FIELD.findall(fmt))
    if size > MAX_SIZE:
        raise _too_big("a strftime")


def _check_replace(s: str, old: Any, new: Any, count: Any = None) -> None:
    """`("ab"*500000)|replace("a", "a"*1000)` built 500,500,000 characters."""
    kind = type(s) if isinstance(s, (str, bytes)) else None
    if kind is None or not isinstance(old, kind) or not isinstance(new, kind):
        return
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * (len(new) - len(old)) > MAX_SIZE:
        raise _too_big("a replace")


def _check_join(sep: Any, items: Any) -> None:
    if isinstance(items, (list, tuple)) and isinstance(sep, (str, bytes)):
        if _text_size(items) + len(sep) * max(len(items) - 1, 0) > MAX_SIZE:
            raise _too_big("a join")


def _bounded_filter(fn: Callable, what: str) -> Callable:
    """A padding filter (`center`, `indent`: neither takes the environment)
    whose `width`, its second argument, is bounded."""

    @wraps(fn)
    def checked(*args, **kwargs):
        size = kwargs.get("width", args[1] if len(args) > 1 else None)
        if isinstance(size, int) and size > MAX_SIZE:
            raise _too_big(f"the {what} filter")
        if what == "indent" and isinstance(size, (int, str)) and args:
            # every line gets the width (or the text it may be)
            per_line = size if isinstance(size, int) else len(size)
            if len(str(args[0])) + (str(args[0]).count("\n") + 1) * per_line > MAX_SIZE:
                raise _too_big(f"the {what} filter")
        return fn(*args, **kwargs)

    return checked


@pass_environment
def _checked_wordwrap(
    env, s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True
):
    # each break may insert `wrapstring`: at most one per character
    if wrapstring is not None and len(str(s)) * (len(str(wrapstring)) + 1) > MAX_SIZE:
        raise _too_big("the wordwrap filter")
    return jinja2.filters.do_wordwrap(env, s, width, break_long_words, wrapstring, break_on_hyphens)


def _check_search(owner, arg, what: str) -> None:
    """len(owner) x len(arg) character comparisons at most MAX_WORK (a tuple
    of prefixes: each one's)."""
    n = len(owner)
    if isinstance(arg, (str, bytes)):
        work = n * len(arg)
    elif isinstance(arg, tuple):
        work = sum(min(n, len(a)) if isinstance(a, (str, bytes)) else 1 for a in arg)
    else:
        return
    if work > MAX_WORK:
        raise SecurityError(
            f"{what} would compare {work:,} characters, past the sandbox limit of {MAX_WORK:,}"
        )


def _checked_trim(value, chars=None):
    if chars is not None:
        _check_search(jinja2.filters.soft_str(value), chars, "the trim filter")
    return jinja2.filters.do_trim(value, chars)


def _checked_int(value, default=0, base=10):
    if isinstance(value, (str, bytes)) and len(value) > MAX_INT_DIGITS:
        raise SecurityError(
            f"the int filter would read a number of {len(value):,} characters, past the sandbox "
            f"limit of {MAX_INT_DIGITS:,}"
        )
    return jinja2.filters.do_int(value, default, base)


def _checked_batch(value, linecount, fill_with=None):
    if isinstance(linecount, int) and linecount > MAX_SIZE:
        raise _too_big("the batch filter")
    return jinja2.filters.do_batch(value, linecount, fill_with)


@pass_environment
def _checked_sum(environment, iterable, attribute=None, start=0):
    """Jinja's sum; with a list or tuple `start` it concatenates, which
    Python's sum does pair by pair: 300 lists of 100,000 took 33 s and 600 MB
    in one call. Measured first, then joined in one pass."""
    if attribute is not None:
        iterable = map(jinja2.filters.make_attrgetter(environment, attribute), iterable)
    if not isinstance(start, (list, tuple)):
        return sum(iterable, start)
    kind = list if isinstance(start, list) else tuple
    items = list(iterable)
    for x in items:
        if not isinstance(x, kind):
            raise TypeError(
                f'can only concatenate {kind.__name__} (not "{type(x).__name__}") to {kind.__name__}'
            )
    if len(start) + sum(map(len, items)) > MAX_SIZE:
        raise _too_big("the sum filter")
    return kind(chain(start, *items))


# filters that turn their arguments into text (str(), JSON, repr) in one C
# call, or compare or copy every item (sort lowercases each one): a list or
# dict among their arguments is measured first, and a text they return may
# not pass MAX_SIZE (escaping and urlencode multiply a text's length)
_MEASURED_FILTERS = (
    "capitalize", "center", "dictsort", "e", "escape", "forceescape", "format",
    "groupby", "indent", "lower", "max", "min", "pprint", "replace", "safe",
    "slice", "batch", "sort", "string", "striptags", "title", "tojson", "trim",
    "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap",
    "xmlattr",
)  # fmt: skip
# tests that compare their arguments
_COMPARING_TESTS = (
    "eq", "equalto", "ge", "greaterthan", "gt", "in", "le", "lessthan", "lt", "ne",
)  # fmt: skip


def _checked_round(value, precision=0, method="common"):
    """round(5, -30000000) ran 48 s in one call (10 ** precision)."""
    if isinstance(precision, int) and abs(precision) > MAX_POW_BITS:
        raise _too_big("the round filter's precision")
    return jinja2.filters.do_round(value, precision, method)


@pass_eval_context
def _checked_urlize(eval_ctx, value, *args, **kwargs):
    """Each link repeats `target` and `rel`: a 1,000,000-character target on
    10,000 links built 2.4 GB before the time limit stopped it."""
    extra = [*args[1:], *kwargs.values()]  # args[0] is trim_url_limit
    if any(isinstance(v, str) and len(v) > 1000 for v in extra):
        raise _too_big("the urlize filter's target or rel")
    return jinja2.filters.do_urlize(eval_ctx, value, *args, **kwargs)


# filters that hash or compare the items of their value: an iterator (a
# `select` or `map` generator) is listed and measured first like a list (a
# tuple nested 200,000 deep came through `select` to `unique` and crashed
# the process when hashed)
_ITEMWISE_FILTERS = frozenset(("unique", "groupby", "sort", "min", "max"))


def _measured(fn: Callable, what: str, itemwise: bool = False) -> Callable:
    """A filter of _MEASURED_FILTERS (or a test of _COMPARING_TESTS): its
    container arguments measured first, a text it returns after."""
    value_at = 1 if getattr(fn, "jinja_pass_arg", None) else 0
    tojson = what == "the tojson filter"

    @wraps(fn)
    def checked(*args, **kwargs):
        if itemwise and len(args) > value_at and isinstance(args[value_at], Iterator):
            args = (*args[:value_at], list(args[value_at]), *args[value_at + 1 :])
        if kwargs or len(args) != value_at + 1:
            indent = kwargs.get("indent") if tojson else 0
            for v in (*args, *kwargs.values()):
                _check_text_len(v, what, indent if isinstance(indent, int) else 0)
        elif isinstance(args[value_at], _CONTAINERS):  # the common case: the value alone
            _check_text_len(args[value_at], what)
        out = fn(*args, **kwargs)
        if not isinstance(out, str) or len(out) <= MAX_SIZE:
            return out
        raise _too_big(what)

    return checked


def _checked_format(value, *args, **kwargs):
    fmt = str(value)
    _check_widths(fmt, "the format filter")
    _check_percent_widths(fmt, "the format filter")
    _check_star_widths(fmt, args, "the format filter")
    _check_format_size(fmt, fmt.count("%"), [*args, *kwargs.values()], "the format filter")
    return jinja2.filters.do_format(value, *args, **kwargs)


@pass_eval_context
def _checked_replace(eval_ctx, s, old, new, count=None):
    _check_replace(str(s), str(old), str(new), count)
    return jinja2.filters.do_replace(eval_ctx, s, old, new, count)


@pass_eval_context
def _checked_join(eval_ctx, value, d="", attribute=None):
    _check_text_len(d, "the join filter")  # the separator is made text first
    value = list(value)
    if attribute is not None:
        get = jinja2.filters.make_attrgetter(eval_ctx.environment, attribute)
        _check_join(str(d), [get(v) for v in value])
    else:
        _check_join(str(d), value)
    return jinja2.filters.do_join(eval_ctx, value, d, attribute)


# the most text one render may produce (a SQL model or a story; texts are
# cut at max_chars later): a loop printing a 1,000,000-character value 300
# times built 300 MB before the time limit could stop it
MAX_OUTPUT = 10 * MAX_SIZE


def _join_within(pieces, limit: int, what: str) -> str:
    """ "".join(pieces), refused past `limit` characters. The pieces are
    references (a value printed 20,000 times is one string): the join is what
    would allocate, so it is measured first, in C."""
    pieces = list(pieces)
    if sum(map(len, pieces)) > limit:
        raise SecurityError(f"{what} would exceed the sandbox limit of {limit:,} characters")
    return "".join(pieces)


def _bounded_output(pieces) -> str:
    return _join_within(pieces, MAX_OUTPUT, "the output")


class _Template(jinja2.Template):
    """A template whose captures (`{% set t %}...{% endset %}`, macro
    bodies, blocks) are joined through _bounded_output too: Jinja's generated
    code joins them with its own `concat` (a loop printing a 1,000,000-
    character value 20,000 times inside a capture asked for 20 GB)."""

    @classmethod
    def from_code(cls, environment, code, globals, uptodate=None):
        namespace = {"environment": environment, "__file__": code.co_filename}
        exec(code, namespace)  # Jinja's own step: its compiled template module
        namespace["concat"] = _bounded_output
        rv = cls._from_namespace(environment, namespace, globals)
        rv._uptodate = uptodate
        return rv


def make_env(loader: jinja2.BaseLoader | None = None, finalize=None) -> _Env:
    env = _Env(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        loader=loader,
        extensions=["jinja2.ext.loopcontrols"],
        finalize=finalize,
    )
    env.filters["round_to"] = lambda x, n=0: round(float(x), n)
    # wordwrap and truncate only ever shorten or break a text: left as Jinja's
    # (a wrapper without their pass_environment mark broke both)
    for name in ("center", "indent"):
        env.filters[name] = _bounded_filter(env.filters[name], name)
    env.filters["format"] = _checked_format
    env.filters["replace"] = _checked_replace
    env.filters["join"] = _checked_join
    env.filters["wordwrap"] = _checked_wordwrap
    env.filters["batch"] = _checked_batch
    env.filters["sum"] = _checked_sum
    env.filters["round"] = _checked_round
    env.filters["urlize"] = _checked_urlize
    env.filters["trim"] = _checked_trim
    env.filters["int"] = _checked_int
    for name in _MEASURED_FILTERS:
        env.filters[name] = _measured(
            env.filters[name], f"the {name} filter", itemwise=name in _ITEMWISE_FILTERS
        )
    for name in _COMPARING_TESTS:
        env.tests[name] = _measured(env.tests[name], f"the {name} test")
    env.concat = _bounded_output  # what a render yields, measured before the join
    env.template_class = _Template
    # lipsum(n) builds n paragraphs: no use in a segment project, and unbounded
    env.globals.pop("lipsum", None)
    return env


@lru_cache(maxsize=1)
def default_env() -> _Env:
    return make_env()


def _no_null_in_sql(value: Any) -> Any:
    if value is None:
        raise ProjectError(
            "an expression writes None into the SQL (a null value, e.g. a var set to null)",
            hint="give it a value, or test for it: {% if var('x') is none %} ... {% endif %}",
        )
    return value


@lru_cache(maxsize=1)
def sql_env() -> _Env:
    """Where SQL models and predicates render: as default_env, but a `{{ }}`
    that gives None is an error. It wrote the word None into the SQL
    (`--vars '{as_of: null}'` compiled to DATE 'None', which validate passed
    and the run failed on, far from the cause)."""
    return make_env(finalize=_no_null_in_sql)


def compile_template(env: _Env, text: str, name: str) -> jinja2.Template:
    """Compile with `name` as the filename, so tracebacks carry template lines.
    The code is kept per environment: validate, plan and run compile each
    model's SQL several times (with other sources, incremental or not: the
    same template), and Jinja's compile was ~9% of a no-op run (profiled)."""
    codes = env.compiled_code
    try:
        code = codes.get((text, name))
        if code is None:
            if len(codes) >= 1024:  # a long-lived process (the Python API) edits models
                codes.clear()
            with time_limit(max(COMPILE_SECONDS, render_seconds())):
                code = env.compile(text, name=name, filename=name)
            codes[(text, name)] = code
    except (RenderTimeout, MemoryError) as exc:
        raise render_error(exc, name, "template", "compile") from exc
    except TemplateTooLarge as exc:
        raise ProjectError(exc.message or str(exc), path=name, hint=_TOO_LARGE) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise ProjectError(
            f"template syntax error: {exc.message}",
            path=name,
            line=exc.lineno,
            hint="check the {{ }} / {% %} tags on that line",
        ) from exc
    return env.template_class.from_code(env, code, env.make_globals(None))


def literal_text(text: str) -> str:
    """The words a template writes for every user: its text outside {{ }} and
    {% %} tags (empty when it does not parse; validate reports that)."""
    import jinja2.nodes

    try:
        ast = default_env().parse(text)
    except jinja2.TemplateSyntaxError:
        return ""
    return " ".join(n.data for n in ast.find_all(jinja2.nodes.TemplateData))


def template_line(exc: BaseException, name: str) -> int | None:
    """The template line where `exc` was raised (Jinja rewrites tracebacks)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == name:
            line = frame.lineno
    return line


def render_seconds() -> float:
    try:
        return float(os.environ.get("SEGTOOL_RENDER_TIMEOUT", RENDER_SECONDS))
    except ValueError:
        return RENDER_SECONDS


@contextmanager
def time_limit(seconds: float | None = None):
    """Raise RenderTimeout in the block after `seconds`, and hold the memory
    ceiling (memory_ceiling) and the CPU backstop (cpu_backstop, 10x the
    limit) over it. Yields `rearm()`, which restarts both clocks: a batch
    installs the handlers once and rearms them per user (two setitimer
    calls), so the limit costs little per text. Main thread only: signals
    cannot interrupt other threads, and the ceiling is the process's. Within
    a time limit already held, it holds nothing more (the outer one governs:
    an inner one would disarm it on leaving). `seconds` <= 0 lifts the time
    limit and the backstop, not the memory ceiling."""
    seconds = render_seconds() if seconds is None else seconds
    if _HELD or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    if seconds <= 0:
        with _held(), memory_ceiling():
            yield lambda: None
        return
    armed = [0.0]

    def expire(signum, frame):
        took = time.perf_counter() - armed[0]
        # a C call the handler could not interrupt ran on: say how long
        late = f" ({took:.1f}s: one call ran on past the limit)" if took > 1.5 * seconds else ""
        raise RenderTimeout(f"took longer than {seconds:g}s{late}")

    setitimer, real, prof = signal.setitimer, signal.ITIMER_REAL, getattr(signal, "ITIMER_PROF", 0)
    clock = time.perf_counter
    previous = signal.signal(signal.SIGALRM, expire)
    try:
        with _held(), memory_ceiling(), cpu_backstop(seconds * BACKSTOP_FACTOR) as cpu_seconds:
            if cpu_seconds:

                def rearm() -> None:  # per user: two system calls
                    armed[0] = clock()
                    setitimer(real, seconds)
                    setitimer(prof, cpu_seconds)

            else:

                def rearm() -> None:
                    armed[0] = clock()
                    setitimer(real, seconds)

            rearm()
            yield rearm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_HELD: list[bool] = []  # non-empty while a time_limit is held (main thread only)


@contextmanager
def _held():
    _HELD.append(True)
    try:
        yield
    finally:
        _HELD.pop()


@contextmanager
def cpu_backstop(cpu_seconds: float):
    """End the process when one render uses `cpu_seconds` of CPU, counted
    from each `setitimer(ITIMER_PROF, cpu_seconds)` (time_limit's rearm, per
    user). Yields `cpu_seconds`, or None where the backstop is not set.

    The time limit is a Python signal handler: it runs between bytecodes, so
    one C call that outlasts it (a sort, a comparison, a format of something
    huge) runs on to its end. Each audit found another such call; this is the
    floor under the bounds, as memory_ceiling is for memory. The kernel sends
    SIGPROF once the process has used `cpu_seconds` of CPU since the last
    rearm; faulthandler (C code, no Python needed) writes the Python stacks,
    which name the template (at a line of its compiled code) and the call, to
    stderr, and SIGPROF's default action ends the process (exit status 155 in
    a shell, -27 to a parent), whatever C call it was in. Left alone where
    SIGPROF or its timer is in use (a profiler) or the platform has neither."""
    import faulthandler

    if (
        not hasattr(signal, "ITIMER_PROF")
        or signal.getsignal(signal.SIGPROF) != signal.SIG_DFL
        or signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0)
    ):
        yield None
        return
    try:  # fd 2, not sys.stderr: CliRunner and pytest replace it with objects without a file
        # every thread's stack: the kernel may deliver SIGPROF to one of DuckDB's
        faulthandler.register(signal.SIGPROF, file=2, all_threads=True, chain=True)
    except (OSError, ValueError, RuntimeError):
        yield None
        return
    try:
        yield cpu_seconds
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        faulthandler.unregister(signal.SIGPROF)


# bytes a render may map beyond what the process maps when it starts
# (SEGTOOL_RENDER_MEMORY_MB overrides)
RENDER_MEMORY = 1 << 30


@contextmanager
def memory_ceiling():
    """While templates render, the process may map at most RENDER_MEMORY
    bytes more than it does now (RLIMIT_AS, Linux): an allocation past it is
    a MemoryError in the template, whatever built it. The bounds above stop
    the known ways to build a huge value in one step; each audit found
    another (a filter mapped over items, a C call past the time limit), so
    this is the floor under them. Left alone when a limit is already set or
    /proc/self/statm cannot be read."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as fh:
            mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        extra = int(os.environ.get("SEGTOOL_RENDER_MEMORY_MB", 0)) << 20 or RENDER_MEMORY
    except (ImportError, OSError, ValueError):
        yield
        return
    ceiling = mapped + extra
    if soft != resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and hard < ceiling):
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def render_error(
    exc: BaseException, name: str, what: str = "template", doing: str = "render"
) -> ProjectError:
    if isinstance(exc, ProjectError):
        if exc.path is None:
            exc.path = name
            exc.line = template_line(exc, name)
        return exc
    line = template_line(exc, name)
    if isinstance(exc, jinja2.UndefinedError):
        msg = exc.message or str(exc)
        return ProjectError(
            f"undefined in {what}: {msg}",
            path=name,
            line=line,
            hint="every variable must exist (StrictUndefined); use `x | default('')` for optional values",
        )
    if isinstance(exc, SecurityError):
        return ProjectError(f"unsafe operation in {what}: {exc}", path=name, line=line)
    if isinstance(exc, MemoryError):
        return ProjectError(
            f"{what} used more memory than {'compiling' if doing == 'compile' else 'a render'} may "
            f"({RENDER_MEMORY >> 20:,} MB beyond the process's)",
            path=name,
            line=line,
            hint=_TOO_LARGE
            if doing == "compile"
            else "a value grows without bound; SEGTOOL_RENDER_MEMORY_MB sets the limit",
        )
    if isinstance(exc, RenderTimeout):
        return ProjectError(
            f"{what} {exc} to {doing}",
            path=name,
            line=line,
            hint=_TOO_LARGE
            if doing == "compile"
            else "a loop or computation runs away; SEGTOOL_RENDER_TIMEOUT sets the limit in seconds",
        )
    if isinstance(exc, jinja2.TemplateError):
        return ProjectError(f"{what} error: {exc}", path=name, line=line)
    return ProjectError(f"{what} error: {type(exc).__name__}: {exc}", path=name, line=line)


def render_string(
    text: str,
    context: Mapping[str, Any],
    *,
    name: str,
    env: _Env | None = None,
    what: str = "template",
) -> str:
    env = env or default_env()
    tmpl = compile_template(env, text, name)
    try:
        with time_limit():
            return tmpl.render(**context)
    except Exception as exc:  # noqa: BLE001 - every render error becomes a ProjectError
        raise render_error(exc, name, what) from exc


def renderer(
    env: _Env, text: str, name: str, what: str = "template"
) -> Callable[[Mapping[str, Any]], str]:
    """A compiled template as a function of its context (for per-user
    rendering). The caller bounds time: `with time_limit() as rearm:` around
    a batch, `rearm()` before each call (see execute/render.py)."""
    tmpl = compile_template(env, text, name)
    # Template.render merges the globals (a ChainMap) into a new dict for every
    # call: a fifth of a shopper story's rendering time. Merge them once; a
    # user's columns shadow a global of the same name, as in render().
    base = dict(tmpl.globals)

    def render(ctx: Mapping[str, Any]) -> str:
        try:
            context = tmpl.new_context({**base, **ctx}, shared=True)
            return env.concat(tmpl.root_render_func(context))
        except Exception:  # noqa: BLE001
            try:
                env.handle_exception()  # as render() does: template lines in the traceback
            except Exception as exc:  # noqa: BLE001
                raise render_error(exc, name, what) from exc

    return render
