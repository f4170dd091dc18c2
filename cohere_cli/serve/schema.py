"""Request bodies, every field bounded: a request is untrusted (size, depth and count bounds, numbers in the ranges
the sampler accepts, only the fields we act on), and OpenAI's error shape. Fields we do not support are refused
(400) when set to anything but their neutral value, rather than silently ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from cohere_cli.engine.sampling import BOUNDS
from cohere_cli.engine.thinking import SWITCHES
from cohere_cli.untrusted import one_line

MAX_BODY = 8 << 20  # bytes of one request body: a chat's saved-conversation bound (chat/conversation.py)
MAX_TEXT = 4 << 20  # characters of one message, document or prompt (a document's bound)
MAX_MESSAGES = 10_000
MAX_TOOLS = 128
MAX_DOCUMENTS = 1_000
MAX_STOP = 8  # stop strings, each at most MAX_STOP_CHARS
MAX_STOP_CHARS = 256
MAX_NAME = 256  # a model, tool or call id
MAX_PROMPT_IDS = 1 << 20

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(max_length=MAX_NAME)]


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
             503: "server_busy_error"}

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def _bound(name: str, **kw):
    lo, hi = BOUNDS[name]
    return Field(None, ge=lo, le=hi, **kw)


class _Model(BaseModel):
    # strict: a JSON string is not a number, a boolean or a list ("temperature": "0.5" is refused, as OpenAI does)
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, str_max_length=MAX_TEXT, strict=True)


class TextPart(_Model):
    type: Literal["text"]
    text: Text


class FunctionCall(_Model):
    name: Name
    arguments: Union[Annotated[str, Field(max_length=1 << 20)], dict[str, Any]] = "{}"


class ToolCallIn(_Model):
    id: Name = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, Annotated[list[TextPart], Field(max_length=1024)], None] = None
    tool_calls: Optional[Annotated[list[ToolCallIn], Field(max_length=32)]] = None
    tool_call_id: Optional[Name] = None
    reasoning_content: Optional[Text] = None
    tool_plan: Optional[Text] = None

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content


class FunctionDef(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]  # OpenAI's rule (and `cohere chat --tools`)
    description: Annotated[str, Field(max_length=64 << 10)] = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(_Model):
    include_usage: bool = False


class _Common(_Model):
    model: Optional[Name] = None
    max_tokens: Optional[Annotated[StrictInt, Field(ge=1, le=1 << 30)]] = None
    temperature: Optional[float] = _bound("temperature")
    top_p: Optional[float] = _bound("top_p")
    top_k: Optional[int] = _bound("top_k")
    min_p: Optional[float] = _bound("min_p")
    repetition_penalty: Optional[float] = _bound("repetition_penalty")
    seed: Optional[int] = _bound("seed")
    stop: Union[Annotated[str, Field(max_length=MAX_STOP_CHARS)],
                Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)],
                None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    ignore_eos: bool = False
    # refused unless neutral: we sample one answer, without these penalties or log-probabilities
    n: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: Optional[Any] = None
    best_of: Optional[int] = None
    top_logprobs: Optional[Any] = None
    logit_bias: Optional[Any] = None
    response_format: Optional[Any] = None
    guided_json: Optional[Any] = None  # vLLM's constrained decoding: we do not constrain
    guided_regex: Optional[Any] = None
    guided_choice: Optional[Any] = None
    guided_grammar: Optional[Any] = None

    @model_validator(mode="after")
    def _neutral(self):
        for name, neutral in (("n", 1), ("presence_penalty", 0), ("frequency_penalty", 0), ("best_of", 1)):
            value = getattr(self, name)
            if value is not None and value != neutral:
                raise ValueError(f"{name}={value!r} is not supported (leave it out or set {neutral})")
        if self.logprobs not in (None, False, 0) or self.top_logprobs not in (None, 0):
            raise ValueError("logprobs are not supported")
        if self.logit_bias not in (None, {}):
            raise ValueError("logit_bias is not supported")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("response_format is not supported (only {\"type\": \"text\"}): the output is not "
                             "constrained to JSON")
        for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is not supported: the output is not constrained")
        return self

    def stops(self) -> list[str]:
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop or []) if s]

    def sampling(self) -> dict:
        return {k: v for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
                if (v := getattr(self, k)) is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Common):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Optional[Annotated[StrictInt, Field(ge=1, le=1 << 30)]] = None
    tools: Optional[Annotated[list[Tool], Field(max_length=MAX_TOOLS)]] = None
    tool_choice: Union[Literal["auto", "none"], None] = None
    parallel_tool_calls: Optional[Literal[True]] = None  # false (one call at most) cannot be promised
    documents: Optional[Annotated[list[Union[Text, dict[Name, Text]]], Field(max_length=MAX_DOCUMENTS)]] = None
    chat_template_kwargs: Optional[dict[Literal[SWITCHES], bool]] = None
    citation_mode: Literal["accurate", "fast"] = "accurate"


class CompletionRequest(_Common):
    prompt: Union[Text, Annotated[list[Text], Field(min_length=1, max_length=1)],
                  Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_PROMPT_IDS)],
                  Annotated[list[list[StrictInt]], Field(min_length=1, max_length=1)]]
    echo: bool = False
    skip_special_tokens: bool = False
    suffix: Optional[str] = None

    @model_validator(mode="after")
    def _plain(self):
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        return self


def parse(cls: type[_Model], obj: Any) -> _Model:
    """`obj` (parsed JSON) as a `cls` request, or ApiError 400 naming the first bad field (inert, one line)."""
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        err = max(e.errors(include_url=False, include_input=False), key=_specific)  # first of the most specific
        where = ".".join(str(p) for p in _fields(err.get("loc", ()))) or "body"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        raise ApiError(400, one_line(f"{where}: {msg}", 300), param=one_line(where, 100)) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_tag(part) -> bool:
    """A union member's tag in pydantic's error location ("constrained-str", "list[int]"), not a field or a key of
    the request's own dicts ("my-key")."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS or
                                      part.startswith(("constrained-", "function-", "json-or-python")))


def _fields(loc) -> list:
    return [p for p in loc if not _is_tag(p)]


def _specific(err: dict) -> tuple[bool, int]:
    """For a field that may take several shapes (`stop`: a string or a list), the error of the shape the value
    had: not "should be a valid string" against a list, but the list's own error (its item, its length)."""
    loc = err.get("loc", ())
    wrong_branch = err.get("type", "").endswith("_type") and bool(loc) and _is_tag(loc[-1])
    return not wrong_branch, len(_fields(loc))
