"""What a chat template may cost: the bounds engine/template.py's sandbox renders under.

A template is untrusted code (it ships with a checkpoint). jinja's sandbox stops it reaching Python; this stops it
taking the machine: every string or list it builds, every block or macro output and the rendered prompt stay under
MAX_SIZE characters, checked *before* `'x' * 10**10`, a `replace`, a `center(10**9)`, a `'{:9999999}' * 1000`
format or a `tojson(indent=10**9)` allocate (the output of a multiplying filter, method or format is estimated
first); what its calls and filters produce together stays under MAX_PRODUCED; its loop iterations, calls, filters
and operators under MAX_STEPS, with MAX_SECONDS as a backstop between two steps (so no single call may run long:
`sum` over lists is charged per addition). Real templates stay orders of magnitude under each (tests/test_template.py
renders Command R's and cmd3's with a thousand documents).

Hooks: operators and calls through the sandbox's own (`intercepted_binops`, `call`), filters wrapped, output through
`finalize` and, inside blocks and macros, a counting buffer (template.py), and what has no hook (a `{% for %}`'s
iterable, a recursive `loop(...)`, `~`, literals) rewritten into filters that count (`add_step_counting`).
"""

from __future__ import annotations

import functools
import re
import time
import types
from _string import formatter_field_name_split, formatter_parser
from collections.abc import Collection, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import jinja2
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

MAX_SIZE = 1 << 22  # characters (or items) of the prompt and of any value a template builds: ~1M tokens
MAX_PRODUCED = 8 * MAX_SIZE  # characters all calls and filters of one render produce together
MAX_STEPS = 1_000_000  # loop iterations + calls + filters + operators of one render (real templates: thousands)
MAX_SECONDS = 30.0  # one render, checked at every step: a backstop for the work single operations do in between
MAX_INDENT = 64  # tojson's indent (real templates use 2 or 4)
MAX_INT_BITS = 1 << 16  # an integer a template computes (`10**10**10` would take the machine)
_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)  # one %-conversion
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[,_]?(?:\.(\d+))?(.?)", re.S)  # a str.format spec
_SEQUENCES = (str, bytes, list, tuple)


class TemplateLimit(Exception):
    """The template went past one of the bounds above."""


class _Budget:
    def __init__(self):
        self.steps, self.produced, self.deadline = 0, 0, time.monotonic() + MAX_SECONDS


_BUDGET: ContextVar[_Budget | None] = ContextVar("cohere_template_budget", default=None)


@contextmanager
def budget():
    """One render's steps, production and deadline (a ContextVar: renders in other threads have their own)."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _step(produced: int = 0, steps: int = 1) -> None:
    b = _BUDGET.get()
    if b is None:  # outside a render (compile time): sizes are still checked, steps are not counted
        return
    b.steps += steps
    b.produced += produced
    if b.steps > MAX_STEPS:
        raise TemplateLimit(f"more than {MAX_STEPS:,} steps (loop iterations, calls, filters)")
    if b.produced > MAX_PRODUCED:
        raise TemplateLimit(f"its operations produced more than {MAX_PRODUCED:,} characters")
    if time.monotonic() > b.deadline:
        raise TemplateLimit(f"rendering took more than {MAX_SECONDS:g} s")


def _size(x: Any, limit: int = MAX_SIZE) -> int:
    """How big `x` is written out: characters of strings and bytes, digits of numbers, items of lists, dicts, sets,
    dict views and namespaces, each shared reference counted every time it appears (as str() and tojson write it).
    Stops counting past `limit`."""
    stack, n = [x], 0
    while stack and n <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            n += len(v)
        elif isinstance(v, (list, tuple)):
            n += 1 + len(v)
            if n <= limit:
                stack.extend(v)
        elif isinstance(v, Mapping):
            n += 1 + 2 * len(v)
            if n <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, Namespace):  # str() writes its attributes
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        elif type(v) is int:
            n += 1 + v.bit_length() // 3
        elif isinstance(v, float):
            n += 24
        elif isinstance(v, Collection) and not isinstance(v, range):  # sets, dict views: str() writes every item
            n += 1 + len(v)
            if n <= limit:
                stack.extend(v)
        else:
            n += 1
    return n


def _measure(value: Any, what: str) -> int:
    """The size of `value`; TemplateLimit past MAX_SIZE."""
    if type(value) is int and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"{what}: an integer over {MAX_INT_BITS} bits")
    n = _size(value)
    if n > MAX_SIZE:
        raise TemplateLimit(f"{what} over {MAX_SIZE:,} characters or items")
    return n


def _check_arguments(args, kwargs) -> None:
    """Before a call or filter runs: no number that would make it allocate past MAX_SIZE (`center(10**9)`)."""
    for a in (*args, *kwargs.values()):
        if type(a) is int and a > MAX_SIZE:
            raise TemplateLimit(f"an argument of {a} (over {MAX_SIZE:,})")


def _digits(text: str | None) -> int:
    if text and len(text) > 9:
        raise TemplateLimit(f"a format width or precision over {MAX_SIZE:,}")
    return int(text) if text else 0


def _written(v: Any, kind: str, precision: Any) -> int:
    """At most how long a conversion writes `v`: text its size (cut by a precision; !r and !a may escape each
    character), a number every binary digit of an int or a float's 309 digits plus the precision; "?": anything."""
    p = precision if type(precision) is int and precision >= 0 else None
    number = (v.bit_length() if type(v) is int else 0) + 330 + (p or 0)
    if kind == "?":
        return 4 * _size(v) + number
    if kind in ("s", "r", "a") or (kind == "" and not isinstance(v, (int, float))):
        n = _size(v) * (4 if kind in ("r", "a") else 1)
        return n if p is None else min(n, p)
    return number


