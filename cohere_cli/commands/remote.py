"""`cohere chat --endpoint URL` and `cohere generate --endpoint URL`: the same commands against an OpenAI-compatible
server (see cohere_cli.remote). MODEL, when given, is a local copy used for its tokenizer, templates and
generation_config.json only; no weights are loaded."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cohere_cli.chat_engine import ChatSettings, generation_defaults
from cohere_cli.console import err, info, out_write
from cohere_cli.response import Response
from cohere_cli.openai_http import DEFAULT_TIMEOUT, Client
from cohere_cli.remote import Api, RemoteChat, discover, generate_stream, local_folder, pick_context
from cohere_cli.sampling import SamplingParams


@dataclass
class EndpointOptions:
    url: str
    api_key: str | None = None
    served_model: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def connect(e: EndpointOptions, model: str | None):
    """Client, what the server serves, and the local folder + tokenizer standing for the served model."""
    from cohere_cli.tokenizer import Tokenizer

    client = Client(e.url, e.api_key, e.timeout)
    server = discover(client, e.served_model)
    folder = local_folder(model, server.served)
    tok = Tokenizer.from_dir(folder) if folder is not None and (model or (folder / "tokenizer.json").is_file()) \
        else None
    return client, server, folder, tok


def stats_line(r: Response) -> str:
    return (f"{r.prompt_tokens} prompt tokens, {r.generation_tokens} generated at {r.decode_tokens_per_s:.1f} tok/s, "
            f"first token {r.ttft_s * 1000:.0f} ms, finish: {r.finish_reason}")


def print_responses(stream: Iterator[Response], prompt_ids: list[int] | None, json_out: bool, *,
                    endpoint: str, model: str | None) -> Response:
    """Like commands.stream.run_and_print: text to stdout as it comes and stats to stderr, or one JSON object. When
    the stream breaks, the text that arrived stays printed and the error (one line) ends the command."""
    text, last = [], None
    try:
        for r in stream:
            text.append(r.text)
            if not json_out and r.text:
                out_write(r.text)
            last = r
    finally:
        if not json_out and sys.stdout.isatty() and text:
            out_write("\n")
    if json_out:
        print(json.dumps({
            "endpoint": endpoint,
            "model": model,
            "prompt_tokens": prompt_ids,  # as rendered here (None without a local tokenizer)
            "prompt_token_count": last.prompt_tokens,  # as the server counted them, when it says
            "tokens": None,  # the server sends text, not ids
            "generation_tokens": last.generation_tokens,
            "text": "".join(text),
            "finish_reason": last.finish_reason,
            "prefill_tokens_per_s": last.prefill_tokens_per_s,
            "decode_tokens_per_s": last.decode_tokens_per_s,
            "ttft_s": last.ttft_s,
            "peak_memory_bytes": None,
        }, ensure_ascii=False))
    else:
        err.print(f"[dim]{stats_line(last)}[/dim]")
    return last


def remote_settings(o, folder: Path | None) -> tuple[ChatSettings, set[str]]:
    """Sampling as locally (generation_config.json of the local copy < command line), and which fields to send: the
    ones set there; the server's own defaults apply to the rest."""
    from cohere_cli.commands.chat import DEFAULT_MAX_TOKENS

    defaults = generation_defaults(folder) if folder is not None else {}
    given = {k: v for k, v in o.sampling.items() if v is not None}
    merged = {k: v for k, v in {**defaults, **given}.items() if k != "max_tokens"}
    max_tokens = o.max_tokens or defaults.get("max_tokens") or DEFAULT_MAX_TOKENS
    settings = ChatSettings(params=SamplingParams(**merged), max_tokens=max_tokens, template=o.template,
                            citations=o.citations, on_overflow=o.on_overflow)
    return settings, set(merged)


def run_remote_chat(o, conv) -> None:
    """`cohere chat --endpoint URL`: o is commands.chat.ChatOptions, conv the Conversation it built."""
    e = EndpointOptions(o.endpoint, o.api_key, o.served_model, o.timeout)
    client, server, folder, tok = connect(e, o.model)
    settings, send = remote_settings(o, folder)
    context, source = pick_context(server.context, folder, o.ctx)
    engine = RemoteChat(Api(client), settings, served_model=server.served, tokenizer=tok, folder=folder,
                        context=context, context_source=source, send=send)
    info(f"{client.url}: {server.served or 'its only model'}, context {context} ({source}), "
         f"tokenizer {'from ' + str(folder) if tok is not None else 'none here (plain chat; counts from the server)'}")
    from cohere_cli.commands.chat import drive

    drive(engine, conv, o, lambda ids: print_responses(engine.stream_strict(conv, ids), ids or None, o.json_out,
                                                        endpoint=client.url, model=server.served))


def run_remote_generate(model: str | None, prompt: str, params: SamplingParams, *, max_tokens: int, json_out: bool,
                        endpoint: EndpointOptions) -> None:
    client, server, folder, tok = connect(endpoint, model)
    api = Api(client)
    ids, stream = generate_stream(api, prompt, params, max_tokens, served_model=server.served, tokenizer=tok)
    print_responses(stream, ids, json_out, endpoint=client.url, model=server.served)
