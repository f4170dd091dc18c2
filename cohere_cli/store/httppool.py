"""HTTP for downloads: persistent connections per thread and origin (http.client), proxies from the environment,
redirects followed with Authorization dropped when one leaves the origin (signed CDN URLs reject it), and
shutdown_all() to unblock every worker at once on abort. `fetch_bytes` is one small request (config.json, the
access probe)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from urllib.parse import unquote, urljoin, urlsplit


class Fatal(Exception):
    """A failure no retry can fix: stop the whole download with this message."""


class HttpPool:
    """http.client with persistent connections per thread and origin, proxies from the environment, redirects
    followed (Authorization dropped when a redirect leaves the origin), and shutdown_all() to unblock every worker
    at once on abort."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._local = threading.local()
        self._live: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def _pool(self) -> dict:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def _new(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
        if scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        proxy = urllib.request.getproxies().get(scheme)
        if proxy and not urllib.request.proxy_bypass(host):
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            auth = {}
            if p.username:
                cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
                auth = {"Proxy-Authorization": "Basic " + base64.b64encode(cred).decode()}
            pcls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
            kw = {"context": self._ssl or ssl.create_default_context()} if p.scheme == "https" else {}
            conn = pcls(p.hostname, p.port or (443 if p.scheme == "https" else 80), timeout=self.timeout, **kw)
            if scheme == "https":
                conn.set_tunnel(host, port, headers=auth)
                return conn, False
            conn._proxy_auth = auth  # type: ignore[attr-defined]
            return conn, True  # plain http through a proxy: absolute-URL requests
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl), False
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout), False
        raise Fatal(f"cannot download from a {scheme}:// URL")

    def drop(self, origin: tuple) -> None:
        entry = self._pool().pop(origin, None)
        if entry is not None:
            with self._lock:
                self._live.discard(entry[0])
            entry[0].close()

    def close_thread(self) -> None:
        for origin in list(self._pool()):
            self.drop(origin)

    def shutdown_all(self) -> None:
        with self._lock:
            conns = list(self._live)
        for c in conns:
            sock = getattr(c, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def get(self, url: str, headers: Mapping[str, str], *, method: str = "GET",
            cross_origin: bool = True) -> tuple[http.client.HTTPResponse, tuple]:
        """GET (or HEAD), following up to 10 redirects (only same-origin ones unless `cross_origin`). Returns
        (response, origin); the caller reads the body, then either leaves the connection for reuse (body fully
        read) or calls drop(origin)."""
        headers = dict(headers)
        for _ in range(10):
            sp = urlsplit(url)
            origin = origin_of(sp)
            resp = self._request(origin, url, sp, headers, method)
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                new = urljoin(url, location)
                same = origin_of(urlsplit(new)) == origin
                if not same and not cross_origin:
                    return resp, origin
                resp.read()
                if resp.will_close:
                    self.drop(origin)
                if not same:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                url = new
                continue
            return resp, origin
        raise Fatal(f"too many redirects fetching {url}")

    def _request(self, origin: tuple, url: str, sp, headers: dict, method: str) -> http.client.HTTPResponse:
        pool = self._pool()
        for fresh in (False, True):
            entry = pool.get(origin)
            reused = entry is not None and not fresh
            if not reused:
                if entry is not None:
                    self.drop(origin)
                conn, absolute = self._new(*origin)
                entry = pool[origin] = (conn, absolute)
                with self._lock:
                    self._live.add(conn)
            conn, absolute = entry
            target = url if absolute else (sp.path or "/") + (f"?{sp.query}" if sp.query else "")
            h = {**headers, **getattr(conn, "_proxy_auth", {})} if absolute else headers
            try:
                conn.request(method, target, headers=h)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.drop(origin)
                if not reused:
                    raise
                # a kept-alive connection the server had closed: retry once on a fresh one
            except BaseException:
                self.drop(origin)
                raise
        raise AssertionError("unreachable")


def origin_of(sp) -> tuple[str, str, int]:
    scheme = sp.scheme.lower()
    return scheme, (sp.hostname or "").lower(), sp.port or (443 if scheme == "https" else 80)


def fetch_bytes(url: str, headers: Mapping[str, str], *, timeout: float = 30.0, head: bool = False,
                max_bytes: int = 64 << 20) -> tuple[int, dict[str, str], bytes]:
    """One small request: GET (config.json for --dry-run) or, with `head`, a HEAD that stops at a cross-origin
    redirect (the access probe: the Hub answers 401/403/404 itself, a redirect to the CDN means access is granted;
    no body byte is transferred). Returns (status, headers, body). Network failures raise OSError /
    http.client.HTTPException."""
    client = HttpPool(timeout)
    # `timeout` bounds each read; a Hub that trickles (a header line or a body byte every few seconds) never trips
    # it, so the whole request also has a deadline: DEADLINE_FACTOR x timeout (2 min by default), past which its
    # sockets are shut down and TimeoutError (an OSError: one line from the callers) is raised.
    deadline = DEADLINE_FACTOR * timeout
    done, fired = threading.Event(), threading.Event()

    def watchdog() -> None:
        if done.wait(deadline):
            return
        fired.set()
        while not done.wait(0.05):  # again until the request returns: a connection opened after the first
            client.shutdown_all()

    threading.Thread(target=watchdog, name="fetch-deadline", daemon=True).start()
    late = f"no complete answer within {deadline:g} s (the server sends too slowly)"
    try:
        resp, _ = client.get(url, headers, method="HEAD" if head else "GET", cross_origin=not head)
        body = resp.read(max_bytes)
        if fired.is_set():
            raise TimeoutError(late)
        return resp.status, {k: v for k, v in resp.getheaders()}, body
    except Fatal as e:
        raise TimeoutError(late) if fired.is_set() else http.client.HTTPException(str(e)) from None
    except (OSError, http.client.HTTPException):
        if fired.is_set():
            raise TimeoutError(late) from None
        raise
    finally:
        done.set()
        client.close_thread()


DEADLINE_FACTOR = 4  # fetch_bytes: a whole small request may take this many per-read timeouts
