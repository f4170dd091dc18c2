"""HTTP to an OpenAI-compatible server, standard library only (http.client): one persistent connection, a bearer
token, timeouts for the connection and for each silence, Server-Sent Events, and every failure (refused, timed
out, HTTP status, a body that is not what was asked for) as one `RemoteError` line. cohere_cli/remote/backend.py builds the
chat, generate and bench requests on top."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
from typing import Iterator
from urllib.parse import urlsplit

from cohere_cli import __version__
from cohere_cli.errors import CohereError, UsageError

API_KEY_ENV = "COHERE_CLI_API_KEY"
DEFAULT_TIMEOUT = 120.0  # seconds of silence tolerated: waiting for the status line, then between events
CONNECT_TIMEOUT = 10.0

class RemoteError(CohereError):
    """The endpoint could not be used: unreachable, refused, timed out, not OpenAI-compatible, cut mid-answer."""


class HTTPStatusError(RemoteError):
    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(raw: bytes) -> str:
    """The message in an error body: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, TGI's {"error"}, text."""
    text = raw.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        return _one_line(text) or "(empty body)"
    if isinstance(obj, dict):
        for key in ("error", "detail", "message"):
            v = obj.get(key)
            if isinstance(v, dict):
                v = v.get("message") or json.dumps(v)
            if isinstance(v, list):
                v = json.dumps(v)
            if isinstance(v, str) and v:
                return _one_line(v)
    return _one_line(text)


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
        """Send a request, wait for the status line; return (connection, response) for a 2xx. Everything else is a
        RemoteError with one line: refused, unknown host, timeout, TLS, 401/403, 404, any other status."""
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
        try:
            conn.sock.settimeout(timeout)
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
        except TimeoutError:
            conn.close()
            raise RemoteError(f"{self.url} did not answer within {timeout:g} s (--timeout SECONDS waits longer)") \
                from None
        except (http.client.HTTPException, OSError) as e:
            conn.close()
            raise RemoteError(f"{self.url} closed the connection without answering ({type(e).__name__}): is it an "
                              f"HTTP server?") from None
        except BaseException:  # Ctrl-C while waiting
            conn.close()
            raise
        if resp.status >= 400:
            try:
                detail = _detail(resp.read(8192))
            except (http.client.HTTPException, OSError):
                detail = ""
            finally:
                conn.close()
            raise HTTPStatusError(self._status_message(resp.status, resp.reason, path, detail), resp.status, detail)
        return conn, resp

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
        conn, resp = self.open("GET", path, timeout=timeout)
        try:
            return json.loads(resp.read(1 << 22))
        except (ValueError, http.client.HTTPException, OSError):
            return None
        finally:
            conn.close()

    def stream(self, path: str, body: dict) -> "Call":
        conn, resp = self.open("POST", path, body)
        return Call(self, conn, resp)


def _sse(resp) -> Iterator[str]:
    """The `data` of each Server-Sent Event (multi-line data joined with newlines); comments and other fields
    skipped. A last event without its blank line still counts."""
    data: list[str] = []
    while True:
        line = resp.readline(1 << 22)
        if not line:
            break
        line = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


class Call:
    """One streaming request whose status line has arrived. `chunks()` yields the parsed JSON chunks; a server that
    answered with one JSON completion instead (it does not stream) yields that once, with `whole` set."""

    def __init__(self, client: Client, conn, resp):
        self.client, self.conn, self.resp = client, conn, resp
        self.done = False  # saw [DONE]
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        self.whole = ctype != "text/event-stream"
        if self.whole and ctype != "application/json":
            self.close()
            raise RemoteError(f"{client.url} answered {ctype or 'without a content type'}, not an event stream: "
                              f"is it an OpenAI-compatible server (the URL that serves /v1/chat/completions)?")

    def close(self) -> None:
        try:
            self.conn.close()  # closes the socket: the server sees the client go away and drops the request
        except OSError:
            pass

    def chunks(self) -> Iterator[dict]:
        url, timeout = self.client.url, self.client.timeout
        try:
            if self.whole:
                try:
                    obj = json.loads(self.resp.read())
                except ValueError:
                    raise RemoteError(f"{url} sent a body that is neither an event stream nor JSON") from None
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
                    obj = json.loads(data)
                except ValueError:
                    raise RemoteError(f"{url} sent an event that is not JSON: {_one_line(data, 80)!r}") from None
                if not isinstance(obj, dict):
                    continue
                if obj.get("error") and not obj.get("choices"):
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise RemoteError(f"the server failed mid-answer: {_one_line(str(msg))}")
                yield obj
        except TimeoutError:
            raise RemoteError(f"{url} sent nothing for {timeout:g} s mid-answer (--timeout SECONDS waits longer)") \
                from None
        except (http.client.HTTPException, OSError) as e:
            raise RemoteError(f"the connection to {url} broke mid-answer ({type(e).__name__}): did the server "
                              f"stop?") from None
        finally:
            self.close()
