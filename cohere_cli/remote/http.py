"""HTTP to an OpenAI-compatible server, standard library only (http.client): one persistent connection, a bearer
token, timeouts, Server-Sent Events, and every failure (refused, timed out, HTTP status, a body that is not what was
asked for) as one `RemoteError` line. cohere_cli/remote/backend.py builds the chat, generate and bench requests on top.

The server is untrusted (README, "What the tool trusts"): everything it sends has a bound. A JSON body is read up to
MAX_BODY, an event line up to MAX_LINE, an event up to MAX_LINE too; JSON goes through untrusted.parse_json (depth
bombs are a ValueError); its texts in our messages are made inert and cut to one line. `--timeout` is the longest
time without *progress*: until the status line, then between two answer chunks that carry text (Call.progress). It
is enforced by a watchdog that shuts the socket down, so neither keep-alive comments (`: ping`), empty events nor
a body trickled byte by byte can hold an answer open past it."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from typing import Iterator
from urllib.parse import urlsplit

from cohere_cli import __version__
from cohere_cli.errors import CohereError, UsageError
from cohere_cli.untrusted import one_line, parse_json

API_KEY_ENV = "COHERE_CLI_API_KEY"
DEFAULT_TIMEOUT = 120.0  # seconds of silence tolerated: waiting for the status line, then between events
CONNECT_TIMEOUT = 10.0
# A whole (non-streamed) completion or a /v1/models listing, and the text of a streamed answer in all (bounded where
# the chunks are read, remote/backend.responses): real ones are KiBs; a whole answer of 32k tokens is under 1 MiB.
# Past this the server is not answering what was asked.
MAX_BODY = 32 << 20
MAX_LINE = 1 << 20  # one Server-Sent Events line, and one event: a streamed chunk is a few hundred bytes
MAX_ERROR_BODY = 8192  # what is read of an error response: its message is shown cut to one line anyway

class RemoteError(CohereError):
    """The endpoint could not be used: unreachable, refused, timed out, not OpenAI-compatible, cut mid-answer."""


class HTTPStatusError(RemoteError):
    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


def _detail(raw: bytes) -> str:
    """The message in an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, TGI's {"error"}, text."""
    text = raw.decode("utf-8", "replace")
    try:
        obj = parse_json(text)
    except ValueError:
        return one_line(text) or "(empty body)"
    if isinstance(obj, dict):
        for key in ("error", "detail", "message"):
            v = obj.get(key)
            if isinstance(v, dict):
                v = v.get("message") or json.dumps(v)
            if isinstance(v, list):
                v = json.dumps(v)
            if isinstance(v, str) and v:
                return one_line(v)
    return one_line(text)


class _Watchdog:
    """`--timeout` as the longest time without progress, whatever trickles in: a thread shuts the socket down once
    `timeout` s pass without `progress()`, so the blocked read returns. (A socket timeout alone restarts on every
    byte: a server sending `: ping` comments, empty events or one endless line byte by byte would never time out.)"""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock, self.timeout = sock, timeout
        self.last = time.monotonic()
        self.expired = False
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="cohere-remote-timeout").start()

    def progress(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(max(self.last + self.timeout - time.monotonic(), 0.0)):
            if time.monotonic() - self.last >= self.timeout:
                self.expired = True
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)  # the reader's recv returns at once
                except OSError:  # already closed
                    pass
                return


