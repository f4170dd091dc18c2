"""What a chat template may cost: the bounds engine/template.py's sandbox renders under.

A template is untrusted code (it ships with a checkpoint). jinja's sandbox stops it reaching Python; this stops it
taking the machine: every string or list it builds and the rendered prompt stay under MAX_SIZE characters, checked
*before* `'x' * 10**10`, a `replace`, a `center(10**9)` or `tojson(indent=10**9)` allocate; what its calls and
filters produce together stays under MAX_PRODUCED; its loop iterations, calls, filters and operators under MAX_STEPS
(a loop of 10**10 iterations stops there, deterministically), with MAX_SECONDS as a backstop for the work single
operations do between two steps. Real templates (Command R's tool and RAG templates with hundreds of documents)
stay orders of magnitude under each (tests/test_template.py renders them with a thousand documents).

Hooks: operators and calls through the sandbox's own (`intercepted_binops`, `call`), filters wrapped, output through
`finalize`, and what has no hook (a `{% for %}`'s iterable, a recursive `loop(...)`, `~`) rewritten in the parsed
template into filters that count (`add_step_counting`). A render runs inside `budget()`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import jinja2
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

MAX_SIZE = 1 << 22  # characters (or items) of the prompt and of any value a template builds: ~1M tokens
MAX_PRODUCED = 8 * MAX_SIZE  # characters all calls and filters of one render produce together
MAX_STEPS = 1_000_000  # loop iterations + calls + filters + operators of one render (real templates: thousands)
MAX_SECONDS = 30.0  # one render, checked at every step: a backstop for the work single operations do in between
MAX_INDENT = 64  # tojson's indent (real templates use 2 or 4)
MAX_INT_BITS = 1 << 16  # an integer a template computes (`10**10**10` would take the machine)
_FORMAT_NUMBER = re.compile(r"\d{7,}")  # a width or precision in a %-format or str.format spec, long enough to matter


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


def _step(produced: int = 0) -> None:
    b = _BUDGET.get()
    if b is None:  # outside a render (compile time): sizes are still checked, steps are not counted
        return
    b.steps += 1
    b.produced += produced
    if b.steps > MAX_STEPS:
        raise TemplateLimit(f"more than {MAX_STEPS:,} steps (loop iterations, calls, filters)")
    if b.produced > MAX_PRODUCED:
        raise TemplateLimit(f"its operations produced more than {MAX_PRODUCED:,} characters")
    if time.monotonic() > b.deadline:
        raise TemplateLimit(f"rendering took more than {MAX_SECONDS:g} s")


def _size(x: Any, limit: int = MAX_SIZE) -> int:
    """How big `x` is written out: characters of strings, items of lists and dicts, each shared reference counted
    every time it appears (as str() and tojson write it). Stops counting past `limit`."""
    stack, n = [x], 0
    while stack and n <= limit:
        v = stack.pop()
        if isinstance(v, str):
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
        else:
            n += 1
    return n


def _measure(value: Any, what: str) -> int:
    """The size of `value`; TemplateLimit past MAX_SIZE."""
    n = _size(value)
    if n > MAX_SIZE:
        raise TemplateLimit(f"{what} over {MAX_SIZE:,} characters or items")
    return n


def _check_arguments(args, kwargs) -> None:
    """Before a call or filter runs: no number that would make it allocate past MAX_SIZE (`center(10**9)`,
    `batch(10**9)`, `'%999999999d'`), and estimates for the ones that multiply their input (`replace`, `join`,
    `expandtabs`, `indent`)."""
    for a in (*args, *kwargs.values()):
        if type(a) is int and a > MAX_SIZE:
            raise TemplateLimit(f"an argument of {a} (over {MAX_SIZE:,})")


def _estimate(name: str, value: Any, args: tuple, kwargs: dict) -> int:
    """The size a string method or filter `name` applied to `value` would produce, for those that multiply."""
    if not isinstance(value, str):
        if name == "join" and isinstance(value, (list, tuple)):
            sep = args[0] if args else kwargs.get("d", "")
            return _size(value) + (len(sep) if isinstance(sep, str) else 0) * len(value)
        return 0
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = value.count(args[0]) if args[0] else len(value) + 1
        return len(value) + hits * len(args[1])
    if name == "join" and args:  # str.join: this string between the items
        return len(value) * (_size(args[0]) + 1) + _size(args[0])
    if name == "expandtabs":
        width = (args or (kwargs.get("tabsize", 8),))[0]
        return len(value) + value.count("\t") * (width if type(width) is int else 8)
    if name == "indent":
        width = (args or (kwargs.get("width", 4),))[0]
        return len(value) + (value.count("\n") + 1) * (_size(width) if isinstance(width, str) else width or 0)
    if name in ("format", "format_map") and _FORMAT_NUMBER.search(value):
        if any(int(d) > MAX_SIZE for d in _FORMAT_NUMBER.findall(value)):
            return MAX_SIZE + 1
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
        if name == "join" and not isinstance(value, (str, list, tuple, Mapping)):
            value = _listed(value)  # a generator: measure what it yields before joining it
        if _estimate(name, value, args, kwargs) > MAX_SIZE:
            raise TemplateLimit(f"the {name} filter would produce over {MAX_SIZE:,} characters")
        lead = {_PassArg.context: (context,), _PassArg.eval_context: (context.eval_ctx,),
                _PassArg.environment: (context.environment,)}.get(want, ())
        result = func(*lead, value, *args, **kwargs)
        _step(_measure(result, f"the {name} filter's result"))
        return result

    run.jinja_pass_arg = _PassArg.context
    return run


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
                if isinstance(seq, (str, list, tuple)) and type(n) is int and n > 0 and _size(seq) * n > MAX_SIZE:
                    raise TemplateLimit(f"a repetition over {MAX_SIZE:,} characters or items")
            if type(left) is int and type(right) is int and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            if _size(left) + _size(right) > MAX_SIZE:
                raise TemplateLimit(f"a concatenation over {MAX_SIZE:,} characters or items")
        elif operator == "**" and type(left) is int and type(right) is int and abs(left) > 1 and right > 0:
            if right * abs(left).bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            args = right if isinstance(right, tuple) else (right,)
            _measure(right, "%-format arguments")
            _check_arguments(args, {})
            if any(int(d) > MAX_SIZE for d in _FORMAT_NUMBER.findall(left)):
                raise TemplateLimit(f"a %-format width over {MAX_SIZE:,}")
        result = super().call_binop(context, operator, left, right)
        _measure(result, f"the result of {operator}")
        return result

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
        _check_arguments(args, kwargs)
        # a str method, or the sandbox's wrapper of str.format (which keeps the method as __wrapped__)
        owner = getattr(__obj, "__self__", getattr(getattr(__obj, "__wrapped__", None), "__self__", None))
        if isinstance(owner, str) and getattr(__obj, "__name__", "") == "join" and args \
                and not isinstance(args[0], (str, list, tuple, Mapping)):
            args = (_listed(args[0]), *args[1:])
        if isinstance(owner, str) and _estimate(getattr(__obj, "__name__", ""), owner, args, kwargs) > MAX_SIZE:
            raise TemplateLimit(f"{__obj.__name__}() would produce over {MAX_SIZE:,} characters")
        result = super().call(__context, __obj, *args, **kwargs)
        _step(_measure(result, "a call's result"))
        return result


def finalize(value):
    """Every `{{ ... }}` before str() writes it: bounded (a list of a million references to a long string)."""
    _measure(value, "an output")
    return value
