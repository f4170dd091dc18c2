"""Chat-template rendering, byte-for-byte compatible with transformers' `apply_chat_template`.

Chat templates ship with the model (tokenizer_config.json / chat_template.jinja) and are untrusted Jinja code. We
compile and render them the way transformers 5 does (`transformers/utils/chat_template_utils.py`), because the
model was trained on exactly that rendering:

* `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with the `loopcontrols` extension and a
  `{% generation %}` tag (which only marks assistant spans for training masks; here it renders its body). The r7b /
  Command A templates depend on trim/lstrip_blocks: their newlines after block tags must vanish.
* globals `raise_exception`, `strftime_now`, a restricted `dict` and `namespace`; a `tojson` filter that does NOT
  HTML-escape and keeps non-ASCII (`ensure_ascii=False`), with json.dumps' `indent`/`separators`/`sort_keys`.
* variables: `messages` (keys whose value is None dropped), `tools`, `documents`, `add_generation_prompt`, the named
  special tokens (`bos_token`, `eos_token`, ...) and any extra keyword (e.g. `citation_mode`, `enable_citations`),
  extra keywords overriding special tokens.

Every failure (a template's own `raise_exception`, a syntax error, a runtime error inside the template) becomes a
`TemplateError` with a one-line message (inert: the template's words never reach a terminal raw).

A template is untrusted code, so the sandbox also bounds what it may cost in memory, steps and time
(cohere_cli/engine/template_bounds.py): past a bound, a TemplateError saying the template is broken or hostile.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.compiler import CodeGenerator
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cohere_cli.engine.template_bounds import (
    MAX_INDENT, MAX_SIZE, BoundedSandbox, TemplateLimit, _listed, _size, _step, add_step_counting, budget,
    bounded_filter, concat, count_steps, finalize, sized)
from cohere_cli.errors import TemplateError
from cohere_cli.untrusted import one_line

# Names of the templates bundled in cohere_cli/data/templates (file stem = name).
BUILTIN_TEMPLATES = (
    "command-r-default",
    "command-r-tool_use",
    "command-r-rag",
    "cmd3-default",
    "cmd3-tool_use",
    "cmd3-rag",
)

# Where a message may carry its reasoning; transformers copies the first present one to `reasoning_content` and
# `thinking` so that every template finds it under the name it reads.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def builtin_template(name: str) -> str:
    """The text of a bundled template, e.g. `builtin_template("command-r-rag")` (names in BUILTIN_TEMPLATES)."""
    if name not in BUILTIN_TEMPLATES:
        raise TemplateError(f"no built-in template {name!r}; available: {', '.join(BUILTIN_TEMPLATES)}")
    return resources.files("cohere_cli").joinpath("data", "templates", f"{name}.jinja").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- environment


class _TemplateRaised(Exception):
    """Raised by a template's `raise_exception(msg)`; kept apart from jinja's errors to report it verbatim."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False):
    # transformers overrides jinja's tojson: no HTML escaping ('<' stays '<'), UTF-8 kept, json.dumps options exposed.
    # Encoded piece by piece so that a big indent or a structure of shared references stops at MAX_SIZE.
    if isinstance(indent, int) and indent > MAX_INDENT or isinstance(indent, str) and len(indent) > MAX_INDENT:
        raise TemplateLimit(f"tojson(indent=...) over {MAX_INDENT}")
    pieces, n = [], 0
    for piece in json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                  sort_keys=sort_keys).iterencode(x):
        n += len(piece)
        if n > MAX_SIZE:
            raise TemplateLimit(f"tojson output over {MAX_SIZE:,} characters")
        pieces.append(piece)
    return "".join(pieces)


@jinja2.pass_environment
def _sum(environment, iterable, attribute=None, start=0):
    """jinja's sum filter, with the cost of adding lists or strings charged as it goes: each `+` copies what was
    summed so far (quadratic, inside one C call for the builtin), so each one is a step measured and counted."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = _listed(iterable)
    if isinstance(start, (str, bytes)) or all(isinstance(x, (int, float)) for x in (start, *items)):
        return sum(items, start)  # numbers: exactly Python's sum (which refuses a string start)
    total = start
    for item in items:
        n = _size(total) + _size(item)
        if n > MAX_SIZE:
            raise TemplateLimit(f"a sum over {MAX_SIZE:,} characters or items")
        _step(n)
        total = total + item
    return total


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates, without exposing the real type (no attribute tricks out of the sandbox)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore attributes (a sandbox hardening transformers also applies)."""

    def __init__(*args, **kwargs):  # noqa: N805 - same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"templates cannot set underscore attributes ({name!r})")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers uses it to mask assistant tokens; we just render it."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _Output(list):
    """What a `{% set %}` block, a macro, `caller()`, a recursive loop or a `{% filter %}` block writes, counted as it
    is written (jinja's code generator appends each piece) and bounded like the prompt, before anything joins it."""

    __slots__ = ("size",)

    def __init__(self):
        super().__init__()
        self.size = 0

    def append(self, piece):
        self.size += len(piece)
        if self.size > MAX_SIZE:
            raise TemplateLimit(f"a block's or macro's output over {MAX_SIZE:,} characters")
        _step(len(piece), steps=0)
        super().append(piece)

    def extend(self, pieces):
        for piece in pieces:
            self.append(piece)