def _printf_size(fmt: str | bytes, values: Any) -> int:
    """At most how long `fmt % values` is, before it runs: for each conversion its width (`*` read from the values)
    or its value written out, whichever is bigger."""
    fmt = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    seq, taken, total = (values if isinstance(values, tuple) else (values,)), 0, len(fmt)

    def take():
        nonlocal taken
        taken += 1
        return seq[taken - 1] if taken <= len(seq) else 0

    for key, width, precision, conv in (m.groups() for m in _PRINTF.finditer(fmt)):
        if conv == "%":
            continue
        w = take() if width == "*" else _digits(width)
        p = take() if precision == "*" else _digits(precision) if precision else None
        kind = "s" if conv == "s" else conv if conv in "ra" else "d"
        if key is None or not isinstance(values, Mapping):
            v = take()
        elif key in values:
            v = values[key]
        else:  # a key this regex cut short (`%(a(b))s`): the biggest value
            v, kind = max(values.values(), key=_size, default=0), "?"
        total += max(w if type(w) is int else 0, _written(v, kind, p))
        if total > MAX_SIZE:
            break
    return total


def _format_size(fmt: str, args: tuple, kwargs: Mapping) -> int:
    """At most how long `fmt.format(*args, **kwargs)` is, before it runs: its text, and for each field its width or
    its value written out, whichever is bigger. A field nested in a spec (`{0:{1}}`) must be a short number or word."""
    auto, total = 0, 0

    def lookup(name):
        nonlocal auto
        first, rest = formatter_field_name_split(name)
        if first == "":
            first, auto = auto, auto + 1
        try:
            value = args[first] if isinstance(first, int) else kwargs[first]
        except (IndexError, KeyError, TypeError):
            value = None
        return value, any(True for _ in rest)

    for literal, name, spec, conversion in formatter_parser(fmt):
        total += len(literal)
        if name is None:
            continue
        v, deep = lookup(name)
        if "{" in spec:  # nested fields: written into the spec first
            parts = []
            for text, inner, _, _ in formatter_parser(spec):
                x = lookup(inner)[0] if inner is not None else ""
                if _size(x) > 20:
                    raise TemplateLimit("a nested format field over 20 characters")
                parts += [text, str(x)]
            spec = "".join(parts)
        m = _SPEC.fullmatch(spec)
        width, precision, kind = m.groups() if m else ("", "", "")
        kind = "?" if deep or not m else conversion if conversion in ("r", "a") else kind
        total += max(_digits(width), _written(v, kind, _digits(precision) if precision else None) + len(spec))
        if total > MAX_SIZE:
            break
    return total


def _widest(table: Any) -> int:  # the longest replacement in a str.translate table
    items = table.values() if isinstance(table, Mapping) else table if isinstance(table, (list, tuple)) else ()
    return max((_size(v) for v in items), default=1)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:  # argument i, or by name
    return args[i] if len(args) > i else kwargs.get(name, default)


