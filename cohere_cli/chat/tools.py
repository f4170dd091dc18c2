"""Tools the model may call in chat (`cohere chat --tools FILE`, repeatable): loading them and running one call.

FILE is one of:
* a JSON list of tools in the OpenAI function format, each with an optional "exec" argv, e.g.
  `{"type": "function", "function": {"name": "git_log", "description": "...", "parameters": {...}},
  "exec": ["git", "log", "-n", "{count}"]}`. An argv item that is exactly "{name}" becomes that argument's value as
  ONE item (never through a shell: spaces, `;` or `$(...)` in a value are just characters); a placeholder that is not
  a parameter, or one inside a longer item, is an error when the file is loaded. A value starting with "-" is refused
  unless "--" comes before its placeholder (it would be read as an option). A tool without "exec" is listed to the
  model but answered with an error result.
* a Python file: its top-level public functions become tools (as `llm --functions` does). Type hints give the JSON
  schema (str, int, float, bool, list[...], dict[...], Optional / `X | None`, Literal[...]; no hint: a string), the
  docstring's first paragraph the description, a Google-style "Args:" section the parameters' descriptions.
  The file is code the user chose to run: it runs in this process.
* the name of a built-in tool: `list_models` (the local store's models and the built-in demo).

`run_tool` runs one call within a time and an output-size bound and returns the text of the `tool` message;
failures (bad arguments, a crash, a timeout, Ctrl-C via `cancel`) are results starting with "error:", not raised.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import threading
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cohere_cli.chat.models_tool import list_models
from cohere_cli.errors import UnsafeInput, UsageError
from cohere_cli.untrusted import inert, one_line, parse_json, read_bounded

MAX_TOOLS_FILE = 1 << 20  # a tools file (JSON or Python); real ones are a few kB
MAX_TOOLS = 128
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_OUTPUT = 64 << 10  # bytes of a tool's output sent back to the model
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_POLL_S = 0.02


@dataclass
class Tool:
    """One tool: its OpenAI-format `schema` (what the template shows the model) and how to run it."""
    name: str
    schema: dict
    exec: list[str] | None = None
    function: Callable | None = None
    source: str = ""

    @property
    def description(self) -> str:
        return self.schema["function"].get("description", "")


# ------------------------------------------------------------------------------------------------ loading


def load_tools(spec: str | Path) -> list[Tool]:
    """The tools of one `--tools` argument (a .json or .py file, or a built-in tool's name); UsageError saying
    what is wrong with the file otherwise."""
    path = Path(spec)
    if str(spec) in BUILTIN_TOOLS and not path.exists():
        return [BUILTIN_TOOLS[str(spec)]()]
    where = f"--tools {inert(str(spec))}"
    try:
        data = read_bounded(path, MAX_TOOLS_FILE, "tools file")
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file (give a .json or .py tools file, or one of: "
                         f"{', '.join(BUILTIN_TOOLS)})") from None
    except (OSError, UnsafeInput) as e:
        raise UsageError(f"{where}: {one_line(getattr(e, 'strerror', None) or e)}") from None
    tools = _python_tools(path, data, where) if path.suffix == ".py" else _json_tools(data, where)
    if not tools:
        raise UsageError(f"{where}: the file defines no tools")
    if len(tools) > MAX_TOOLS:
        raise UsageError(f"{where}: {len(tools)} tools, over the {MAX_TOOLS} a file may hold")
    names = [t.name for t in tools]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UsageError(f"{where}: two tools are named {dup!r}")
    return tools


def _json_tools(data: bytes, where: str) -> list[Tool]:
    try:
        raw = parse_json(data)
    except ValueError as e:
        raise UsageError(f"{where} {e}") from None
    if not isinstance(raw, list):
        raise UsageError(f"{where}: the file must hold a JSON list of tools "
                         '([{"type": "function", "function": {"name": ..., "parameters": {...}}, "exec": [...]}])')
    return [_json_tool(i, t, where) for i, t in enumerate(raw)]


def _json_tool(i: int, t, where: str) -> Tool:
    at = f"{where}: tool {i}"
    fn = t.get("function") if isinstance(t, dict) else None
    if not isinstance(fn, dict) or t.get("type", "function") != "function":
        raise UsageError(f'{at} is not {{"type": "function", "function": {{...}}}}')
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"{at}: the name must be letters, digits, _ . - (at most 64), not {one_line(repr(name), 80)}")
    at = f"{where}: tool {name}"
    params = fn.get("parameters", {"type": "object", "properties": {}})
    props = params.get("properties", {}) if isinstance(params, dict) else None
    if not isinstance(props, dict) or not isinstance(fn.get("description", ""), str):
        raise UsageError(f"{at}: 'parameters' must be a JSON schema object with 'properties', 'description' a string")
    argv = t.get("exec")
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise UsageError(f"{at}: 'exec' must be a non-empty list of strings (an argv, run without a shell)")
        if _PLACEHOLDER.fullmatch(argv[0]):
            raise UsageError(f"{at}: the program itself cannot be a placeholder")
        for item in argv:
            whole = _PLACEHOLDER.fullmatch(item)
            if whole and whole[1] not in props:
                raise UsageError(f"{at}: 'exec' names {item} but the tool has no parameter {whole[1]!r}")
            if not whole and _PLACEHOLDER.search(item):
                raise UsageError(f"{at}: 'exec' item {one_line(item, 80)!r}: a placeholder must be a whole item")
    schema = {"type": "function", "function": {**fn, "parameters": params if isinstance(params, dict) else {}}}
    return Tool(name, schema, exec=argv)


def template_tool(schema: dict) -> dict:
    """An OpenAI tool schema with the defaults the models' tool templates read without checking (Command R's
    `tool_use` fails on a tool or property without `description`, a parameter list without `required`, an object
    property without `additionalProperties`, an array without `items`): a copy, the given fields unchanged."""
    fn = dict(schema.get("function") or {})
    fn.setdefault("description", "")
    params = dict(fn.get("parameters") or {})
    params.setdefault("type", "object")
    params.setdefault("required", [])
    props = params.get("properties")
    params["properties"] = {k: _template_property(v) for k, v in props.items()} if isinstance(props, dict) else {}
    fn["parameters"] = params
    return {**schema, "type": schema.get("type", "function"), "function": fn}


def _template_property(prop, depth: int = 0) -> dict:
    prop = dict(prop) if isinstance(prop, dict) else {}
    if depth == 0:
        prop.setdefault("description", "")
    if depth < 32:
        if prop.get("type") == "object" and not isinstance(prop.get("additionalProperties"), dict):
            prop["additionalProperties"] = {}
        if prop.get("type") == "array" and not isinstance(prop.get("items"), dict):
            prop["items"] = {}
        for key in ("items", "additionalProperties"):
            if isinstance(prop.get(key), dict):
                prop[key] = _template_property(prop[key], depth + 1)
    return prop


def _python_tools(path: Path, data: bytes, where: str) -> list[Tool]:
    module = types.ModuleType(f"cohere_tools_{abs(hash(str(path.resolve())))}")
    module.__file__ = str(path)
    try:
        exec(compile(data, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's own tools file
    except Exception as e:
        raise UsageError(f"{where}: the file failed to load: {type(e).__name__}: {one_line(e)}") from None
    functions = [f for n, f in vars(module).items() if not n.startswith("_") and inspect.isfunction(f)
                 and f.__module__ == module.__name__]
    return [tool_from_function(f, where) for f in functions]


def tool_from_function(fn: Callable, where: str = "tool") -> Tool:
    """A Tool that calls `fn`, its schema from `fn`'s type hints and docstring."""
    return Tool(fn.__name__, function_schema(fn, where), function=fn, source=where)


