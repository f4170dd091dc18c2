"""Continuous batching for `cohere serve`: concurrent requests share the model. Each `step()` admits waiting requests
into free slots (a prefill each, alone, into the slot's own KV cache) and then runs ONE decode forward for every
active sequence (engine/batch_forward.py); a request joins at the next step and leaves when done. Decode on a CPU
is memory-bound, so B rows per pass over the weights multiply throughput.

A slot is a generate.Session (a KV cache and the ids it holds), kept after its sequence ends: a request that
extends an earlier conversation goes to the free slot holding the longest prefix of its prompt and prefills only
the tail, as the REPL does. Every sequence gets exactly the Responses stream_generate would yield for it (text
deltas from its own stream decoder, its own sampler and seed); greedy tokens are the same tokens.

Threading: add / cancel / busy from any thread, step() from one worker thread. The lock guards the queue and the
slot table only; prefill and the forward run outside it."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import count
from typing import Sequence

import torch

from cohere_cli.engine.batch_forward import BatchForward
from cohere_cli.engine.generate import PREFILL_CHUNK, Session, fit_answer, peak_memory_bytes, prefill
from cohere_cli.engine.response import Response
from cohere_cli.engine.sampling import Sampler, SamplingParams, check_bounds
from cohere_cli.errors import EngineBusy

# A cached prefix shorter than this is not reused (the slot starts over): what different conversations share (BOS,
# a template's opening tokens) saves a few tokens of prefill, would cost another conversation its cache, and would
# give other roundings than a fresh run (a prefill after a cached prefix attends in two parts). A conversation's
# next turn, or a long system preamble, shares far more.
MIN_REUSE = 16


@dataclass(eq=False)
class _Seq:
    """One request: stream_generate's local state, kept between steps."""

    id: int
    prompt: list[int]
    max_tokens: int
    stop_ids: set[int]
    sampler: Sampler
    detok: object
    history: torch.Tensor  # prompt + answer ids (the repetition penalty's view), as stream_generate's
    t_add: float
    slot: "_Slot | None" = None
    token: int | None = None  # sampled, not yet emitted
    n: int = 0  # tokens emitted so far (stream_generate's n)
    reused: int = 0
    t_first: float = 0.0
    prefill_tps: float = 0.0
    cancelled: bool = False


@dataclass(eq=False)
class _Slot:
    session: Session | None = None
    seq: _Seq | None = None
    used: int = -1  # step of its last admission, for least-recently-used choice among equals