class _CodeGenerator(CodeGenerator):
    def buffer(self, frame) -> None:  # jinja's, with a counting buffer instead of []
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")


def _join_output(pieces) -> str:
    """environment.concat: joins buffers, and a block's generator for `self.name()` and `super()`, bounded."""
    out, n = [], 0
    for piece in pieces:
        n += len(piece)
        if n > MAX_SIZE:
            raise TemplateLimit(f"a block's output over {MAX_SIZE:,} characters")
        out.append(piece)
    return "".join(out)


def _make_environment() -> ImmutableSandboxedEnvironment:
    env: ImmutableSandboxedEnvironment = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols],
        finalize=finalize,
    )
    env.code_generator_class, env.concat, env.output_buffer = _CodeGenerator, _join_output, _Output
    env.filters["tojson"] = _tojson
    env.filters["sum"] = _sum
    env.filters = {name: bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["_cohere_steps"] = count_steps
    env.filters["_cohere_concat"] = concat
    env.filters["_cohere_sized"] = sized
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENV = _make_environment()


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """Compile (once per distinct source) a chat template; syntax errors become TemplateError."""
    try:
        return _ENV.from_string(add_step_counting(_ENV.parse(source), _ENV))
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template has a syntax error (line {e.lineno}): {one_line(e.message)}") from None


# --------------------------------------------------------------------------------------------- rendering


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON-like types (as transformers does): a fresh copy the template cannot
    use to reach the caller's objects, with tuples kept and unknown objects replaced by an inert placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _prepare_messages(messages: list[dict]) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TemplateError("cannot apply a chat template to an empty conversation")
    prepared = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TemplateError(f"chat messages must be dicts with 'role' and 'content', got {message!r}")
        # transformers drops None values: OpenAI-style `content=None` must look like a missing key to the template.
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def render_chat(
    source: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with the chat template `source`, exactly as transformers' apply_chat_template(tokenize=False).

    `special_tokens` are the tokenizer's named special tokens (bos_token, eos_token, ...), passed as template variables;
    `kwargs` (e.g. citation_mode="fast", enable_citations=True) are passed too and override them.
    """
    template = compile_template(source)
    if tools is not None and not all(isinstance(t, Mapping) for t in tools):
        raise TemplateError("tools must be JSON-schema dicts")
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise TemplateError("documents must be dicts (for example with 'title' and 'text' keys)")
    variables = {**(special_tokens or {}), **kwargs}
    try:
        with budget():
            return _render(template, {
                "messages": _prepare_messages(messages), "tools": _plain(tools), "documents": _plain(documents),
                "add_generation_prompt": add_generation_prompt, **_plain(variables)})
    except _TemplateRaised as e:
        raise TemplateError(f"the chat template rejected the conversation: {one_line(e)}") from None
    except TemplateLimit as e:
        raise TemplateError(f"the chat template was stopped: {e}; a model's template never needs that, so this "
                            f"one is broken or hostile (--template NAME or another checkpoint)") from None
    except TemplateError:
        raise
    except RecursionError:
        raise TemplateError("the chat template failed: it recursed too deep") from None
    except Exception as e:  # the template is foreign code: any error inside it is the template's, not ours
        raise TemplateError(f"the chat template failed: {type(e).__name__}: {one_line(e)}") from None


def _render(template: jinja2.Template, variables: dict) -> str:
    out, n = [], 0
    for piece in template.generate(**variables):
        n += len(piece)
        if n > MAX_SIZE:  # measured as it is written: many small outputs add up too
            raise TemplateLimit(f"a rendered prompt over {MAX_SIZE:,} characters")
        out.append(piece)
    return "".join(out)