# ---- HTTP ----------------------------------------------------------------------------------------------------------
class Client:
    """One OpenAI-compatible server. Every request opens its own connection (thread-safe, nothing to keep alive)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        raw = url.strip()
        if "://" not in raw:
            raw = "http://" + raw
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise UsageError(f"--endpoint {url!r} is not an http(s) URL: give one like http://gpu-box:8000/v1")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, port or (443 if self.https else 80)
        path = parts.path.rstrip("/")
        self.root = path[:-3] if path.endswith("/v1") else path  # where /health, /info live
        self.base = self.root + "/v1"
        self.url = f"{parts.scheme}://{parts.netloc}{self.base}"
        self.api_key, self.timeout = api_key or None, timeout

    def open(self, method: str, path: str, body: dict | None = None, *, timeout: float | None = None):
        """Send a request, wait for the status line; return (connection, response, watchdog) for a 2xx, the watchdog
        started (stop it with the connection). Everything else is a RemoteError with one line: refused, unknown
        host, timeout, TLS, 401/403, 404, any other status."""
        timeout = timeout or self.timeout
        connect = min(CONNECT_TIMEOUT, timeout)
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=connect)
        try:
            conn.connect()
        except ConnectionRefusedError:
            raise RemoteError(f"cannot connect to {self.url}: connection refused (is the server running on that "
                              f"port?)") from None
        except socket.gaierror:
            raise RemoteError(f"cannot connect to {self.url}: unknown host {self.host}") from None
        except TimeoutError:
            raise RemoteError(f"cannot connect to {self.url}: no answer within {connect:g} s") from None
        except ssl.SSLError as e:
            raise RemoteError(f"TLS handshake with {self.url} failed: {e.reason or e}") from None
        except OSError as e:
            raise RemoteError(f"cannot connect to {self.url}: {e.strerror or e}") from None
        headers = {"Accept": "text/event-stream, application/json", "User-Agent": f"cohere-cli/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        dog = _Watchdog(conn.sock, timeout)
        try:
            conn.sock.settimeout(timeout)
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            dog.progress()  # the status line: the answer's own silences are timed from here
        except TimeoutError:
            dog.stop()
            conn.close()
            raise RemoteError(f"{self.url} did not answer within {timeout:g} s (--timeout SECONDS waits longer)") \
                from None
        except (http.client.HTTPException, OSError) as e:
            dog.stop()
            conn.close()
            if dog.expired:  # headers trickled in past --timeout
                raise RemoteError(f"{self.url} did not answer within {timeout:g} s (--timeout SECONDS waits "
                                  f"longer)") from None
            raise RemoteError(f"{self.url} closed the connection without answering ({type(e).__name__}): is it an "
                              f"HTTP server?") from None
        except BaseException:  # Ctrl-C while waiting
            dog.stop()
            conn.close()
            raise
        if resp.status >= 400:
            try:
                detail = _detail(resp.read(MAX_ERROR_BODY))
            except (http.client.HTTPException, OSError):
                detail = ""
            finally:
                dog.stop()
                conn.close()
            raise HTTPStatusError(self._status_message(resp.status, one_line(resp.reason or "", 60), path, detail),
                                  resp.status, detail)
        return conn, resp, dog

    def _status_message(self, status: int, reason: str, path: str, detail: str) -> str:
        rel = path[len(self.root):] or "/"
        if status in (401, 403):
            how = ("check the key given with --api-key / $" + API_KEY_ENV) if self.api_key else \
                ("pass its key with --api-key KEY or $" + API_KEY_ENV)
            return f"{self.url} refused the request ({status} {reason}): {how}"
        if status == 404 and "model" in detail.lower():
            return f"{self.url}: {detail} (--served-model NAME picks one; `cohere chat --endpoint URL` lists them)"
        if status == 404:
            return f"{self.url} has no {rel} (404): is it an OpenAI-compatible server?"
        return f"{self.url} answered {status} {reason} to {rel}: {detail}"

    def get_json(self, path: str, timeout: float | None = None):
        """The JSON a GET answers, None when it is not JSON; RemoteError past MAX_BODY or --timeout."""
        conn, resp, dog = self.open("GET", path, timeout=timeout)
        try:
            raw = resp.read(MAX_BODY + 1)
        except (http.client.HTTPException, OSError):
            raw = b""
        finally:
            dog.stop()
            conn.close()
        rel = path[len(self.root):] or "/"
        if dog.expired:
            raise RemoteError(f"{self.url} did not finish answering {rel} within {timeout or self.timeout:g} s")
        if len(raw) > MAX_BODY:
            raise RemoteError(f"{self.url} answered more than {MAX_BODY >> 20} MiB to {rel}: is it an "
                              f"OpenAI-compatible server?")
        try:
            return parse_json(raw)
        except ValueError:
            return None

    def stream(self, path: str, body: dict) -> "Call":
        conn, resp, dog = self.open("POST", path, body)
        return Call(self, conn, resp, dog)


class _TooLong(Exception):
    pass


def _sse(resp) -> Iterator[str]:
    """The `data` of each Server-Sent Event (multi-line data joined with newlines); comments and other fields
    skipped. A last event without its blank line still counts. A line or an event over MAX_LINE is _TooLong."""
    data: list[str] = []
    size = 0
    while True:
        line = resp.readline(MAX_LINE + 1)
        if not line:
            break
        if len(line) > MAX_LINE:
            raise _TooLong
        line = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if not line:
            if data:
                yield "\n".join(data)
                data, size = [], 0
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            size += len(value)
            if size > MAX_LINE:  # many data lines that never end the event
                raise _TooLong
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


class Call:
    """One streaming request whose status line has arrived. `chunks()` yields the parsed JSON chunks; a server that
    answered with one JSON completion instead (it does not stream) yields that once, with `whole` set."""

    def __init__(self, client: Client, conn, resp, dog: _Watchdog):
        self.client, self.conn, self.resp, self.dog = client, conn, resp, dog
        self.done = False  # saw [DONE]
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        self.whole = ctype != "text/event-stream"
        if self.whole and ctype != "application/json":
            self.close()
            raise RemoteError(f"{client.url} answered {ctype or 'without a content type'}, not an event stream: "
                              f"is it an OpenAI-compatible server (the URL that serves /v1/chat/completions)?")

    def progress(self) -> None:
        """The answer moved on (a chunk with text): --timeout counts again from now."""
        self.dog.progress()

    def close(self) -> None:
        self.dog.stop()
        try:
            self.conn.close()  # closes the socket: the server sees the client go away and drops the request
        except OSError:
            pass

    def chunks(self) -> Iterator[dict]:
        url, timeout = self.client.url, self.client.timeout
        try:
            if self.whole:
                raw = self.resp.read(MAX_BODY + 1)
                if self.dog.expired:
                    raise TimeoutError
                if len(raw) > MAX_BODY:
                    raise RemoteError(f"{url} answered more than {MAX_BODY >> 20} MiB in one body: is it an "
                                      f"OpenAI-compatible server?")
                try:
                    obj = parse_json(raw)
                except ValueError as e:
                    raise RemoteError(f"{url} sent a body that is neither an event stream nor JSON: it {e}") from None
                if not isinstance(obj, dict) or not obj.get("choices"):
                    raise RemoteError(f"{url} answered JSON without choices: is it an OpenAI-compatible server?")
                self.done = True
                yield obj
                return
            for data in _sse(self.resp):
                if data.strip() == "[DONE]":
                    self.done = True
                    return
                try:
                    obj = parse_json(data)
                except ValueError:
                    raise RemoteError(f"{url} sent an event that is not JSON: {one_line(data, 80)!r}") from None
                if not isinstance(obj, dict):
                    continue
                if obj.get("error") and not obj.get("choices"):
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise RemoteError(f"the server failed mid-answer: {one_line(str(msg))}")
                yield obj
            if self.dog.expired:  # the watchdog shut the socket: what looks like the end is the timeout
                raise TimeoutError
        except _TooLong:
            raise RemoteError(f"{url} sent an event line over {MAX_LINE >> 20} MiB: is it an OpenAI-compatible "
                              f"server?") from None
        except TimeoutError:
            raise RemoteError(f"{url} sent no answer for {timeout:g} s mid-answer (--timeout SECONDS waits longer)") \
                from None
        except (http.client.HTTPException, OSError) as e:
            if self.dog.expired:
                raise RemoteError(f"{url} sent no answer for {timeout:g} s mid-answer (--timeout SECONDS waits "
                                  f"longer)") from None
            raise RemoteError(f"the connection to {url} broke mid-answer ({type(e).__name__}): did the server "
                              f"stop?") from None
        finally:
            self.close()
