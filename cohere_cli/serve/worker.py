"""The engine's one thread, bridged to asyncio. Requests `submit` from the event loop (BatchEngine.add may be called
from any thread); the worker thread calls `step()` while the engine has work, and hands each Response to its
request's asyncio.Queue with loop.call_soon_threadsafe. `cancel` (a client gone, Ctrl-C) frees the slot at once:
the engine drops the sequence before its next step and its queue is forgotten."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from cohere_cli.engine.response import Response
from cohere_cli.serve.schema import ApiError

log = logging.getLogger("cohere_cli.serve")


@dataclass
class Failed:
    """Put on a request's queue instead of a Response when the engine broke (one line for the client)."""
    message: str


class Worker:
    def __init__(self, engine):
        self.engine = engine
        self.cond = threading.Condition()  # guards `queues`; notified on new work, after each step and on stop
        self.queues: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.stopping = False
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="cohere-serve-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, prompt_ids: list[int], params, max_tokens: int, stop_ids: set[int] | None = None
               ) -> tuple[int, asyncio.Queue]:
        """Queue one sequence; (seq, queue of its Responses). Raises the engine's ContextOverflow / EngineBusy."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self.cond:
            if self.stopping:
                raise ApiError(503, "the server is shutting down", code="shutting_down")
            seq = self.engine.add(prompt_ids, params, max_tokens, stop_ids=stop_ids)
            self.queues[seq] = (loop, queue)
            self.cond.notify_all()
        return seq, queue

    def cancel(self, seq: int) -> None:
        """Free `seq`'s slot (idempotent; a finished sequence is already gone)."""
        with self.cond:
            if self.queues.pop(seq, None) is None:
                return
            self.engine.cancel(seq)
            self.cond.notify_all()
        log.info("request %d cancelled: its slot is free", seq)

    def active(self) -> int:
        with self.cond:
            return len(self.queues)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until `predicate()` holds (checked on each submit, step and cancel); False on timeout."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no sequence is queued or running (tests, shutdown); False on timeout."""
        return self.wait_for(lambda: not self.queues and not self.engine.busy(), timeout)

    def stop(self) -> None:
        """Cancel everything (each open request gets a Failed) and end the thread."""
        with self.cond:
            self.stopping = True
            for seq, (loop, queue) in list(self.queues.items()):
                self.engine.cancel(seq)
                loop.call_soon_threadsafe(queue.put_nowait, Failed("the server is shutting down"))
            self.queues.clear()
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.stopping or self.engine.busy())
                if self.stopping:
                    return
            try:
                out = self.engine.step()
            except Exception as e:  # noqa: BLE001  a bug or out of memory: fail the requests, keep serving
                log.exception("the engine failed a step")
                self._fail_all(f"the model failed: {type(e).__name__}")
                continue
            with self.cond:
                self.steps += 1
                for seq, r in out:
                    self._deliver(seq, r)
                self.cond.notify_all()

    def _deliver(self, seq: int, r: Response | Exception) -> None:
        entry = self.queues.get(seq)
        if entry is None:
            return  # cancelled meanwhile
        if isinstance(r, Exception):  # this sequence alone broke (engine.BatchEngine._isolated): the others go on
            log.error("request %d failed", seq, exc_info=r)
            r = Failed(f"the model failed: {type(r).__name__}")
        if isinstance(r, Failed) or r.finish_reason is not None:
            del self.queues[seq]
        loop, queue = entry
        try:
            loop.call_soon_threadsafe(queue.put_nowait, r)
        except RuntimeError:  # the loop is closed (shutting down)
            pass

    def _fail_all(self, message: str) -> None:
        with self.cond:
            for seq, (loop, queue) in list(self.queues.items()):
                self.engine.cancel(seq)
                loop.call_soon_threadsafe(queue.put_nowait, Failed(message))
            self.queues.clear()
            self.cond.notify_all()
