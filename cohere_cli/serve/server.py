"""uvicorn's configuration for `cohere serve` (the command and the tests use this one): time bounds on connections
and an OpenAI-shaped refusal past the connection cap.

uvicorn's own bounds leave a gap: its keep-alive timeout runs only after a response, so a connection that never
sends a byte (or sends its headers a byte at a time) is held forever, and its limit_concurrency counts such idle
sockets, so ~100 of them locked everyone out with a plain-text 503. Here a connection must complete its request
headers within `header_timeout` seconds of opening (or of its previous response), else it is closed; the body's own
bound is the app's (create_app's `body_timeout`: 408). Connections past `max_connections` get a JSON 503 and are
closed; the real limit on work is the engine's queue bound (503 `server_busy`)."""

from __future__ import annotations

import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cohere_cli.serve.schema import ApiError


def _refusal() -> bytes:
    body = json.dumps(ApiError(503, "too many connections: try again", code="server_busy").body()).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def protocol(header_timeout: float, max_connections: int) -> type:
    class BoundedH11(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_refusal())
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no request (or only part of its headers) within the bound

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are in: the body has the app's bound

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedH11


def config(app, *, host: str, port: int = 0, header_timeout: float = 10.0, keep_alive: float = 5.0,
           max_connections: int = 1024, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, lifespan="off", log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=5, timeout_keep_alive=keep_alive,
                          http=protocol(header_timeout, max_connections))
