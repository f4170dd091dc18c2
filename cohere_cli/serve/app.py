"""The ASGI app (Starlette): `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`,
streamed as Server-Sent Events or whole, errors in OpenAI's shape with their status (400 bad JSON or fields, 401,
404 unknown model or route, 413 too large, 503 busy or shutting down).

Starlette rather than FastAPI's automatic validation: the body is read here with a byte bound (413 before anything
is parsed) and validated by schema.py into OpenAI's error shape. A request's life: auth, bounded body, validation,
rendering (off the event loop: a template may take seconds), `Worker.submit` (the engine's queue bound: 503), then
its Responses from an asyncio.Queue. A client that goes away (a closed stream, a dropped non-streamed request)
cancels its sequence at once: the slot is free for the next step."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from cohere_cli.errors import ContextOverflow
from cohere_cli.errors import EngineBusy
from cohere_cli.serve.render import Job, Served, chat_job, completion_job
from cohere_cli.serve.schema import MAX_BODY, ApiError, ChatRequest, CompletionRequest, parse
from cohere_cli.serve.worker import Failed, Worker
from cohere_cli.untrusted import one_line, parse_json

log = logging.getLogger("cohere_cli.serve")


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class SeqStream(StreamingResponse):
    """A streamed answer whose sequence is cancelled however the response ends (done, client gone, shutdown)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(served: Served, worker: Worker, *, api_key: str | None = None, body_timeout: float = 30.0,
               max_renders: int = 4, render_queue: int = 64) -> Starlette:
    """`body_timeout`: seconds a request body may take to arrive (408 past it); `max_renders`: prompts rendered and
    tokenized at once (each a thread and up to seconds of CPU); `render_queue` more wait their turn, past that 503.
    Eight clients at once are ordinary: they wait, they are not refused."""
    created = int(time.time())
    renders = asyncio.Semaphore(max_renders)
    preparing = {"n": 0}  # requests rendering or waiting to (event loop only: no lock)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send Authorization: Bearer KEY", code="invalid_api_key")

    async def body(request: Request, cls):
        check_auth(request)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY >> 20} MiB")
        chunks = []

        async def read():
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise ApiError(413, f"the request body is over {MAX_BODY >> 20} MiB")
                chunks.append(chunk)
        try:
            await asyncio.wait_for(read(), body_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {body_timeout:g} s",
                           code="request_timeout") from None
        except ClientDisconnect:  # an upload given up: nobody to answer
            raise ApiError(400, "the client went away") from None
        try:
            obj = parse_json(b"".join(chunks))
        except ValueError as e:
            raise ApiError(400, f"the request body {e}") from None
        req = parse(cls, obj)
        if req.model is not None and req.model != served.name:
            raise ApiError(404, f"the model {one_line(req.model, 100)!r} does not exist: this server serves "
                                f"{served.name!r}", code="model_not_found", param="model")
        return req

    def submit(job: Job):
        try:
            return worker.submit(job.ids, job.params, job.max_tokens, job.stop_ids)
        except EngineBusy as e:
            raise ApiError(503, f"{e} (at most {getattr(worker.engine, 'max_queue', '?')} requests wait)",
                           code="server_busy") from None
        except ContextOverflow as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None

    async def answer(job: Job, seq: int, queue: asyncio.Queue):
        """(kind, value) events of the answer, then ("finish", (reason, last Response))."""
        last = None
        while True:
            item = await queue.get()
            if isinstance(item, Failed):
                raise ApiError(503, item.message)
            last = item
            for event in job.output.feed(item):
                yield event
            if job.output.stopped:  # a stop string: the rest is not wanted
                worker.cancel(seq)
                reason = "stop"
                break
            if item.finish_reason is not None:
                reason = item.finish_reason
                break
        for event in job.output.finish():
            yield event
        if getattr(job.output, "tool_calls", None):
            reason = "tool_calls"
        yield "finish", (reason, last)

    def usage(job: Job, last) -> dict:
        n = last.generation_tokens if last is not None else 0
        cached = max(len(job.ids) - last.prefilled_tokens, 0) if last is not None and last.prefilled_tokens else 0
        return {"prompt_tokens": len(job.ids), "completion_tokens": n, "total_tokens": len(job.ids) + n,
                "prompt_tokens_details": {"cached_tokens": cached}}

    async def handle(request: Request, chat: bool):
        req = await body(request, ChatRequest if chat else CompletionRequest)
        if preparing["n"] >= max_renders + render_queue:
            raise ApiError(503, f"{preparing['n']} prompts are being prepared: try again", code="server_busy")
        preparing["n"] += 1
        try:
            async with renders:
                job = await run_in_threadpool(chat_job if chat else completion_job, served, req)
        finally:
            preparing["n"] -= 1
        seq, queue = submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": served.name}
        if req.stream:
            return SeqStream(_sse(answer(job, seq, queue), head, chat, req.include_usage, lambda last: usage(job, last)),
                             on_close=lambda: worker.cancel(seq))
        task = asyncio.ensure_future(_collect(answer(job, seq, queue), chat))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                log.info("request %s: the client went away", rid)
                return error_response(ApiError(400, "the client went away"))
            (reason, last), message = task.result()
        finally:
            gone.cancel()
            worker.cancel(seq)
        head["object"] = "chat.completion" if chat else "text_completion"
        choice = {"index": 0, "finish_reason": reason, **({"message": message} if chat else
                                                          {"text": message["content"] or "", "logprobs": None})}
        return JSONResponse({**head, "choices": [choice], "usage": usage(job, last)})

    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    async def completions(request: Request):
        return await handle(request, chat=False)

    async def models(request: Request):
        check_auth(request)
        return JSONResponse({"object": "list", "data": [
            {"id": served.name, "object": "model", "created": created, "owned_by": "cohere-cli",
             "max_model_len": served.context}]})

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": served.name, "active": worker.active()})

    async def api_error(request: Request, e: ApiError):
        return error_response(e)

    async def http_error(request: Request, e: HTTPException):
        return error_response(ApiError(e.status_code, "no such route" if e.status_code == 404 else
                                       f"{request.method} is not allowed here" if e.status_code == 405 else
                                       str(e.detail)))

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ], exception_handlers={ApiError: api_error, HTTPException: http_error})
    app.state.preparing = preparing
    return app


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(events, chat: bool):
    content, thinking, calls = [], [], []
    async for kind, value in events:
        if kind == "content":
            content.append(value)
        elif kind == "reasoning_content":
            thinking.append(value)
        elif kind == "tool_call":
            calls.append(value)
        elif kind == "finish":
            finish = value
    message = {"role": "assistant", "content": "".join(content) or (None if calls else "")}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return finish, message


def _data(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _sse(events, head: dict, chat: bool, include_usage: bool, usage):
    def chunk(delta: dict | str, reason=None) -> bytes:
        choice = {"index": 0, "finish_reason": reason, **({"delta": delta} if chat else
                                                          {"text": delta, "logprobs": None})}
        return _data({**head, "choices": [choice], **({"usage": None} if include_usage else {})})

    calls = 0
    try:
        if chat:
            yield chunk({"role": "assistant", "content": ""})
        async for kind, value in events:
            if kind == "finish":
                reason, last = value
                yield chunk({} if chat else "", reason)
                if include_usage:
                    yield _data({**head, "choices": [], "usage": usage(last)})
            elif not chat:
                yield chunk(value)
            elif kind == "tool_call":
                yield chunk({"tool_calls": [{"index": calls, **value}]})
                calls += 1
            else:
                yield chunk({kind: value})
        yield b"data: [DONE]\n\n"
    except ApiError as e:  # the engine broke or the server is stopping: an error event, then the end
        yield _data(e.body())
