"""The chat backend over an OpenAI-compatible server: `RemoteChat` has `LocalChat`'s interface (chat/session.py), so
the REPL and `chat --prompt` drive it unchanged. The HTTP side is cohere_cli.remote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator

from cohere_cli.chat.conversation import Conversation
from cohere_cli.chat.session import AnswerRecorder, ChatBackend, ChatSettings, TurnStats, fit_context, think_kwargs
from cohere_cli.engine.response import Response
from cohere_cli.errors import TemplateError
from cohere_cli.remote.backend import ASSUMED_CONTEXT, Api, TextFilter, responses, sampling_fields
from cohere_cli.remote.http import HTTPStatusError, RemoteError


# ---- chat ----------------------------------------------------------------------------------------------------------
NO_TOKENIZER = ("{what} renders the prompt here with the model's own template, and no local tokenizer is known for "
                "the served model: give MODEL (a checkpoint folder or store name with its tokenizer), or `cohere "
                "download REPO --include 'tokenizer*' --include '*.json'`")


class RemoteChat(ChatBackend):
    """LocalChat's interface over an OpenAI-compatible server. `fit` opens the request (so that the failures that
    come before any answer, refused, 401, unknown model, surface where the REPL drops the unanswered message);
    `stream` reads it."""

    def __init__(self, api: Api, settings: ChatSettings, *, served_model: str | None, tokenizer=None,
                 folder: Path | None = None, context: int = ASSUMED_CONTEXT, context_source: str = "",
                 send: Iterable[str] | None = None):
        self.api, self.settings = api, settings
        self.served_model, self.tokenizer, self.folder = served_model, tokenizer, folder
        self.context, self.context_source = context, context_source
        self.send = set(send) if send is not None else None  # sampling fields to send (None: all)
        self.history: list[TurnStats] = []
        self._pending = None
        # tools: sent in the chat request while the server takes them (it parses the calls: vLLM); after a refusal
        # (4xx) the prompt is rendered here and the calls parsed here (chat/toolloop.py), as documents are
        self.tools_refused = False
        self.keep_markers: tuple[str, ...] = ()  # markers the answer's text keeps (a tool-call parser reads them)

    @property
    def name(self) -> str:
        who = self.served_model or (self.folder.name if self.folder else "served model")
        return f"{who} @ {self.api.client.url}"

    # ---- rendering (local, when a tokenizer is known) ---------------------------------------------------------------
    def _raw(self, conv: Conversation) -> bool:
        """Render here and send a raw completion: documents, or a template other than the server's default."""
        return bool(conv.documents) or self.settings.template not in (None, "default") or (
            self.settings.tools is not None and self.tools_refused)

    def parses_tools(self, conv: Conversation) -> bool:
        """Whether the server gets `tools` and parses the calls itself (else they are parsed from the text here)."""
        return self.settings.tools is not None and not self._raw(conv)

    def render_text(self, conv: Conversation, generation_prompt: bool = True) -> str:
        if self.tokenizer is None:
            raise TemplateError(NO_TOKENIZER.format(what="this"))
        return super().render_text(conv, generation_prompt)

    def check_grounding(self) -> None:
        if self.tokenizer is None:
            raise TemplateError(NO_TOKENIZER.format(what="a grounded answer (--doc)"))
        super().check_grounding()

    def fit(self, conv: Conversation) -> tuple[list[int], int]:
        dropped = 0
        if self.tokenizer is None:
            if self._raw(conv):
                raise TemplateError(NO_TOKENIZER.format(what="--template" if not conv.documents else
                                                        "a grounded answer (--doc)"))
            ids = []  # counts come from the server's usage
        else:
            text, ids, dropped = fit_context(conv, self.settings, self.context, self._encode)
        self._open(conv, ids, text if ids else None)
        return ids, dropped

    def _open(self, conv: Conversation, ids: list[int], text: str | None = None) -> None:
        self._close_pending()
        raw = self._raw(conv)
        max_tokens = self.settings.max_tokens
        if ids:
            max_tokens = max(1, min(max_tokens, self.context - len(ids)))
        body = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
                **sampling_fields(self.settings.params, self.send)}
        if self.served_model:
            body["model"] = self.served_model
        if raw:
            text = text if text is not None else self.render_text(conv)
            bos = self.tokenizer.bos_token
            if bos and text.startswith(bos):
                text = text[len(bos):]  # a server that tokenizes text adds BOS itself
        else:
            body["messages"] = conv.messages()
            if self.tokenizer is not None and (kw := think_kwargs(self.tokenizer, self.settings.template,
                                                                  self.settings.think)):
                body["chat_template_kwargs"] = kw  # --think/--no-think: the switch of the template it renders
            if self.settings.tools is not None:
                body["tools"] = self.settings.tools
                body["messages"] = [{k: v for k, v in m.items() if k != "tool_plan"} for m in body["messages"]]
        t0 = time.perf_counter()
        try:
            call, as_ids = self.api.open("completion" if raw else "chat", body, prompt_ids=ids if raw else None,
                                         prompt_text=text)
        except KeyboardInterrupt:
            raise RemoteError("cancelled before the server answered") from None
        except HTTPStatusError as e:
            if "tools" not in body or not 400 <= e.status < 500 or e.status in (401, 403, 404, 429):
                raise
            if self.tokenizer is None:
                raise RemoteError(f"{self.api.client.url} refused the tools ({e}); parsing them here needs the "
                                  f"model's template: give MODEL (a local copy with its tokenizer)") from None
            self.tools_refused = True
            self.api.warn_once("tools", f"{self.api.client.url} does not take tools ({e}): the prompt is "
                                        f"rendered here and the tool calls parsed here")
            return self._open(conv, ids)
        self._pending = (call, t0, ids, raw and not as_ids, max_tokens)

    def _close_pending(self) -> None:
        if self._pending is not None:
            self._pending[0].close()
            self._pending = None

    # ---- one turn ---------------------------------------------------------------------------------------------------
    def stream_strict(self, conv: Conversation, ids: list[int]) -> Iterator[Response]:
        """One answer; RemoteError (after what arrived) when the stream breaks. The answer is in `history` however
        it ends (AnswerRecorder), as LocalChat's are."""
        if self._pending is None:
            self._open(conv, ids)
        call, t0, ids, sent_text, max_tokens = self._pending
        self._pending = None
        count = (lambda s: len(self.tokenizer.encode(s, add_bos=False))) if self.tokenizer else None
        answer = AnswerRecorder(conv, len(ids))
        try:
            for r in responses(self.api, call, t0=t0, filt=TextFilter.for_tokenizer(self.tokenizer, self.keep_markers),
                               prompt_tokens=len(ids) or None, count_tokens=count, max_tokens=max_tokens):
                answer.seen(r)
                yield r
        except (KeyboardInterrupt, GeneratorExit, RemoteError):  # what arrived stays in the conversation
            self.history.append(answer.stats(interrupted=True))
            raise
        self.history.append(answer.stats(interrupted=False))
        last = answer.last
        if last is not None and sent_text and ids and last.prompt_tokens != len(ids):
            self.api.warn_once("tokenized", f"the server tokenized the prompt itself ({last.prompt_tokens} tokens, "
                                            f"{len(ids)} rendered here): it takes no token ids and adds special "
                                            f"tokens of its own, so answers may differ from local ones")

    def stream(self, conv: Conversation, ids: list[int]) -> Iterator[Response]:
        """The REPL's stream: a broken stream ends the answer with a closing Response that carries the error (one
        line for the REPL to show) instead of raising (one-shot callers use stream_strict)."""
        last = None
        try:
            for r in self.stream_strict(conv, ids):
                last = r
                yield r
        except RemoteError as e:
            yield Response(text="", token=None, prompt_tokens=last.prompt_tokens if last else 0,
                           generation_tokens=last.generation_tokens if last else 0, prefill_tokens_per_s=0.0,
                           decode_tokens_per_s=0.0, ttft_s=last.ttft_s if last else 0.0, peak_memory_bytes=0,
                           finish_reason="error", prefilled_tokens=last.prefilled_tokens if last else 0,
                           error=f"{e} (what arrived is kept: /regen asks again)")

    def describe(self) -> dict:
        return {
            "model": self.served_model or "(the server's only model)",
            "endpoint": self.api.client.url,
            "tokenizer": str(self.folder) if self.tokenizer is not None else
            "none here: plain chat only, token counts from the server",
            "context": f"{self.context} tokens ({self.context_source})",
            "template": (self.settings.template or "default") + (
                " (rendered here, sent as raw completions)" if self.settings.template not in (None, "default")
                else " (the server's; documents: rendered here, sent as raw completions)"),
        }

    def reset(self) -> None:
        self._close_pending()  # the server's prefix cache, if any, is its own business

    def with_params(self, **changes) -> None:
        super().with_params(**changes)
        if self.send is not None:
            self.send |= set(changes)
