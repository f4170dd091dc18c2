"""Servers for the `--endpoint` tests, on 127.0.0.1 and a free port, with bounded waits everywhere.

* `TransformersServe`: a real OpenAI-compatible server, `transformers serve` (pip install "transformers[serving]"),
  pinned to a checkpoint the tests build, on CPU. Its /v1/models lists that model by its folder's path (transformers
  >= 5.25; earlier ones list none), which the client must never take for a local copy.
* `StubServer`: a few lines of http.server for what a healthy server never does: 401 without the key, answer JSON to
  a streaming request, stay silent, send HTML, cut a stream in the middle of a chunk; and "hold": stream a little,
  then hold the connection until the test calls `release()` (an answer that cannot end before the test's Ctrl-C).
* Hostile on demand (the threat model: an endpoint is untrusted), with `StubServer(behaviour, **options)`:
  "endless_json" (a JSON answer that never ends), "endless_line" (an event line that never ends), "pings"
  (keep-alive comments forever, no answer), "empty_events" (events without text forever), "endless_tokens" (text forever, whatever max_tokens says), "endless_big" (the same in chunks
  of 1,000,000 characters), "usage"
  (a normal stream whose last chunk carries `options["usage"]`), "chunks" (the events in `options["events"]`, raw),
  "raw" (`options["body"]` with `options["status"]` and `options["ctype"]`); `options["models"]`: the raw body of
  GET /v1/models, bytes or "endless". Endless writers stop when the client hangs up or on release().
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ENDLESS = b"x" * 65536  # what endless bodies repeat
HOLD_LIMIT = 600  # seconds a held or silent stub response waits for release() (the test failed long before)
START_TIMEOUT = 240  # the machine may be busy: loading torch + transformers + the model takes 5-60 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServe:
    def __init__(self, model_dir: Path, workdir: Path):
        self.model_dir, self.workdir = Path(model_dir), Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = self.workdir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = START_TIMEOUT) -> "TransformersServe":
        hf_home = self.workdir / "hf-home"
        (hf_home / "hub").mkdir(parents=True, exist_ok=True)  # /v1/models scans it (a missing one is a 500)
        env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1",
                   HF_HUB_DISABLE_UPDATE_CHECK="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # a shared 2-core machine: one thread is plenty
        cmd = [sys.executable, "-c", "from transformers.cli.transformers import app; app()", "serve",
               str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
               "--dtype", "float32", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"transformers serve did not answer /health within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye on the open streams."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# ---- the stub ------------------------------------------------------------------------------------------------------
def _chunk(text: str, finish: str | None = None) -> bytes:
    obj = {"id": "x", "object": "text_completion", "model": "stub",
           "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return f"data: {json.dumps(obj)}\n\n".encode()


BIG = _chunk("y" * 1_000_000)  # one event just under the 1 MiB line bound


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _tools(self, body: dict, opts: dict) -> None:
        if self.path.endswith("/chat/completions"):
            if "tools" in body and opts.get("refuse_tools"):
                return self._send(400, b'{"error": {"message": "this server does not support tools", '
                                       b'"type": "invalid_request_error"}}')
            events = _tools_events(body, opts)
        elif not isinstance(body.get("prompt"), str):  # as TGI: text prompts only
            return self._send(400, b'{"error": {"message": "prompt must be a string"}}')
        else:
            events = _completion_events(body, opts)
        data = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events) + b"data: [DONE]\n\n"
        self._send(200, data, "text/event-stream")

    def _endless(self, head: bytes, ctype: str, piece: bytes = ENDLESS, pace: bool = False) -> None:
        """A chunked body that starts with `head` and repeats `piece` until the client hangs up (or release())."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            data = head
            while not self.server.released.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                data = piece
                if pace:  # keep-alives: paced like a server's timer, not a flood (the client's clock decides)
                    self.server.released.wait(0.05)
        except OSError:  # the client went away: what the test waits for
            pass
        self.close_connection = True

    def do_GET(self):
        models = self.server.options.get("models")
        if self.path.endswith("/models") and models == "endless":
            return self._endless(b'{"object": "list", "data": [', "application/json", b'{"id": "m"}, ' * 4096)
        if self.path.endswith("/models") and models is not None:
            return self._send(200, models)
        if self.path.endswith("/models"):
            return self._send(200, json.dumps({"object": "list", "data": [
                {"id": "stub-model", "object": "model", "max_model_len": 4096}]}).encode())
        self._send(404, b'{"detail": "Not Found"}')

    def do_POST(self):
        behaviour = self.server.behaviour
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if behaviour == "auth" and self.headers.get("Authorization") != "Bearer sesame":
            return self._send(401, b'{"error": {"message": "Invalid API key", "type": "invalid_request_error"}}')
        if behaviour == "silent":  # until the test is over: longer than the client's --timeout
            self.server.released.wait(HOLD_LIMIT)
            return
        if behaviour == "html":
            return self._send(200, b"<html><body>It works!</body></html>", "text/html")
        opts = self.server.options
        if behaviour == "raw":
            return self._send(opts.get("status", 200), opts["body"], opts.get("ctype", "application/json"))
        if behaviour == "endless_json":  # a "3 GiB" whole answer, and more
            return self._endless(b'{"choices": [{"index": 0, "text": "', "application/json")
        if behaviour == "endless_line":
            return self._endless(b"data: ", "text/event-stream")
        if behaviour == "pings":
            return self._endless(b": connected\n\n", "text/event-stream", b": ping\n\n", pace=True)
        if behaviour == "empty_events":  # events forever, none with text
            return self._endless(b"data: {}\n\n", "text/event-stream", b'data: {"choices": []}\n\n', pace=True)
        if behaviour == "endless_tokens":
            return self._endless(_chunk(" tok"), "text/event-stream", _chunk(" tok"))
        if behaviour == "endless_big":
            return self._endless(BIG, "text/event-stream", BIG)
        if behaviour == "chunks":
            return self._send(200, b"".join(e if isinstance(e, bytes) else b"data: %s\n\n" % json.dumps(e).encode()
                                            for e in opts["events"]), "text/event-stream")
        if behaviour == "tools":
            return self._tools(body, opts)
        if behaviour == "whole":
            return self._send(200, json.dumps({
                "id": "x", "object": "text_completion", "model": "stub",
                "choices": [{"index": 0, "text": "a whole answer", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}).encode())
        # "auth" with the right key, "stream" and "cut": an event stream, chunked
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, part in enumerate(["Once", " upon", " a", " time"]):
            if behaviour == "cut" and i == 2:
                self.wfile.write(b"40\r\ndata: {\"choi")  # half a chunk, then the connection drops
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if behaviour == "hold" and i == 2:  # "Once upon" is out: hold the stream until the test says
                self.server.holding.set()
                self.server.released.wait(HOLD_LIMIT)
                if self.server.killed:  # no goodbye: the connection just breaks
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
            data = _chunk(part)
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            except OSError:  # the client hung up (its Ctrl-C)
                self.close_connection = True
                return
            time.sleep(0.02)  # paced like a real stream: the chunks arrive apart
        data = _chunk("", "length") + b"data: [DONE]\n\n"
        if behaviour == "usage":  # whatever the test gives as usage, in a chunk of its own
            data = _chunk("", "length") + b"data: %s\n\n" % json.dumps(
                {"choices": [], "usage": self.server.options["usage"]}).encode() + b"data: [DONE]\n\n"
        try:
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError:
            self.close_connection = True


def _tools_events(body: dict, opts: dict) -> list:
    """`tools` behaviour, /chat/completions: a server that parses tool calls (vLLM): asked with tools after a user
    message, it calls opts["call"] (name, arguments), its arguments split over two chunks as vLLM streams them;
    after the tool results, it answers opts["answer"]."""
    name, arguments = opts.get("call", ("weather", {"city": "Paris"}))
    args = json.dumps(arguments)
    if "tools" in body and body["messages"][-1]["role"] == "user":
        head = {"index": 0, "id": "call_stub_1", "type": "function", "function": {"name": name, "arguments": ""}}
        deltas = [[head], [{"index": 0, "function": {"arguments": args[:5]}}],
                  [{"index": 0, "function": {"arguments": args[5:]}}]]
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": d}, "finish_reason": None}]}
                  for d in deltas]
        return events + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    words = opts.get("answer", "It is sunny in Paris.").split(" ")
    return [{"choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}]}
            for i, w in enumerate(words)] + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]


def _completion_events(body: dict, opts: dict) -> list:
    """`tools` behaviour, /completions: the text of the first of opts["rules"] ([[TEXT, ANSWER], ...]) whose TEXT is
    in the prompt from its last user message on (a prompt rendered by the client, parsed by the client)."""
    tail = body["prompt"].rsplit("<|USER_TOKEN|>", 1)[-1]
    say = next((a for t, a in opts.get("rules", []) if t in tail), "no rule for this prompt")
    pieces = [say[i:i + 7] for i in range(0, len(say), 7)]
    return [{"choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in pieces] + [
        {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}]


class StubServer:
    def __init__(self, behaviour: str = "stream", **options):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.behaviour = behaviour
        self.httpd.options = options
        self.httpd.requests = []
        self.httpd.killed = False
        self.httpd.holding = threading.Event()  # "hold": the first words are sent and the stream waits
        self.httpd.released = threading.Event()  # set by release() and on exit: held and silent responses end
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def requests(self) -> list[dict]:
        return self.httpd.requests

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    @property
    def holding(self) -> threading.Event:
        return self.httpd.holding

    def release(self) -> None:
        self.httpd.released.set()

    def kill(self) -> None:
        """As if the server died: held streams break off mid-answer and nothing listens on the port any more."""
        self.httpd.killed = True
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __exit__(self, *exc) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
