"""One chat turn at a time against a local model: render the whole conversation with the model's template, keep
it inside the context budget, and generate through a `Session` that reuses the KV cache for the common prefix.
The REPL and `cohere chat --prompt` both drive this; a remote endpoint can stand in for it (same interface)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from cohere_cli.chat.conversation import Conversation, message_bytes
from cohere_cli.config import read_json_object
from cohere_cli.errors import CohereError, CohereWarning, ContextOverflow, TemplateError, UsageError
from cohere_cli.engine.response import Response
from cohere_cli.engine.sampling import SamplingOverrides, SamplingParams, check_bounds
from cohere_cli.store.manifest import read_manifest

if TYPE_CHECKING:  # LocalChat runs a local model; the remote chat (remote.py) shares the rest without torch
    from cohere_cli.engine.runtime import Runtime

DEFAULT_CTX_CAP = 8192  # the KV cache is preallocated: a 128K window for a 35B model would be 21 GB
DEFAULT_MAX_TOKENS = 1024


@dataclass
class ChatSettings:
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = DEFAULT_MAX_TOKENS
    template: str | None = None
    citations: str = "accurate"  # Command R rag template: accurate | fast
    on_overflow: str = "drop"  # drop the oldest exchanges, or refuse
    tools: list[dict] | None = None  # OpenAI-format tool schemas offered to the model (`--tools`); None: no tools
    think: bool | None = None  # --think / --no-think: the template's thinking switch (None: its default)
    think_budget: int | None = None  # --think-budget: thinking tokens before <|END_THINKING|> is forced (local)


def generation_defaults(folder: Path) -> dict:
    """Sampling defaults from the checkpoint's generation_config.json (what its authors recommend)."""
    try:
        g = read_json_object(folder / "generation_config.json", 1 << 20)  # ~200 bytes in every release
    except (OSError, ValueError):
        return {}

    def number(v) -> bool:  # JSON allows NaN and 1e999 (inf): neither is a setting
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    out = {}
    if g.get("do_sample") is False:
        out["temperature"] = 0.0
    elif number(g.get("temperature")):
        out["temperature"] = float(g["temperature"])
    for key, cast in (("top_k", int), ("top_p", float), ("min_p", float), ("repetition_penalty", float)):
        if number(g.get(key)):
            out[key] = cast(g[key])
    if isinstance(g.get("max_new_tokens"), int):
        out["max_tokens"] = g["max_new_tokens"]
    for key, value in list(out.items()):  # the file is the checkpoint's, not the user's: out of range is ignored
        try:
            check_bounds(key, value)
        except UsageError as e:
            warnings.warn(f"{folder / 'generation_config.json'}: {e}; the default is used", CohereWarning,
                          stacklevel=2)
            del out[key]
    return out


def settings_from(folder: Path | None, sampling: SamplingOverrides, *, max_tokens: int | None = None,
                  template: str | None = None, citations: str = "accurate",
                  on_overflow: str = "drop") -> tuple[ChatSettings, set[str]]:
    """A chat's settings: the checkpoint's generation_config.json (what its authors recommend) < the command line
    (`sampling`). Also the sampling fields either one set: a server applies its own defaults to the others, so only
    these are sent."""
    defaults = generation_defaults(folder) if folder is not None else {}
    given = sampling.given()
    merged = {k: v for k, v in {**defaults, **given}.items() if k != "max_tokens"}
    settings = ChatSettings(params=SamplingParams(**merged),
                            max_tokens=max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS,
                            template=template, citations=citations, on_overflow=on_overflow)
    return settings, set(merged)


def grounded_template(tok, template: str | None, settings: ChatSettings, model: str) -> tuple[str | None, dict]:
    """Which template renders documents: Command R's `rag`, or the cmd3 template's documents path."""
    from cohere_cli.engine.tokenizer import cannot_ground, documents_template  # the decision `chat --doc` makes early

    templates = tok.chat_templates
    name = documents_template(templates, template)
    if name is None:
        raise TemplateError(cannot_ground(model, templates, template, "/doc clear to chat without documents"))
    source = templates[name]
    if "citation_mode" in source:
        return name, {"citation_mode": settings.citations}
    return name, {"enable_citations": True}


def render_text(tok, conv: Conversation, settings: ChatSettings, model: str, generation_prompt: bool = True) -> str:
    """The whole conversation through the model's template, ready for generation (local or a raw completion); without
    the generation prompt: the conversation so far, as the next prompt will start (what it costs in the context)."""
    kwargs, template = {}, settings.template
    if settings.tools is not None:  # tool use (chat/toolloop.py): the model's tool template, documents if it has them
        template = tool_template(tok, template)
        kwargs["tools"] = settings.tools
        if conv.documents and "documents" in tok.chat_templates[template]:
            kwargs["documents"] = conv.documents
        from cohere_cli.engine.toolcalls import template_messages

        messages = [{k: v for k, v in m.items() if v is not None} for m in template_messages(conv.messages())]
        return tok.apply_chat_template(messages, template=template, add_generation_prompt=generation_prompt,
                                       **kwargs, **think_kwargs(tok, template, settings.think))
    if conv.documents:
        template, kwargs = grounded_template(tok, template, settings, model)
        kwargs["documents"] = conv.documents
    elif template == "rag":
        raise TemplateError("the rag template answers from documents: attach some with --doc FILE or /doc add")
    elif template == "tool_use":
        kwargs["tools"] = []  # chat has no tools to offer; the template still needs the list
    return tok.apply_chat_template(conv.messages(), template=template, add_generation_prompt=generation_prompt,
                                   **kwargs, **think_kwargs(tok, template, settings.think))