def _estimate(name: str, value: Any, args: tuple, kwargs: dict, method: bool = False) -> int:
    """The size a string method (`method`) or filter `name` applied to `value` would produce, for those that
    multiply their input or write widths."""
    if not isinstance(value, (str, bytes)):
        if name == "join" and isinstance(value, (list, tuple)):
            sep = _arg(args, kwargs, 0, "d", "")
            return _size(value) + (len(sep) if isinstance(sep, str) else 0) * len(value)
        if name in ("batch", "slice") and isinstance(value, (list, tuple)):
            count, fill = _arg(args, kwargs, 0, "linecount" if name == "batch" else "slices", 1), \
                _arg(args, kwargs, 1, "fill_with", None)
            count = count if type(count) is int and count > 0 else 1
            groups = len(value) // count + 1 if name == "batch" else count
            return _size(value) + 8 * groups + (_size(fill) * (count if name == "batch" else groups))
        return 0
    if name == "replace" and len(args) >= 2 and isinstance(args[0], type(value)) and isinstance(args[1], type(value)):
        hits = value.count(args[0]) if args[0] else len(value) + 1
        return len(value) + hits * len(args[1])
    if name == "join" and args:  # str.join: this string between the items
        return len(value) * (_size(args[0]) + 1) + _size(args[0])
    if name == "expandtabs":
        width = _arg(args, kwargs, 0, "tabsize", 8)
        tabs = value.count("\t" if isinstance(value, str) else b"\t")
        return len(value) + tabs * (width if type(width) is int else 8)
    if name == "indent":
        width = _arg(args, kwargs, 0, "width", 4)
        return len(value) + (value.count("\n") + 1) * (_size(width) if isinstance(width, str) else width or 0)
    if name == "translate" and args:
        return len(value) * _widest(args[0])
    if name == "wordwrap":
        width, wrap = _arg(args, kwargs, 0, "width", 79), _arg(args, kwargs, 2, "wrapstring", None)
        lines = len(value) // max(width if type(width) is int else 1, 1) + value.count(" ") + value.count("\n") + 1
        return len(value) + lines * (_size(wrap) if wrap is not None else 1)
    if name == "urlize":
        words = value.count(" ") + value.count("\n") + 1
        target, rel = _arg(args, kwargs, 2, "target", ""), _arg(args, kwargs, 3, "rel", "")
        return len(value) + words * (_size(target) + _size(rel))
    if name == "format" and not method:  # the format filter: printf-style, like %
        return _printf_size(value, kwargs or args)
    if name == "format" and isinstance(value, str):
        return _format_size(value, args, kwargs)
    if name == "format_map" and isinstance(value, str):
        return _format_size(value, (), args[0] if args and isinstance(args[0], Mapping) else {})
    return 0


def _listed(items) -> list:
    """An iterable a multiplying operation (`join`) is about to consume, as a list so that it can be measured first;
    at most MAX_SIZE items."""
    out = []
    for item in items:
        out.append(item)
        if len(out) > MAX_SIZE:
            raise TemplateLimit(f"an iterable of over {MAX_SIZE:,} items")
    return out


def bounded_filter(name: str, func):
    """A filter that counts a step, checks its arguments and its result, and is never run at compile time
    (constant folding would run it outside the render's budget): it takes the context itself."""
    want = _PassArg.from_obj(func)

    @jinja2.pass_context
    @functools.wraps(func)
    def run(context, value, *args, **kwargs):
        _check_arguments(args, kwargs)
        _measure(value, f"the {name} filter's input")  # every value is bounded already; this guards the inputs
        if name in ("join", "batch", "slice") and not isinstance(value, (str, list, tuple, Mapping)):
            value = _listed(value)  # a generator: measure what it yields before joining it
        if _estimate(name, value, args, kwargs) > MAX_SIZE:
            raise TemplateLimit(f"the {name} filter would produce over {MAX_SIZE:,} characters")
        lead = {_PassArg.context: (context,), _PassArg.eval_context: (context.eval_ctx,),
                _PassArg.environment: (context.environment,)}.get(want, ())
        result = func(*lead, value, *args, **kwargs)
        _step(_measure(result, f"the {name} filter's result"))
        return _bounded_items(result, f"the {name} filter's items") if type(result) is types.GeneratorType else result

    run.jinja_pass_arg = _PassArg.context
    return run


def _bounded_items(items, what: str):
    """What a filter that yields (map, select, batch, slice, ...) yields, measured item by item as it is consumed."""
    n = 0
    for item in items:
        n += _measure(item, what)
        if n > MAX_SIZE:
            raise TemplateLimit(f"{what} over {MAX_SIZE:,} characters or items")
        yield item


@jinja2.pass_context  # never folded at compile time: the generator must be made at render time
def sized(context, value):
    """A list, tuple or dict literal as it is built: `[a, a, a, a]` nested a few times would be huge written out."""
    _step(_measure(value, "a literal"))
    return value


