"""`cohere chat`: the interactive REPL, or one templated turn with --prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.chat_engine import ChatSettings, LocalChat, generation_defaults
from cohere_cli.commands.stream import run_and_print
from cohere_cli.console import info
from cohere_cli.conversation import Conversation, read_document, read_messages
from cohere_cli.runtime import load_runtime
from cohere_cli.sampling import SamplingParams

DEFAULT_MAX_TOKENS = 1024


@dataclass
class ChatOptions:
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    history: Path | None = None
    template: str | None = None
    docs: list[Path] = field(default_factory=list)
    citations: str = "accurate"
    plain: bool = False
    on_overflow: str = "drop"
    ctx: int | None = None
    max_tokens: int | None = None
    dtype: str = "auto"
    json_out: bool = False
    sampling: dict = field(default_factory=dict)  # None = not given on the command line
    endpoint: str | None = None  # an OpenAI-compatible server instead of a local model (MODEL: its tokenizer)
    api_key: str | None = None
    served_model: str | None = None
    timeout: float = 120.0


def pick_model(spec: str | None) -> str:
    """MODEL, else the model used last, else the built-in demo; says which when it chose."""
    from cohere_cli.store import last_used

    if spec:
        return spec
    chosen = last_used() or "demo"
    info(f"no MODEL given: using {chosen} ({'the last one used' if chosen != 'demo' else 'the built-in demo'})")
    return chosen


def build_conversation(o: ChatOptions) -> Conversation:
    conv = Conversation()
    if o.history:
        msgs, conv.documents = read_messages(o.history)
        if msgs and msgs[0]["role"] == "system":
            conv.system = msgs.pop(0)["content"]
        conv.turns = msgs
    if o.system is not None:  # --system replaces a saved preamble
        conv.system = o.system
    conv.documents += [read_document(p) for p in o.docs]
    return conv


def settings_for(o: ChatOptions, folder: Path) -> ChatSettings:
    defaults = generation_defaults(folder)
    given = {k: v for k, v in o.sampling.items() if v is not None}
    params = SamplingParams(**{k: v for k, v in {**defaults, **given}.items() if k != "max_tokens"})
    max_tokens = o.max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    return ChatSettings(params=params, max_tokens=max_tokens, template=o.template, citations=o.citations,
                        on_overflow=o.on_overflow)


def run_chat(o: ChatOptions) -> None:
    from cohere_cli.store import remember_last_used

    conv = build_conversation(o)  # bad files fail before seconds of model loading
    if o.endpoint:
        from cohere_cli.commands.remote import run_remote_chat

        return run_remote_chat(o, conv)
    name = pick_model(o.model)
    rt = load_runtime(name, o.dtype)
    remember_last_used(name)
    engine = LocalChat(rt, settings_for(o, rt.folder), ctx=o.ctx)
    drive(engine, conv, o, lambda ids: run_and_print(rt, ids, engine.settings.params, engine.settings.max_tokens,
                                                      o.json_out))


def drive(engine, conv: Conversation, o: ChatOptions, answer) -> None:
    """What chat does with an engine, local (LocalChat) or remote (RemoteChat): with --prompt one turn, printed by
    `answer(prompt ids)`; else the REPL."""
    if conv.documents:
        engine.check_grounding()
    if o.prompt is not None:
        conv.add_user(o.prompt)
        ids, dropped = engine.fit(conv)
        if dropped:
            info(f"context full: dropped the {dropped} oldest exchanges of the history")
        answer(ids)
        return
    from cohere_cli.repl import Repl
    from cohere_cli.store import store_root

    Repl(engine, conv, plain=o.plain, history_file=store_root() / "chat_history").run()