def function_schema(fn: Callable, where: str = "tool") -> dict:
    """The OpenAI function schema of `fn` (the same shape transformers' get_json_schema gives)."""
    at = f"{where}: function {fn.__name__}"
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:
        raise UsageError(f"{at}: its type hints cannot be read ({one_line(e)})") from None
    description, arg_docs = _docstring(inspect.getdoc(fn) or "")
    properties, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise UsageError(f"{at}: parameter {p.name} must be a plain named parameter (no *args, **kwargs, /)")
        try:
            prop = _json_type(hints.get(p.name, str))
        except TypeError as e:
            raise UsageError(f"{at}: parameter {p.name}: {e}") from None
        if p.name in arg_docs:
            prop["description"] = arg_docs[p.name]
        properties[p.name] = prop
        if p.default is p.empty:
            required.append(p.name)
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"type": "function", "function": {"name": fn.__name__, "description": description,
                                             "parameters": parameters}}


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(hint) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is typing.Any:
        return {}
    if hint in (list, dict) or origin in (list, dict):
        if (origin or hint) is list:
            return {"type": "array", "items": _json_type(args[0])} if args else {"type": "array"}
        return {"type": "object", "additionalProperties": _json_type(args[1])} if args else {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        schema = _json_type(rest[0]) if len(rest) == 1 else {"type": [_json_type(a).get("type") for a in rest]}
        return {**schema, "nullable": True} if len(rest) < len(args) else schema
    if origin is typing.Literal:
        kinds = {_SCALARS.get(type(a)) for a in args}
        if None in kinds:
            raise TypeError("Literal values must be str, int, float or bool")
        return {"type": kinds.pop() if len(kinds) == 1 else sorted(kinds), "enum": list(args)}
    raise TypeError(f"no JSON schema type for {getattr(hint, '__name__', hint)!s} (use str, int, float, bool, "
                    "list[...], dict[...], Optional[...] or Literal[...])")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph, {parameter: description}) of a Google-style docstring."""
    paragraphs = doc.strip().split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and not paragraphs[0].startswith("Args:") else ""
    args: dict[str, str] = {}
    lines = doc.splitlines()
    if "Args:" in (line.strip() for line in lines):
        start = [line.strip() for line in lines].index("Args:") + 1
        current, args_indent = None, 0
        for line in lines[start:]:
            if not line.strip():
                continue
            if not line.startswith((" ", "\t")) and line.strip().endswith(":"):
                break  # the next section (Returns:, Raises:)
            m = re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
            if m and (current is None or len(line) - len(line.lstrip()) <= args_indent):
                current, args_indent = m[1], len(line) - len(line.lstrip())
                args[current] = m[2].strip()
            elif current is not None:
                args[current] = f"{args[current]} {line.strip()}".strip()
    return description, args


# ------------------------------------------------------------------------------------------------ running


def run_tool(tool: Tool, arguments: dict | str, timeout_s: float = DEFAULT_TIMEOUT_S,
             max_output_bytes: int = DEFAULT_MAX_OUTPUT, cancel: threading.Event | None = None) -> str:
    """Run one call of `tool` with `arguments` (a dict, or the JSON string of an OpenAI tool call) and return the
    text of its `tool` message; an error (bad arguments, failure, timeout, cancel) is a result starting "error:"."""
    if isinstance(arguments, str):
        try:
            arguments = parse_json(arguments) if arguments.strip() else {}
        except ValueError as e:
            return f"error: the arguments {e}"
    if not isinstance(arguments, dict):
        return "error: the arguments must be a JSON object"
    if tool.exec:
        return _run_exec(tool, arguments, timeout_s, max_output_bytes, cancel)
    if tool.function is not None:
        return _run_function(tool, arguments, timeout_s, max_output_bytes, cancel)
    return f"error: the tool {tool.name} cannot be run here (its definition has no \"exec\" command)"


def _argv(tool: Tool, arguments: dict) -> list[str] | str:
    props = tool.schema["function"].get("parameters", {}).get("properties", {})
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        return f"error: {tool.name} has no parameter {', '.join(map(repr, unknown))}"
    argv, options_end = [], False
    for item in tool.exec or []:
        m = _PLACEHOLDER.fullmatch(item)
        if not m or argv == []:
            options_end = options_end or item == "--"
            argv.append(item)
            continue
        if m[1] not in arguments:
            return f"error: the argument {m[1]!r} is required"
        value = arguments[m[1]]
        value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if value.startswith("-") and not options_end:
            return f"error: the argument {m[1]!r} must not start with '-' (it would be read as an option)"
        if "\0" in value:
            return f"error: the argument {m[1]!r} contains a NUL character"
        argv.append(value)
    return argv


def _run_exec(tool, arguments, timeout_s, max_output_bytes, cancel) -> str:
    argv = _argv(tool, arguments)
    if isinstance(argv, str):
        return argv
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: a kill reaches its children
    except OSError as e:
        return f"error: cannot run {argv[0]}: {e.strerror or e}"
    out = bytearray()
    overflow = threading.Event()

    def read():
        while chunk := proc.stdout.read1(1 << 16):
            if len(out) < max_output_bytes + 1:
                out.extend(chunk[: max_output_bytes + 1 - len(out)])
            if len(out) > max_output_bytes:
                overflow.set()
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stopped = _wait(lambda: proc.poll() is not None or overflow.is_set(), timeout_s, cancel)
    _kill_group(proc)  # on a stop, and after an exit: what it left running in the background holds the pipe
    proc.wait()
    reader.join(timeout=1)
    proc.stdout.close()
    return _result(bytes(out), max_output_bytes, stopped, timeout_s,
                   None if stopped or overflow.is_set() else proc.returncode)


def _run_function(tool, arguments, timeout_s, max_output_bytes, cancel) -> str:
    try:
        inspect.signature(tool.function).bind(**arguments)
    except TypeError as e:
        return f"error: bad arguments for {tool.name}: {one_line(e)}"
    box: dict = {}

    def call():
        try:
            value = tool.function(**arguments)
            box["out"] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        except BaseException as e:  # the tool's failure is the model's information, not our crash
            box["error"] = f"error: {type(e).__name__}: {one_line(e, 1000)}"

    worker = threading.Thread(target=call, daemon=True, name=f"tool {tool.name}")
    worker.start()
    stopped = _wait(lambda: not worker.is_alive(), timeout_s, cancel)
    if stopped:  # a thread cannot be killed: it is left to finish in the background, its result dropped
        return _result(b"", max_output_bytes, stopped, timeout_s, None)
    if "error" in box:
        return box["error"]
    return _result(box.get("out", "").encode("utf-8", "surrogatepass"), max_output_bytes, None, timeout_s, None)


def _wait(done: Callable[[], bool], timeout_s: float, cancel: threading.Event | None) -> str | None:
    """Wait until done(); "timeout" or "cancel" when stopped first."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if cancel is not None and cancel.is_set():
            return "cancel"
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        if cancel is not None:
            cancel.wait(min(_POLL_S, left))
        else:
            time.sleep(min(_POLL_S, left))
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _result(out: bytes, bound: int, stopped: str | None, timeout_s: float, status: int | None) -> str:
    text = out[:bound].decode("utf-8", "replace")
    if len(out) > bound:  # (a character the bound cut in two is left out)
        text = text.removesuffix("\ufffd") + f"\n[output truncated at {bound} bytes]"
    if stopped == "timeout":
        return f"error: the tool ran over {timeout_s:g} s and was stopped" + (f"; its output so far:\n{text}" if text
                                                                            else "")
    if stopped == "cancel":
        return "error: the user stopped the tool" + (f"; its output so far:\n{text}" if text else "")
    if status:
        return f"error: exit status {status}" + (f"\n{text}" if text else "")
    return text


# ------------------------------------------------------------------------------------------------ built-in tools


BUILTIN_TOOLS: dict[str, Callable[[], Tool]] = {
    "list_models": lambda: tool_from_function(list_models, "built-in"),
}