@jinja2.pass_context
def count_steps(context, value):
    """What a `{% for %}` iterates over, one step per item (see add_step_counting)."""
    for item in value:
        _step()
        yield item


@jinja2.pass_context
def concat(context, parts) -> str:
    """`a ~ b`, bounded: each part is measured before str() writes it out."""
    out, n = [], 0
    for part in parts:
        n += _size(part, MAX_SIZE - n)
        if n > MAX_SIZE:
            raise TemplateLimit(f"a ~ concatenation over {MAX_SIZE:,} characters")
        out.append(str(part))
    _step(n)
    return "".join(out)


def add_step_counting(ast: jinja2.nodes.Template, env) -> jinja2.nodes.Template:
    """Loops, `~` and literals have no sandbox hook: route each loop's iterable (and a recursive loop's `loop(...)`
    argument) through count_steps, each `~` through concat and each list, tuple or dict literal through sized, as
    filters."""
    def wrap(node, name):
        return jinja2.nodes.Filter(node, name, [], [], None, None).set_lineno(node.lineno).set_environment(env)

    for loop in ast.find_all(jinja2.nodes.For):
        loop.iter = wrap(loop.iter, "_cohere_steps")
    for call in ast.find_all(jinja2.nodes.Call):
        if isinstance(call.node, jinja2.nodes.Name) and call.node.name == "loop" and call.args:
            call.args[0] = wrap(call.args[0], "_cohere_steps")
    def literal(x):  # not the targets of `{% for a, b in ... %}` or `{% set a, b = ... %}`
        return isinstance(x, (jinja2.nodes.List, jinja2.nodes.Dict, jinja2.nodes.Tuple)) \
            and getattr(x, "ctx", "load") == "load"

    for parent in list(ast.find_all(jinja2.nodes.Node)):  # one pass: each literal wrapped where it hangs
        for field in parent.fields:
            value = getattr(parent, field, None)
            if literal(value):
                setattr(parent, field, wrap(value, "_cohere_sized"))
            elif isinstance(value, list):
                value[:] = [wrap(x, "_cohere_sized") if literal(x) else x for x in value]
    for cat in list(ast.find_all(jinja2.nodes.Concat)):
        parts = jinja2.nodes.List(cat.nodes).set_lineno(cat.lineno).set_environment(env)
        cat.nodes = [wrap(parts, "_cohere_concat")]  # one-part Concat: str() of an already bounded string
    return ast


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The transformers sandbox plus the bounds above: operators and calls are intercepted (the sandbox's hooks),
    filters wrapped, loops and `~` rewritten at compile time, output measured as it is written."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def call_binop(self, context, operator, left, right):
        _step()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCES) and type(n) is int and n > 0 and _size(seq) * n > MAX_SIZE:
                    raise TemplateLimit(f"a repetition over {MAX_SIZE:,} characters or items")
            if type(left) is int and type(right) is int and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            if _size(left) + _size(right) > MAX_SIZE:
                raise TemplateLimit(f"a concatenation over {MAX_SIZE:,} characters or items")
        elif operator == "**" and type(left) is int and type(right) is int and abs(left) > 1 and right > 0:
            if right * abs(left).bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, (str, bytes)):
            _measure(right, "%-format arguments")
            if _printf_size(left, right) > MAX_SIZE:
                raise TemplateLimit(f"a %-format over {MAX_SIZE:,} characters")
        result = super().call_binop(context, operator, left, right)
        _measure(result, f"the result of {operator}")
        return result

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
        _check_arguments(args, kwargs)
        # a str method, or the sandbox's wrapper of str.format (which keeps the method as __wrapped__)
        owner = getattr(__obj, "__self__", getattr(getattr(__obj, "__wrapped__", None), "__self__", None))
        if isinstance(owner, (str, bytes)) and getattr(__obj, "__name__", "") == "join" and args \
                and not isinstance(args[0], (str, bytes, list, tuple, Mapping)):
            args = (_listed(args[0]), *args[1:])
        if isinstance(owner, (str, bytes)) and _estimate(getattr(__obj, "__name__", ""), owner, args, kwargs,
                                                        method=True) > MAX_SIZE:
            raise TemplateLimit(f"{__obj.__name__}() would produce over {MAX_SIZE:,} characters")
        result = super().call(__context, __obj, *args, **kwargs)
        _step(_measure(result, "a call's result"))
        return result


def finalize(value):
    """Every `{{ ... }}` before str() writes it: bounded (a list of a million references to a long string)."""
    _measure(value, "an output")
    return value
