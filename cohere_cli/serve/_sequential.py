"""A stand-in for engine/batch.py's BatchEngine while it is being written: the same interface, one sequence at a
time through stream_generate. Deleted when BatchEngine lands."""

from __future__ import annotations

import threading
from collections import deque

from cohere_cli.errors import CohereError, ContextOverflow

try:
    from cohere_cli.errors import EngineBusy
except ImportError:  # until BatchEngine's errors land
    class EngineBusy(CohereError):  # type: ignore[no-redef]
        """The queue is full."""


class SequentialEngine:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, context: int | None = None, max_queue: int = 64):
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self.context = context or model.config.max_position_embeddings
        self.lock = threading.Lock()
        self.waiting: deque = deque()
        self.current = None  # (seq, generator)
        self.cancelled: set[int] = set()
        self.next_id = 0

    def add(self, prompt_ids, params, max_tokens: int, *, stop_ids=None) -> int:
        if len(prompt_ids) >= self.context:
            raise ContextOverflow(f"the prompt has {len(prompt_ids)} tokens but the context is {self.context}")
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise EngineBusy("the server is busy: try again later")
            self.next_id += 1
            self.waiting.append((self.next_id, list(prompt_ids), params, max_tokens, stop_ids))
            return self.next_id

    def cancel(self, seq: int) -> None:
        with self.lock:
            self.waiting = deque(w for w in self.waiting if w[0] != seq)
            if self.current is not None and self.current[0] == seq:
                self.cancelled.add(seq)

    def busy(self) -> bool:
        with self.lock:
            return bool(self.waiting) or self.current is not None

    def step(self):
        from cohere_cli.engine.generate import stream_generate

        with self.lock:
            if self.current is not None and self.current[0] in self.cancelled:
                self.current[1].close()
                self.cancelled.discard(self.current[0])
                self.current = None
            if self.current is None and self.waiting:
                seq, ids, params, max_tokens, stop_ids = self.waiting.popleft()
                self.current = (seq, stream_generate(self.model, self.tokenizer, ids, params, max_tokens,
                                                     stop_ids=stop_ids, context=self.context))
            current = self.current
        if current is None:
            return []
        r = next(current[1])
        if r.finish_reason is not None:
            with self.lock:
                self.current = None
        return [(current[0], r)]