def think_kwargs(tok, template: str | None, think: bool | None) -> dict:
    """`{switch: think}` for the template's thinking switch (engine/thinking.py), when --think/--no-think is given
    and the template has one."""
    from cohere_cli.engine.thinking import template_source, think_switch

    switch = think_switch(template_source(tok.chat_templates, template)) if think is not None else None
    return {switch: think} if switch else {}


def tool_template(tok, template: str | None) -> str:
    """The template that renders tools: --template when given, else Command R's `tool_use` or a cmd3 default."""
    from cohere_cli.engine.tokenizer import renders_tools, tools_template

    name = template or tools_template(tok.chat_templates)
    if name is None or not renders_tools(tok.chat_templates.get(name, "")):
        raise TemplateError(f"this model's chat template{f' {name!r}' if name else ''} has no tools path: tool use "
                            f"needs Command R, R+, R7B or A (their tool_use or default template)")
    return name


def tool_format(tok, template: str | None) -> str:
    """The tool-call format the model writes: cmd3's `<|START_ACTION|>` blocks or Command R's `Action:` list."""
    from cohere_cli.engine.toolcalls import FORMAT_CMD3, FORMAT_COMMAND_R, START_ACTION

    source = tok.chat_templates.get(tool_template(tok, template), "")
    return FORMAT_CMD3 if START_ACTION in source else FORMAT_COMMAND_R


@dataclass
class TurnStats:
    """One answer (each /regen is one more): its counts, whether it was cut short (Ctrl-C, a broken stream), and the
    fingerprint of the conversation it left (Conversation.fingerprint), so that the tokens in use can be told for
    whichever conversation is current after /undo, /edit or /load."""
    prompt_tokens: int
    prefilled_tokens: int
    generated: int
    ttft_s: float
    decode_tokens_per_s: float
    interrupted: bool = False
    conversation: str = ""

    @property
    def used(self) -> int:
        """The tokens in the context once this answer was given: the prompt and the answer (its status line)."""
        return self.prompt_tokens + self.generated


class AnswerRecorder:
    """What ChatBackend.stream implementations keep of the answer they stream, so that the answer is in `history`
    however its stream ends: finished, stopped by Ctrl-C (in the model or in the caller's loop: the generator is
    then closed), or broken off (a server gone). An answer that failed otherwise (out of memory, a bug) is not kept:
    the REPL takes its message back."""

    def __init__(self, conv: Conversation, n_prompt: int):
        self.hasher, self.n_prompt = conv.hasher(), n_prompt  # the conversation as it was asked, before any answer
        self.pieces: list[str] = []
        self.last: Response | None = None

    def seen(self, r: Response) -> None:
        self.pieces.append(r.text)
        self.last = r

    def stats(self, interrupted: bool) -> TurnStats:
        self.hasher.update(message_bytes("assistant", "".join(self.pieces)))
        r, key = self.last, self.hasher.hexdigest()
        if r is None:  # stopped before the first token: the prompt was (being) read, nothing answered
            return TurnStats(self.n_prompt, 0, 0, 0.0, 0.0, interrupted=True, conversation=key)
        return TurnStats(r.prompt_tokens, r.prefilled_tokens, r.generation_tokens, r.ttft_s, r.decode_tokens_per_s,
                         interrupted=interrupted, conversation=key)


