"""`cohere serve [MODEL]`: an OpenAI-compatible server over one local model (cohere_cli/serve/), with the safe
defaults: loopback unless an API key is set, bounded requests and queue, Ctrl-C (or SIGTERM) stops it cleanly:
open answers end with an error event, the engine thread stops, the process exits."""

from __future__ import annotations

import ipaddress
import logging

from cohere_cli.errors import UsageError
from cohere_cli.ui.console import info

DEFAULT_CTX_CAP = 8192  # as chat: the KV cache is allocated for the context


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to may be reachable from elsewhere


def check_exposure(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise UsageError(f"--host {host} is reachable from other machines: give --api-key KEY (or set "
                         f"COHERE_CLI_API_KEY) to serve there, or leave --host at 127.0.0.1")


def served_name(model: str, folder) -> str:
    """What /v1/models lists: the store name or `demo` (a client finds its local copy by that name); a folder's own
    name, never its path (where our files are is none of a client's business)."""
    from cohere_cli.store import locate

    loc = locate(model)
    return loc.name if loc.entry is not None or loc.builtin else folder.name


def run_serve(model: str, *, host: str, port: int, api_key: str | None, ctx: int | None, max_batch: int,
              max_queue: int, dtype: str) -> None:
    check_exposure(host, api_key)  # before seconds of loading
    if host.startswith("[") and host.endswith("]"):  # [::1], as in a URL: the socket wants the address itself
        host = host[1:-1]
    import uvicorn

    from cohere_cli.chat.session import generation_defaults
    from cohere_cli.engine.runtime import find_checkpoint, load_runtime
    from cohere_cli.engine.batch import BatchEngine
    from cohere_cli.serve.app import create_app
    from cohere_cli.serve.render import Served
    from cohere_cli.serve.server import config as server_config
    from cohere_cli.serve.worker import Worker

    ck = find_checkpoint(model)
    rt = load_runtime(ck, dtype)
    info(rt.summary())
    context = min(ctx or min(rt.context, DEFAULT_CTX_CAP), rt.context)
    engine = BatchEngine(rt.model, rt.tokenizer, max_batch=max_batch, context=context, max_queue=max_queue)
    served = Served(served_name(model, ck.folder), rt.tokenizer, context, rt.folder, generation_defaults(rt.folder))
    worker = Worker(engine)
    config = server_config(create_app(served, worker, api_key=api_key, render_queue=max_queue), host=host, port=port)
    logging.getLogger("cohere_cli.serve").setLevel(logging.WARNING)
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logs the OSError and exits
        raise UsageError(f"cannot listen on {host} port {port}: is the port in use (--port N), or is {host} not "
                         f"an address of this machine (--host)?") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            # said once uvicorn listens and handles Ctrl-C itself: from here on a Ctrl-C is a clean stop
            info(f"serving {served.name} at http://{shown}:{bound}/v1 (OpenAI API: /v1/chat/completions, "
                 f"/v1/completions, /v1/models; context {context}, batch {max_batch}, queue {max_queue}"
                 f"{', API key required' if api_key else ''}); Ctrl-C stops")

        def handle_exit(self, sig, frame):
            worker.stop()  # open answers end now, so the graceful shutdown does not wait for them
            super().handle_exit(sig, frame)

    worker.start()
    try:
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down
        pass
    finally:
        worker.stop()
        sock.close()
    info("stopped")

