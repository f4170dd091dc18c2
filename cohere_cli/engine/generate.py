"""Token generation: one generator, `stream_generate`, yields a `Response` per step; `generate`, `chat` and `bench`
are loops over it. Prefill runs in chunks into a preallocated KV cache and asks for the last position's logits
only, so an 8192-token prompt never materialises seq x vocab logits or a seq x seq score matrix per layer."""

from __future__ import annotations

import resource
import sys
import time
from typing import Iterator, Sequence

import torch

from cohere_cli.errors import ContextOverflow
from cohere_cli.engine.response import Response
from cohere_cli.model import CohereForCausalLM, KVCache
from cohere_cli.engine.sampling import Sampler, SamplingParams
from cohere_cli.engine.thinking import ThinkBudget
from cohere_cli.engine.threads import ThreadTuner
from cohere_cli.weights.memory import trim_heap

PREFILL_CHUNK = 512


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def prefill(model: CohereForCausalLM, ids: torch.Tensor, cache: KVCache, start: int = 0,
            chunk: int = PREFILL_CHUNK) -> torch.Tensor:
    """Feed ids (T,) at positions start.. into the cache, `chunk` tokens at a time; return the last logits (V,)."""
    logits = None
    for s in range(0, ids.numel(), chunk):
        piece = ids[s : s + chunk][None]  # (1, t)
        logits = model(piece, start + s, cache, last_only=True)  # (1, 1, V)
        if piece.shape[1] > 1 and ids.device.type == "cpu":
            trim_heap()  # a chunk's activations, tens of MB a layer, freed into the heap: give them back
    return logits[0, -1]


class Session:
    """A KV cache and the token ids it holds, kept across calls. A new prompt that starts with (part of) what the
    cache holds only prefills the new tail: turn N of a chat costs its new tokens, not the whole history."""

    def __init__(self, model: CohereForCausalLM, max_seq: int | None = None, slack: int = 512):
        p = model.model.embed_tokens.weight
        self.model = model
        self.max_seq = max_seq or model.config.max_position_embeddings
        self.cache = KVCache(model.config, self.max_seq, p.dtype, p.device, slack=slack)
        self.ids: list[int] = []  # ids whose keys/values are in the cache, in position order

    def shared(self, prompt_ids: Sequence[int]) -> int:
        """How many prompt tokens `reuse` would keep (nothing is changed): the longest common prefix with
        prompt_ids, leaving at least one prompt token to prefill (its logits give the first new token)."""
        n = 0
        for a, b in zip(self.ids, prompt_ids[: len(prompt_ids) - 1]):
            if a != b:
                break
            n += 1
        # a sliding-window ring no longer holding what the rewound position needs: start over
        return n if self.cache.can_rewind(n, len(self.ids)) else 0

    def reuse(self, prompt_ids: Sequence[int]) -> int:
        """Rewind to the longest common prefix with prompt_ids; return how many prompt tokens are reused."""
        n = self.shared(prompt_ids)
        del self.ids[n:]
        return n

    def reset(self) -> None:
        self.ids.clear()


def fit_answer(n_prompt: int, max_tokens: int, context: int) -> int:
    """max_tokens cut to what the context leaves after the prompt; ContextOverflow for an empty prompt or one that
    leaves no room (every generation loop checks a prompt this way)."""
    if n_prompt == 0:
        raise ContextOverflow("the prompt is empty: give some text")
    if n_prompt >= context:
        raise ContextOverflow(
            f"the prompt has {n_prompt} tokens but the model's context is {context}: shorten it"
        )
    return min(max_tokens, context - n_prompt)


_TUNERS: dict[int, ThreadTuner] = {}  # by the caller's thread count: decode's, kept across generations


@torch.inference_mode()
def stream_generate(
    model: CohereForCausalLM,
    tokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_tokens: int,
    *,
    stop_ids: set[int] | None = None,
    context: int | None = None,
    session: Session | None = None,
    prefill_chunk: int = PREFILL_CHUNK,
    think: ThinkBudget | None = None,
) -> Iterator[Response]:
    """Generate up to `max_tokens` after `prompt_ids`, stopping early at any of `stop_ids`. With a `session`,
    the cache is reused for the longest common prefix and left holding prompt + answer for the next call. With
    `think` (--think-budget), the tokens it forces are fed instead of sampled ones (engine/thinking.py)."""
    device = model.model.embed_tokens.weight.device
    context = min(context or model.config.max_position_embeddings, session.max_seq if session else 1 << 62)
    n_prompt = len(prompt_ids)
    max_tokens = fit_answer(n_prompt, max_tokens, context)
    stop_ids = stop_ids if stop_ids is not None else tokenizer.stop_ids
    sampler = Sampler(params, n_valid=getattr(tokenizer, "vocab_size", None))
    detok = tokenizer.stream_decoder()
    session = session or Session(model, n_prompt + max_tokens)
    reused = session.reuse(prompt_ids)

    history = torch.tensor(list(prompt_ids) + [0] * max_tokens, dtype=torch.long, device=device)
    t0 = time.perf_counter()
    logits = prefill(model, history[reused:n_prompt], session.cache, reused, prefill_chunk)
    session.ids.extend(prompt_ids[reused:])
    pick = think.next if think is not None else (lambda sample: sample())
    token = pick(lambda: sampler(logits, history[:n_prompt]))
    t_first = time.perf_counter()
    prefill_tps = (n_prompt - reused) / max(t_first - t0, 1e-9)

    def response(text, tok, n, decode_tps, finish=None):
        return Response(text, tok, n_prompt, n, prefill_tps, decode_tps, t_first - t0, peak_memory_bytes(device),
                        finish, n_prompt - reused)

    n, step_in = 0, torch.empty(1, 1, dtype=torch.long, device=device)
    finish = None
    threads = torch.get_num_threads()
    tuner = _TUNERS.setdefault(threads, ThreadTuner(threads)) if device.type == "cpu" else None  # engine/threads.py
    while True:
        n += 1
        decode_tps = (n - 1) / max(time.perf_counter() - t_first, 1e-9) if n > 1 else 0.0
        if token in stop_ids:
            finish = "stop"
            break
        history[n_prompt + n - 1] = token
        yield response(detok.step(token), token, n, decode_tps)
        if n >= max_tokens:
            finish = "length"
            break
        step_in[0, 0] = token
        tuned = tuner.threads if tuner is not None else threads
        if tuned != threads:
            torch.set_num_threads(tuned)
        t, cpu = time.perf_counter(), time.process_time()
        try:
            logits = model(step_in, n_prompt + n - 1, session.cache, last_only=True)[0, -1]
        finally:
            if tuned != threads:
                torch.set_num_threads(threads)  # only the decode step runs at the tuned count
        if tuner is not None:
            tuner.step(time.perf_counter() - t, time.process_time() - cpu)
        session.ids.append(token)  # only once its keys/values are in the cache (Ctrl-C may land in between)
        token = pick(lambda: sampler(logits, history[: n_prompt + n]))
    generated = n - 1 if finish == "stop" else n  # the stop token itself is not part of the answer
    elapsed = time.perf_counter() - t_first  # n-1 decode steps ran after the prefill produced token 1
    yield response(detok.flush(), None, generated, (n - 1) / elapsed if n > 1 else 0.0, finish)