class BatchEngine:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, context: int | None = None, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be at least 1 and max_queue at least 0")
        self.model, self.tokenizer = model, tokenizer
        self.context = context or model.config.max_position_embeddings
        self.max_queue = max_queue
        self.device = model.model.embed_tokens.weight.device
        self.forward = BatchForward(model)
        self.slots = [_Slot() for _ in range(max_batch)]  # caches allocated on first use
        self.waiting: deque[_Seq] = deque()
        self.seqs: dict[int, _Seq] = {}  # waiting or active
        self.lock = threading.Lock()
        self.ids = count(1)
        self.steps = 0

    # ---- any thread ------------------------------------------------------------------------------------------------
    def add(self, prompt_ids: list[int], params: SamplingParams, max_tokens: int, *,
            stop_ids: set[int] | None = None) -> int:
        """Queue a request; its id. ContextOverflow (empty or too long a prompt), EngineBusy (queue full) or
        UsageError (max_tokens out of bounds) at once."""
        check_bounds("max_tokens", max_tokens)
        n_prompt = len(prompt_ids)
        max_tokens = fit_answer(n_prompt, max_tokens, self.context)
        tok = self.tokenizer
        history = torch.zeros(n_prompt + max_tokens, dtype=torch.long, device=self.device)
        history[:n_prompt] = torch.tensor(list(prompt_ids), dtype=torch.long)
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise EngineBusy(f"{len(self.waiting)} requests are already waiting (the most this server queues): "
                                 f"try again shortly")
            seq = _Seq(next(self.ids), list(prompt_ids), max_tokens,
                       stop_ids if stop_ids is not None else tok.stop_ids,
                       Sampler(params, n_valid=getattr(tok, "vocab_size", None)), tok.stream_decoder(), history,
                       time.perf_counter())
            self.waiting.append(seq)
            self.seqs[seq.id] = seq
        return seq.id

    def cancel(self, seq: int) -> None:
        """Drop a request now (a client went away): its queue place or slot is free for the next step."""
        with self.lock:
            s = self.seqs.pop(seq, None)
            if s is None:
                return
            s.cancelled = True
            if s.slot is None:
                self.waiting.remove(s)
            else:
                s.slot.seq = None

    def busy(self) -> bool:
        with self.lock:
            return bool(self.seqs)

    # ---- the worker thread -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[int, Response | Exception]]:
        """Admit what fits, then one batched decode forward; the Responses this produced, per sequence in order
        (an Exception in place of a Response: that sequence failed and is gone, see _isolated)."""
        out: list[tuple[int, Response]] = []
        with self.lock:
            self.steps += 1
            admitted = []
            while self.waiting and any(s.seq is None for s in self.slots):
                seq = self.waiting.popleft()
                seq.slot = self._choose_slot(seq.prompt)
                seq.slot.seq, seq.slot.used = seq, self.steps
                admitted.append(seq)
        for seq in admitted:
            if not seq.cancelled:  # cancelled while waiting for the lock: no prefill for nobody
                self._isolated(seq, out, self._prefill)
        with self.lock:
            rows = [s.seq for s in self.slots if s.seq is not None and s.seq.token is not None]
        if not rows:
            return out
        logits = self.forward.decode([s.token for s in rows], [len(s.prompt) + s.n - 1 for s in rows],
                                     [s.slot.session.cache for s in rows])  # (B, V) float32
        for i, seq in enumerate(rows):
            with self.lock:
                if seq.cancelled:
                    continue
            self._isolated(seq, out, self._next, logits[i])
        return out

    def _isolated(self, seq: _Seq, out: list, work, *args) -> None:
        """work(seq, *args), then the Responses of the token it sampled. What one sequence breaks (its sampler,
        its detokenizer, its prefill) ends that sequence with the exception in place of a Response and leaves
        its slot; the others go on. A failed batched forward raises out of step() (every row is lost)."""
        try:
            work(seq, *args)
            self._emit(seq, out)
        except Exception as e:  # noqa: BLE001  handed to the caller for this sequence only
            with self.lock:
                if self.seqs.pop(seq.id, None) is not None:
                    out.append((seq.id, e))
                seq.token = None
                if seq.slot is not None:
                    seq.slot.seq = None
                    if seq.slot.session is not None:
                        seq.slot.session.reset()  # its cache may hold a half-written step

    def _next(self, seq: _Seq, logits: torch.Tensor) -> None:
        """After a decode step: the fed token is in the cache; sample the next."""
        seq.slot.session.ids.append(seq.token)
        seq.token = seq.sampler(logits, seq.history[: len(seq.prompt) + seq.n])

    def _choose_slot(self, prompt: Sequence[int]) -> _Slot:
        """The free slot whose cache holds the longest prefix of `prompt` (Session.reuse's rule, MIN_REUSE at least); among equals,
        one never used, else the least recently used: other conversations' caches stay for their next turn."""
        def key(slot: _Slot):
            return (_reusable(slot.session, prompt) if slot.session is not None else 0, -slot.used)

        return max((s for s in self.slots if s.seq is None), key=key)

    def _prefill(self, seq: _Seq) -> None:
        """stream_generate's start: reuse the slot's cached prefix, prefill the rest alone, sample token 1."""
        slot = seq.slot
        if slot.session is None:
            slot.session = Session(self.model, self.context)
        session, n_prompt = slot.session, len(seq.prompt)
        if _reusable(session, seq.prompt) < MIN_REUSE:
            session.reset()
        seq.reused = session.reuse(seq.prompt)
        t0 = time.perf_counter()
        logits = prefill(self.model, seq.history[seq.reused : n_prompt], session.cache, seq.reused, PREFILL_CHUNK)
        session.ids.extend(seq.prompt[seq.reused :])
        seq.token = seq.sampler(logits, seq.history[:n_prompt])
        seq.t_first = time.perf_counter()
        seq.prefill_tps = (n_prompt - seq.reused) / max(seq.t_first - t0, 1e-9)

    def _emit(self, seq: _Seq, out: list) -> None:
        """The Responses for the token just sampled (stream_generate's loop body); a finished sequence leaves its
        slot, whose cache then holds prompt + answer for a next turn. seq.token stays set while it needs a decode."""
        with self.lock:
            if seq.cancelled:
                return
            seq.n += 1
            n, token, now = seq.n, seq.token, time.perf_counter()
            finish = None
            if token in seq.stop_ids:
                finish = "stop"
            else:
                seq.history[len(seq.prompt) + n - 1] = token
                out.append((seq.id, self._response(seq, seq.detok.step(token), token, n, now)))
                if n >= seq.max_tokens:
                    finish = "length"
            if finish is None:
                return
            generated = n - 1 if finish == "stop" else n
            out.append((seq.id, self._response(seq, seq.detok.flush(), None, generated, now, finish)))
            seq.token = None
            seq.slot.seq = None
            del self.seqs[seq.id]

    def _response(self, seq: _Seq, text: str, token: int | None, n: int, now: float, finish=None) -> Response:
        steps = seq.n - 1  # decode steps run after the prefill produced token 1
        decode_tps = steps / max(now - seq.t_first, 1e-9) if steps > 0 else 0.0
        n_prompt = len(seq.prompt)
        # ttft from add(): what the client waits for, its time in the queue included
        return Response(text, token, n_prompt, n, seq.prefill_tps, decode_tps, seq.t_first - seq.t_add,
                        peak_memory_bytes(self.device), finish, n_prompt - seq.reused)


def _reusable(session: Session, prompt: Sequence[int]) -> int:
    """How many prompt tokens Session.reuse would keep (without rewinding anything), 0 under MIN_REUSE."""
    n = session.shared(prompt)
    return n if n >= MIN_REUSE else 0
