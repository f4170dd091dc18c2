"""`cohere chat`: the interactive REPL, or one templated turn with --prompt; a local model, or with --endpoint an
OpenAI-compatible server (MODEL, when given, is then a local copy used for its tokenizer, templates and
generation_config.json only: no weights are loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.chat.conversation import Conversation, read_document, read_messages
from cohere_cli.chat.session import LocalChat, settings_from
from cohere_cli.commands.stream import Local, Remote, print_stream
from cohere_cli.engine.sampling import SamplingOverrides
from cohere_cli.remote.http import DEFAULT_TIMEOUT
from cohere_cli.ui.console import info, warn


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
    sampling: SamplingOverrides = field(default_factory=SamplingOverrides)
    endpoint: str | None = None  # an OpenAI-compatible server instead of a local model (MODEL: its tokenizer)
    api_key: str | None = None
    served_model: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    tools: list[str] = field(default_factory=list)  # --tools FILE (repeatable): JSON, .py, or a built-in name
    yes: bool = False  # --yes: run tool calls without asking
    max_steps: int = 5  # --max-steps: rounds of tool calls per message
    think: bool | None = None  # --think / --no-think: the template's thinking switch (None: its default)
    think_budget: int | None = None  # --think-budget N: <|END_THINKING|> forced after N thinking tokens (local)
    hide_thinking: bool = False  # --hide-thinking: one line instead of the thinking


def pick_model(spec: str | None) -> str:
    """MODEL, else the model used last (recorded by its resolved name), else the built-in demo; says which when it
    chose, and falls back to the demo with a note when the last one is gone (removed, moved)."""
    from cohere_cli import store

    if spec:
        return spec
    last = store.last_used()
    if last and (store.get_entry(last) or store.builtin_entry(last) or Path(last).is_dir()):
        info(f"no MODEL given: using {last} ({'the built-in demo' if last == store.DEMO else 'the last one used'})")
        return last
    gone = f"the last one used, {last}, is gone" if last else "the built-in demo"
    info(f"no MODEL given: using demo ({gone})")
    return store.DEMO


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


def run_chat(o: ChatOptions) -> None:
    conv = build_conversation(o)  # bad files fail before seconds of model loading
    tools = load_all_tools(o.tools)
    engine, answer = _remote(o, conv) if o.endpoint else _local(o, conv)
    drive(engine, conv, o, answer, tools)


def load_all_tools(specs: list[str]):
    """The tools of every --tools argument; a name given twice is a usage error."""
    from cohere_cli.chat.tools import load_tools
    from cohere_cli.errors import UsageError

    tools, seen = [], {}
    for spec in specs:
        for t in load_tools(spec):
            if t.name in seen:
                raise UsageError(f"--tools: two tools are named {t.name!r} ({seen[t.name]} and {spec})")
            seen[t.name] = spec
            tools.append(t)
    return tools


def _check_tools(templates: dict[str, str], model: str, o: ChatOptions) -> None:
    """Refuse --tools for a model whose template has no tools path, from its template files (before loading)."""
    from cohere_cli.engine.tokenizer import renders_tools, tools_template
    from cohere_cli.errors import TemplateError

    name = o.template or tools_template(templates)
    if name is None or not renders_tools(templates.get(name, "")):
        raise TemplateError(f"{model} cannot use tools: its chat template{f' {name!r}' if o.template else ''} has no "
                            f"tools path; models that can: Command R, R+, R7B and A; or run without --tools")


def _settings(o: ChatOptions, folder: Path | None):
    settings, send = settings_from(folder, o.sampling, max_tokens=o.max_tokens, template=o.template,
                                   citations=o.citations, on_overflow=o.on_overflow)
    settings.think, settings.think_budget = o.think, o.think_budget
    return settings, send


def _local(o: ChatOptions, conv: Conversation):
    from cohere_cli.engine.runtime import find_checkpoint, load_runtime
    from cohere_cli.engine.tokenizer import read_chat_templates
    from cohere_cli.store import remember_last_used

    ck = find_checkpoint(pick_model(o.model))
    if conv.documents and not o.tools:  # from its template files: one that cannot ground is refused before loading
        _check_grounding(read_chat_templates(ck.folder), ck.name, o)
    if o.tools:
        _check_tools(read_chat_templates(ck.folder), ck.name, o)
    from cohere_cli.engine.generate import stream_generate  # torch: only where a local model runs

    rt = load_runtime(ck, o.dtype)
    info(rt.summary())
    remember_last_used(rt.key)
    engine = LocalChat(rt, _settings(o, rt.folder)[0], ctx=o.ctx)
    if o.ctx and o.ctx > engine.context:
        warn(f"--ctx {o.ctx} is more than {rt.name} can attend to: using {engine.context} tokens, its context length")
    from cohere_cli.engine.thinking import think_budget

    s = engine.settings  # --prompt: one turn, no /set in between
    return engine, lambda ids: print_stream(split(rt.tokenizer, o, ids)(stream_generate(
        rt.model, rt.tokenizer, ids, s.params, s.max_tokens, think=think_budget(rt.tokenizer, s.think_budget, ids,
                                                                                False))),
        o.json_out, Local(ids), o.hide_thinking)


def split(tok, o: ChatOptions, ids: list[int]):
    """What separates thinking from the answer for `chat --prompt` (chat/thinking.py), or nothing to do."""
    from cohere_cli.chat.thinking import ThinkingSplit, thinks

    return ThinkingSplit(tok, ids) if thinks(tok, o.template) else (lambda stream: stream)


def _remote(o: ChatOptions, conv: Conversation):
    from cohere_cli.chat.remote import RemoteChat
    from cohere_cli.remote.backend import Api, EndpointOptions, connect, pick_context

    from cohere_cli.errors import UsageError

    if o.think_budget is not None:  # a server samples every token itself: none can be forced from here
        raise UsageError("--think-budget works with a local model only: a server's generation cannot be given the "
                         "end-of-thinking token from here (--endpoint); use --max-tokens, or --no-think")
    client, server, folder, tok = connect(EndpointOptions(o.endpoint, o.api_key, o.served_model, o.timeout), o.model)
    settings, send = _settings(o, folder)
    context, source = pick_context(server.context, folder, o.ctx)
    if o.ctx and o.ctx > context:
        warn(f"--ctx {o.ctx} is more than the model's context: using {context} tokens ({source})")
    engine = RemoteChat(Api(client), settings, served_model=server.served, tokenizer=tok, folder=folder,
                        context=context, context_source=source, send=send)
    info(f"{client.url}: {server.served or 'its only model'}, context {context} ({source}), "
         f"tokenizer {'from ' + str(folder) if tok is not None else 'none here (plain chat; counts from the server)'}")
    return engine, lambda ids: print_stream(split(tok, o, ids)(engine.stream_strict(conv, ids)), o.json_out,
                                            Remote(ids or None, client.url, server.served), o.hide_thinking)


def _check_grounding(templates: dict[str, str], model: str, o: ChatOptions) -> None:
    """Refuse documents (--doc, or a --history that holds some) for a model whose template cannot render them, with
    what to do here, on the command line (the REPL's own message says /doc clear)."""
    from cohere_cli.engine.tokenizer import cannot_ground, documents_template
    from cohere_cli.errors import TemplateError

    if documents_template(templates, o.template) is None:
        advice = "run without --doc" if o.docs else f"chat without the documents that {o.history} holds"
        raise TemplateError(cannot_ground(model, templates, o.template, advice))


def drive(engine, conv: Conversation, o: ChatOptions, answer, tools=()) -> None:
    """What chat does with an engine, local (LocalChat) or remote (RemoteChat): with --prompt one turn, printed by
    `answer(prompt ids)`; else the REPL. With tools, each turn goes through the tool loop (chat/toolloop.py)."""
    from cohere_cli.chat.thinking import thinks
    from cohere_cli.chat.toolloop import CMD3_MARKERS, ToolLoop

    loop = None
    thinking = thinks(engine.tokenizer, o.template)
    _check_thinking(engine.tokenizer, o, thinking)
    if thinking and hasattr(engine, "keep_markers"):
        engine.keep_markers = CMD3_MARKERS  # a server's text keeps the blocks the parser reads
    if tools:
        if engine.tokenizer is not None:
            _check_tools(engine.tokenizer.chat_templates, engine.name, o)
        loop = ToolLoop(engine, list(tools), max_steps=o.max_steps, markdown=not o.plain)
    elif conv.documents:
        if engine.tokenizer is None:
            engine.check_grounding()  # remote without a local MODEL: says why documents need one
        _check_grounding(engine.tokenizer.chat_templates, engine.name, o)
    if o.prompt is not None and loop is not None:
        from cohere_cli.ui.toolview import one_shot

        conv.add_user(o.prompt)
        one_shot(loop, conv, json_out=o.json_out, yes=o.yes, hide_thinking=o.hide_thinking)
        return
    if thinking and loop is None and o.prompt is None:  # the REPL: answers read by the tool loop's parser, no tools
        loop = ToolLoop(engine, [], markdown=not o.plain)
    if o.prompt is not None:
        conv.add_user(o.prompt)
        ids, dropped = engine.fit(conv)
        if dropped:
            info(f"context full: dropped the {dropped} oldest exchanges of the history")
        answer(ids)
        return
    from cohere_cli.ui.repl import Repl
    from cohere_cli.store import store_root

    repl = Repl(engine, conv, plain=o.plain, history_file=store_root() / "chat_history")
    if loop is not None:
        from cohere_cli.ui.toolview import TerminalToolView

        repl.tools, loop.markdown = loop, not repl.plain
        repl.tool_view = TerminalToolView(plain=repl.plain, out=repl.out, tty=repl.tty, yes=o.yes,
                                          hide_thinking=o.hide_thinking)
    repl.run()


def _check_thinking(tok, o: ChatOptions, thinking: bool) -> None:
    """One line when a reasoning option can change nothing with this template."""
    from cohere_cli.engine.thinking import template_source, think_switch

    if tok is None:
        return
    if o.think is not None and not think_switch(template_source(tok.chat_templates, o.template)):
        info(f"{'--think' if o.think else '--no-think'} changes nothing: this model's chat template has no thinking "
             f"switch (a reasoning template's `reasoning` variable)")
    if (o.think_budget is not None or o.hide_thinking) and not thinking:
        info("this model's chat template has no thinking phase: --think-budget and --hide-thinking change nothing")