def fit_context(conv: Conversation, settings: ChatSettings, context: int,
                encode: Callable[[Conversation], tuple[str, list[int]]]) -> tuple[str, list[int], int]:
    """The conversation rendered (text and ids) so that it leaves room for an answer, dropping the fewest oldest
    exchanges that make it fit if the policy allows; returns (text, ids, exchanges dropped). Never drops the preamble
    or the documents; never truncates silently: ContextOverflow says what to do instead."""
    reserve = min(settings.max_tokens, max(context // 4, 1))
    text, ids = encode(conv)
    if len(ids) + reserve <= context:
        return text, ids, 0
    if settings.on_overflow == "error":
        raise ContextOverflow(
            f"the conversation needs {len(ids)} tokens + {reserve} for the answer, over the context of "
            f"{context}: /reset, /undo, or restart with --on-overflow drop")
    # Where each exchange after the oldest starts: dropping k exchanges keeps turns[starts[k - 1]:]. The fewest k
    # that fits is found by doubling, then halving: a few renders, not one per exchange (a loaded conversation may
    # hold thousands, and each render is the whole conversation).
    starts = [i for i in range(1, len(conv.turns)) if conv.turns[i]["role"] == "user"]
    tried: dict[int, tuple[str, list[int]]] = {}

    def fits(k: int) -> bool:
        tried[k] = encode(replace(conv, turns=conv.turns[starts[k - 1]:]))
        return len(tried[k][1]) + reserve <= context

    lo, hi = 0, 1  # lo does not fit; hi is the next to try
    while True:
        if hi >= len(starts):
            hi = len(starts)
            if hi == 0 or not fits(hi):
                n = len(tried[hi][1]) if hi else len(ids)
                raise ContextOverflow(
                    f"this message alone needs {n} tokens + {reserve} for the answer, over the context of "
                    f"{context}: shorten it (or remove documents)")
            break
        if fits(hi):
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # lo does not fit, hi fits
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    del conv.turns[:starts[hi - 1]]
    return (*tried[hi], hi)


class ChatBackend:
    """What the REPL and `chat --prompt` drive, local or remote: the settings, the conversation rendered with the
    model's own template and fitted into the context, the per-turn stats. LocalChat and RemoteChat (chat/remote.py)
    differ only in where the answer comes from."""

    settings: ChatSettings
    context: int
    history: list[TurnStats]
    tokenizer = None

    @property
    def name(self) -> str:
        raise NotImplementedError

    def render_text(self, conv: Conversation, generation_prompt: bool = True) -> str:
        return render_text(self.tokenizer, conv, self.settings, self.name, generation_prompt)

    def context_used(self, conv: Conversation) -> int | None:
        """The tokens `conv` takes in the context now: what the next prompt costs before the next message. 0 for
        an empty conversation without preamble or documents (after /reset); the count its last answer reported
        (prompt + answer, as its status line said, interrupted or not) while the conversation is the one that
        answer left, as after /undo, /edit or /load of a conversation of this session; otherwise the conversation
        rendered with the template (a preamble or documents alone, /system, /doc, a file from elsewhere). None when
        it cannot be known here: a server without a local tokenizer, until its next answer."""
        if not (conv.turns or conv.system or conv.documents):
            return 0
        key = conv.fingerprint()
        for s in reversed(self.history):
            if s.conversation == key:
                return s.used
        if self.tokenizer is None:
            return None
        try:
            return len(self.tokenizer.encode(self.render_text(conv, generation_prompt=False), add_bos=False))
        except CohereError:
            return None

    def render(self, conv: Conversation) -> list[int]:
        return self._encode(conv)[1]

    def _encode(self, conv: Conversation) -> tuple[str, list[int]]:
        text = self.render_text(conv)
        return text, self.tokenizer.encode(text, add_bos=False)  # the template wrote BOS itself

    def fit(self, conv: Conversation) -> tuple[list[int], int]:
        """The prompt ids for this turn and how many old exchanges were dropped to make room (fit_context)."""
        _, ids, dropped = fit_context(conv, self.settings, self.context, self._encode)
        return ids, dropped

    def check_grounding(self) -> None:
        """Raise now (not at the next turn) if this model cannot render documents."""
        grounded_template(self.tokenizer, self.settings.template, self.settings, self.name)

    def with_params(self, **changes) -> None:
        self.settings.params = replace(self.settings.params, **changes)


class LocalChat(ChatBackend):
    def __init__(self, rt: Runtime, settings: ChatSettings, ctx: int | None = None):
        from cohere_cli.engine.generate import Session

        self.rt, self.settings = rt, settings
        self.context = min(ctx or min(rt.context, DEFAULT_CTX_CAP), rt.context)
        self.session = Session(rt.model, max_seq=self.context)
        self.history: list[TurnStats] = []

    @property
    def name(self) -> str:
        return self.rt.name

    @property
    def tokenizer(self):
        return self.rt.tokenizer

    # ---- one turn ------------------------------------------------------------------------------------------------
    def stream(self, conv: Conversation, ids: list[int]) -> Iterator[Response]:
        from cohere_cli.engine.generate import stream_generate
        from cohere_cli.engine.thinking import think_budget

        answer = AnswerRecorder(conv, len(ids))
        think = think_budget(self.rt.tokenizer, self.settings.think_budget, ids, self.settings.tools is not None)
        try:
            for r in stream_generate(self.rt.model, self.rt.tokenizer, ids, self.settings.params,
                                     self.settings.max_tokens, session=self.session, context=self.context,
                                     think=think):
                answer.seen(r)
                yield r
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C: the partial answer stays in the conversation
            self.history.append(answer.stats(interrupted=True))
            raise
        self.history.append(answer.stats(interrupted=False))

    def describe(self) -> dict:
        cfg, rt = self.rt.loaded.config, self.rt
        manifest_precision = (read_manifest(rt.folder) or {}).get("precision")
        dtype = str(rt.loaded.dtype).removeprefix("torch.")
        return {
            "model": f"{self.name} ({rt.folder})",
            "architecture": f"{cfg.model_type}, {cfg.n_layers} layers, hidden {cfg.hidden_size}",
            "precision": f"{manifest_precision or 'weights'} computing in {dtype}",
            "template": self.settings.template or "default",
        }

    def reset(self) -> None:
        self.session.reset()
