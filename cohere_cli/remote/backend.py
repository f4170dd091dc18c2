"""`--endpoint URL`: chat, generate and bench against an OpenAI-compatible server (vLLM, TGI, llama.cpp's server,
`transformers serve`) instead of a local model. The standard library's http.client only: no new dependency.

* Plain chat goes to `/v1/chat/completions` (the server applies the model's chat template).
* Grounded chat (documents), a named template (`--template tool_use`) and `generate` render the prompt *here*, with
  the model's own tokenizer and templates (MODEL, or the store entry named like the served model), and send it to
  `/v1/completions` as raw text: token ids when the server takes them (vLLM, llama.cpp), else the text without the
  BOS the server adds itself. A server that tokenizes it differently is reported once.
* Streaming is Server-Sent Events (cohere_cli/remote/http.py); a response that is not an event stream, a stream that
  stops before its finish chunk, longer than --timeout without a chunk of text, a refused connection, a 401 or an
  unknown model each become one line (`RemoteError`). Ctrl-C closes the connection (the server then drops the request).
* Nothing the server sends is taken on trust: a field of the wrong type (usage counts that are not whole numbers,
  choices that are not a list, text that is not a string) is ignored, never a traceback; an answer that runs past
  max_tokens (a server that ignores it) is cut here, finish_reason "length"; one past MAX_BODY in all is an error.
* `cohere_cli.chat.remote.RemoteChat` is the chat backend on top of this."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from cohere_cli.engine.response import Response
from cohere_cli.config import read_config_json
from cohere_cli.errors import CheckpointError, CohereWarning
from cohere_cli.remote.tool_deltas import tool_call_deltas
from cohere_cli.remote.http import DEFAULT_TIMEOUT, MAX_BODY, Call, Client, HTTPStatusError, RemoteError

ASSUMED_CONTEXT = 8192  # when neither the server, a local config nor --ctx says
# Sampling fields outside the OpenAI schema: vLLM, SGLang and llama.cpp take them, strict servers reject them.
EXTRA_SAMPLING = ("top_k", "min_p", "repetition_penalty")
OPTIONAL_FIELDS = EXTRA_SAMPLING + ("stream_options",)
# Cohere turn markers a server may print as text (they are `"special": false` in the tokenizer), used when no local
# tokenizer lists them: the first three end the answer, the others are dropped.
STOP_MARKERS = ("<|END_OF_TURN_TOKEN|>", "<|END_RESPONSE|>", "<EOS_TOKEN>")
DROP_MARKERS = ("<BOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|START_RESPONSE|>")
FINISH = {"eos_token": "stop", "eos": "stop", "stop_sequence": "stop", "max_tokens": "length"}
SHOWN_IDS = 8  # served model ids quoted in one error line
# Counting tokens in a stream of text: a chunk counts as at least one token per LONGEST_TOKEN characters (no
# tokenizer has longer tokens), so a server sending 1 MiB chunks cannot pass a million tokens off as one each.
LONGEST_TOKEN = 128


def count_field(value) -> int | None:
    """A count from the server (usage, context length): a whole number >= 0, else None (ignored)."""
    return value if type(value) is int and value >= 0 else None


def _ids_text(ids: list[str]) -> str:
    """Served ids for one line: each repr'd and cut (they are the server's words), at most SHOWN_IDS of them."""
    shown = ", ".join(repr(i[:80]) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


# ---- what the server serves ----------------------------------------------------------------------------------------
@dataclass
class ServerInfo:
    models: list[str]  # ids from /v1/models ([] when it lists none or has no such route)
    served: str | None  # the model we ask for (None: the server's only/pinned one, the "model" field left out)
    context: int | None  # the server's context length, when it says


@dataclass
class EndpointOptions:
    url: str
    api_key: str | None = None
    served_model: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def connect(e: EndpointOptions, model: str | None):
    """Client, what the server serves, and the local folder + tokenizer standing for the served model."""
    from cohere_cli.engine.tokenizer import Tokenizer

    client = Client(e.url, e.api_key, e.timeout)
    server = discover(client, e.served_model)
    folder = local_folder(model, server.served)
    tok = Tokenizer.from_dir(folder) if folder is not None and (model or (folder / "tokenizer.json").is_file()) \
        else None
    return client, server, folder, tok


def discover(client: Client, served_model: str | None) -> ServerInfo:
    """/v1/models: which model to ask for, and its context (vLLM's max_model_len). A refused connection or a 401
    fails here, before anything else happens; a server without the route is fine."""
    try:
        listing = client.get_json(client.base + "/models", timeout=min(client.timeout, 30))
    except HTTPStatusError as e:
        if e.status in (401, 403):
            raise
        listing = None
    data = listing.get("data") if isinstance(listing, dict) else None
    # an id is sent back as "model" verbatim, so it is kept as is; it is only ever shown inert (ui) or repr'd
    entries = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]] \
        if isinstance(data, list) else []
    ids = [m["id"] for m in entries]
    if served_model is not None:
        if ids and served_model not in ids:
            raise RemoteError(f"{client.url} does not serve {served_model!r}; it serves: {_ids_text(ids)}")
        served = served_model
    elif len(ids) == 1:
        served = ids[0]
    elif len(ids) > 1:
        raise RemoteError(f"{client.url} serves several models ({_ids_text(ids)}): pick one with --served-model "
                          f"NAME")
    else:
        served = None
    entry = next((m for m in entries if m["id"] == served), None)
    context = None
    if entry is not None:
        for key in ("max_model_len", "context_length", "max_context_length"):
            if count_field(entry.get(key)):
                context = entry[key]
                break
    if context is None:
        context = _probe_context(client)
    return ServerInfo(ids, served, context)


def _probe_context(client: Client) -> int | None:
    """TGI's /info (max_total_tokens) and llama.cpp's /props (n_ctx); harmless 404s elsewhere."""
    for path, keys in (("/info", ("max_total_tokens",)), ("/props", ("default_generation_settings", "n_ctx"))):
        try:
            obj = client.get_json(client.root + path, timeout=min(client.timeout, 10))
        except RemoteError:
            continue
        for k in keys:
            obj = obj.get(k) if isinstance(obj, dict) else None
        if count_field(obj):
            return obj
    return None


def local_folder(model: str | None, served: str | None) -> Path | None:
    """The local copy whose tokenizer, templates and generation_config.json stand for the served model: MODEL when
    the user gave one (a store name or a path), else the store entry named exactly like the served model (or, when
    unambiguous, like its last path part).

    A served id is the server's word, not the user's: it is only ever looked up by name in the store, never opened
    as a path. (`transformers serve` lists a model loaded from a folder by that folder's path; a hostile server
    could list `/home/you/.ssh` or a folder holding a malicious template.)"""
    from cohere_cli.store import get_entry, list_entries, resolve_model

    if model:
        return resolve_model(model)
    if not served:
        return None
    name = served.split("@")[0]
    entry = get_entry(name)
    if entry is None:
        tail = name.rstrip("/").rsplit("/", 1)[-1].lower()
        hits = [e for e in list_entries() if e.short_name.lower() == tail]
        entry = hits[0] if len(hits) == 1 else None
    return entry.path if entry is not None else None


def context_from_config(folder: Path | None) -> int | None:
    if folder is None:
        return None
    try:
        c = read_config_json(folder)
    except CheckpointError:
        return None
    v = c.get("max_position_embeddings")
    return v if isinstance(v, int) and v > 0 else None


def pick_context(server: int | None, folder: Path | None, ctx: int | None) -> tuple[int, str]:
    known, source = server, "the server's"
    if known is None:
        known, source = context_from_config(folder), "the local config's"
    if known is None:
        return (ctx, "--ctx") if ctx else (ASSUMED_CONTEXT, "assumed: the server does not say; --ctx N")
    if ctx and ctx < known:
        return ctx, "--ctx"
    return known, source


# ---- text ----------------------------------------------------------------------------------------------------------
class TextFilter:
    """Server text -> answer text, as the local detokenizer would give it: control-token strings (the turn markers
    are `"special": false` in Cohere tokenizers, so a server may print them) are dropped, an end-of-turn marker ends
    the answer. A tail that may be the start of a marker is held back until the next chunk shows what it is."""

    def __init__(self, stop: Iterable[str] = STOP_MARKERS, drop: Iterable[str] = DROP_MARKERS):
        self.stop = tuple(dict.fromkeys(stop))
        self.markers = self.stop + tuple(m for m in dict.fromkeys(drop) if m and m not in self.stop)
        self.buf, self.stopped = "", False

    @classmethod
    def for_tokenizer(cls, tok, keep: Iterable[str] = ()) -> "TextFilter":
        """The filter for `tok`'s markers; those in `keep` pass through (a tool-call parser reads them)."""
        keep = set(keep)
        if tok is None:
            return cls([s for s in STOP_MARKERS if s not in keep], [d for d in DROP_MARKERS if d not in keep])
        stop = [tok.id_to_token(i) for i in sorted(tok.stop_ids)]
        drop = [tok.id_to_token(i) for i in sorted(tok.control_ids)]
        return cls([s for s in stop if s and s not in keep], [d for d in drop if d and d not in keep])

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buf += text
        out = []
        while True:
            hits = [(self.buf.find(m), m) for m in self.markers if m in self.buf]
            if not hits:
                break
            i, m = min(hits)
            out.append(self.buf[:i])
            self.buf = self.buf[i + len(m):]
            if m in self.stop:
                self.stopped, self.buf = True, ""
                return "".join(out)
        keep = 0
        for m in self.markers:
            for k in range(min(len(m) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(m[:k]):
                    keep = k
                    break
        cut = len(self.buf) - keep
        out.append(self.buf[:cut])
        self.buf = self.buf[cut:]
        return "".join(out)

    def flush(self) -> str:
        rest, self.buf = ("" if self.stopped else self.buf), ""
        return rest


# ---- requests with what the server turned out to accept -------------------------------------------------------------
class Api:
    """A Client plus what this server accepts, learned from its first refusals: token ids as a completion prompt
    (vLLM, llama.cpp: yes; TGI, transformers serve: text only), and fields outside the OpenAI schema."""

    def __init__(self, client: Client):
        self.client = client
        self.ids_ok: bool | None = None
        self.optional_ok = True
        self.warned: set[str] = set()

    def warn_once(self, key: str, msg: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(msg, CohereWarning, stacklevel=2)

    def open(self, kind: str, body: dict, *, prompt_ids: list[int] | None = None,
             prompt_text: str | None = None) -> tuple["Call", bool]:
        """POST a streaming chat ("chat") or raw completion ("completion"); returns (call, prompt sent as ids)."""
        path = self.client.base + ("/chat/completions" if kind == "chat" else "/completions")
        while True:
            b = dict(body)
            as_ids = kind == "completion" and prompt_ids is not None and self.ids_ok is not False
            if kind == "completion":
                b["prompt"] = list(prompt_ids) if as_ids else prompt_text
            if not self.optional_ok:
                for f in OPTIONAL_FIELDS:
                    b.pop(f, None)
            try:
                call = self.client.stream(path, b)
            except HTTPStatusError as e:
                if e.status == 404 and kind == "completion" and "model" not in e.detail.lower():
                    raise RemoteError(f"{self.client.url} has no /completions (raw text completion), which this "
                                      f"needs: grounded answers, --template and generate render the prompt here"
                                      ) from None
                if e.status not in (400, 422):
                    raise
                detail = e.detail.lower()
                named = [f for f in OPTIONAL_FIELDS if f in b and f in detail]
                if self.optional_ok and named:
                    self.optional_ok = False
                    ignored = [f for f in EXTRA_SAMPLING if f in b]
                    if ignored:
                        self.warn_once("extras", f"{self.client.url} does not take {', '.join(ignored)}: "
                                                 f"they are left out")
                    continue
                if as_ids and "context" not in detail and "maximum" not in detail:
                    self.ids_ok = False  # e.g. "prompt must be a string": send the text
                    continue
                raise
            if as_ids:
                self.ids_ok = True
            return call, as_ids


def sampling_fields(params, send: Iterable[str] | None = None) -> dict:
    """The request fields for SamplingParams: the OpenAI ones, plus top_k/min_p/repetition_penalty when they are
    not off. `send` limits them to the ones that were set (the server's own defaults apply to the rest)."""
    send = set(send) if send is not None else None
    out = {}
    for name, value, off in (("temperature", params.temperature, None), ("top_p", params.top_p, None),
                             ("seed", params.seed, None), ("top_k", params.top_k, 0), ("min_p", params.min_p, 0.0),
                             ("repetition_penalty", params.repetition_penalty, 1.0)):
        if value is None or (send is not None and name not in send):
            continue
        if off is not None and value == off:
            continue
        out[name] = value
    return out


def _choice_text(choice: dict) -> str:
    """The text of a completion choice, a chat delta or a whole chat message; "" for anything else."""
    if "text" in choice:
        text = choice.get("text")
    else:
        part = choice.get("delta") or choice.get("message")
        text = part.get("content") if isinstance(part, dict) else None
    return text if isinstance(text, str) else ""


def responses(api: Api, call: Call, *, t0: float, filt: TextFilter, prompt_tokens: int | None,
              count_tokens=None, max_tokens: int | None = None) -> Iterator[Response]:
    """The Responses of one call, as stream_generate yields them: one per chunk of text, then a closing one with
    finish_reason and the figures (token counts from the server's usage when it sends them, else counted here).
    Raises RemoteError, after the text that did arrive, when the stream breaks off. A server that sends more than
    `max_tokens` tokens of text (a chunk is at least one, and one per LONGEST_TOKEN characters) is cut off there:
    finish_reason "length". The whole answer is bounded by MAX_BODY, as a whole (non-streamed) body is."""
    usage, finish, n, size, t_first, t_last = None, None, 0, 0, None, None
    calls: dict[int, dict] = {}  # the server's tool calls (OpenAI `tool_calls` deltas), by index
    parts: list[str] | None = [] if count_tokens is not None else None  # kept only to be counted at the end
    prompt = prompt_tokens or 0

    def make(text, n, fin=None, cached=0):
        ttft = (t_first or time.perf_counter()) - t0
        dec = (n - 1) / (t_last - t_first) if n > 1 and t_first is not None and t_last > t_first else 0.0
        return Response(text, None, prompt, n, prompt / ttft if ttft > 0 else 0.0, dec, ttft, 0, fin,
                        max(prompt - cached, 0))

    try:
        for obj in call.chunks():
            if call.whole:
                api.warn_once("whole", f"{api.client.url} does not stream: each answer arrives whole (first-token "
                                       f"time = the whole answer's)")
            if isinstance(obj.get("usage"), dict):
                usage = obj["usage"]
            text = ""
            choices = obj.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                text += _choice_text(choice)
                size += tool_call_deltas(choice, calls)
                if size > MAX_BODY:
                    raise RemoteError(f"{api.client.url} sent more than {MAX_BODY >> 20} MiB of tool calls: cut off")
                reason = choice.get("finish_reason")
                if reason and isinstance(reason, str):
                    finish = FINISH.get(reason, reason[:40])
            if text and max_tokens is not None and n >= max_tokens and not call.whole:
                finish = "length"  # the server ignores max_tokens: the answer ends here, the connection closes
                break
            if text:
                size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
                if size > MAX_BODY:
                    # An error, not finish_reason "length": that says the answer reached the length the user
                    # asked for, and this bound is none the user set (32k tokens are under 1 MiB) but a server
                    # that is not answering. One line, like the same bound on a whole body; what arrived is kept
                    # (printed, or in the REPL's conversation), the connection closes.
                    raise RemoteError(f"{api.client.url} sent more than {MAX_BODY >> 20} MiB of answer text: cut "
                                      f"off there (is it an OpenAI-compatible server?)")
                call.progress()
                t_last = time.perf_counter()
                t_first = t_first or t_last
                n += max(1, -(-len(text) // LONGEST_TOKEN))
                out = filt.feed(text)
                if parts is not None:
                    parts.append(out)
                yield make(out, n)
                if filt.stopped:  # an end-of-turn marker the server printed: the answer is over
                    finish = "stop"
                    break
        if finish is None and not call.done:
            raise RemoteError(f"the connection to {api.client.url} closed mid-answer: did the server stop?")
    finally:
        call.close()
    tail = filt.flush()
    cached = 0
    if usage:
        prompt = count_field(usage.get("prompt_tokens")) or prompt
        details = usage.get("prompt_tokens_details")
        cached = count_field(details.get("cached_tokens")) or 0 if isinstance(details, dict) else 0
    count = count_field((usage or {}).get("completion_tokens")) if not filt.stopped else None
    if count is None:
        count = count_tokens("".join(parts) + tail) if parts is not None else n
    last = make(tail, count, finish or "stop", cached)
    if calls:
        last.tool_calls = [calls[i] for i in sorted(calls)]
    yield last


# ---- generate ------------------------------------------------------------------------------------------------------
def generate_stream(api: Api, prompt: str, params, max_tokens: int, *, served_model: str | None, tokenizer=None
                    ) -> tuple[list[int] | None, Iterator[Response]]:
    """`cohere generate` remotely: the raw prompt with BOS, as ids when the server takes them. Returns the prompt ids
    (None without a local tokenizer) and the Responses."""
    ids = tokenizer.encode(prompt, add_bos=True) if tokenizer is not None else None
    body = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
            **sampling_fields(params)}
    if served_model:
        body["model"] = served_model
    t0 = time.perf_counter()
    call, as_ids = api.open("completion", body, prompt_ids=ids, prompt_text=prompt)
    count = (lambda s: len(tokenizer.encode(s, add_bos=False))) if tokenizer is not None else None

    def run():
        last = None
        for r in responses(api, call, t0=t0, filt=TextFilter.for_tokenizer(tokenizer),
                           prompt_tokens=len(ids) if ids else None, count_tokens=count, max_tokens=max_tokens):
            last = r
            yield r
        if ids and not as_ids and last.prompt_tokens != len(ids):
            api.warn_once("tokenized", f"the server tokenized the prompt itself ({last.prompt_tokens} tokens, "
                                       f"{len(ids)} here): it takes no token ids and adds special tokens of its own")

    return ids, run()
