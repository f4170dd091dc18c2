"""`cohere bench --endpoint URL`: a small load generator for an OpenAI-compatible server (see cohere_cli.remote.backend).

Per concurrency level c, `requests_for(c)` = max(4, 2c) streaming raw completions are sent from c threads (each
thread takes the next request when its last one ends), with a wall-time cap per level (no new request starts after
it). Each request sends a prompt of about --seq tokens, `max_tokens=gen` and `ignore_eos: true` (vLLM and llama.cpp
honour it; a server that refuses the field gets the requests without it). Measured per request: time to first
token and decode tokens/s (tokens after the first / time from the first to the last); per level: the aggregate
generated tokens/s = all tokens generated / wall time from the first request sent to the last one finished.

The record has the schema of local runs (cohere-cli.bench/1), with one result per concurrency level:
    {precision: "remote", concurrency, requests, errors, error_messages, prompt_tokens, generation_tokens,
     ttft_s STAT (+ p90), decode_tokens_per_s STAT, aggregate_tokens_per_s, wall_s}
No weights are loaded and torch is not imported.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass

from cohere_cli.errors import CohereError, UsageError

MIN_REQUESTS = 4
WALL_CAP_S = 120.0  # per level: no new request starts after this
FILLER = ("the quick brown fox jumps over a lazy dog while seven bright stars shine above an old quiet town and "
          "every river runs down toward the sea ").split()


def requests_for(concurrency: int) -> int:
    return max(MIN_REQUESTS, 2 * concurrency)


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        levels = []
    if not levels or any(c < 1 or c > 1024 for c in levels):
        raise UsageError(f"--concurrency {text!r}: give a comma-separated list of whole numbers 1..1024, e.g. 1,4,16")
    return list(dict.fromkeys(levels))


@dataclass
class Sample:
    """One request: when it started and ended (perf_counter), its first-token time and decode rate, the tokens."""
    start: float
    end: float
    ttft_s: float | None = None
    decode_tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    generation_tokens: int = 0
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def aggregate(samples: list[Sample], concurrency: int) -> dict:
    """One level's result from its requests. Failed requests count as errors and are left out of the figures; the
    aggregate rate is every generated token over the wall time from the first start to the last end."""
    from cohere_cli.bench.roofline import summarize

    ok = [s for s in samples if s.error is None]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    dec = [s.decode_tokens_per_s for s in ok if s.decode_tokens_per_s]
    wall = (max(s.end for s in samples) - min(s.start for s in samples)) if samples else 0.0
    tokens = sum(s.generation_tokens for s in ok)
    ttft_stat = summarize(ttft)
    ttft_stat["p90"] = percentile(ttft, 0.9)
    prompts = [s.prompt_tokens for s in ok if s.prompt_tokens]
    return {
        "precision": "remote", "concurrency": concurrency, "requests": len(samples),
        "errors": len(samples) - len(ok), "error_messages": sorted({s.error for s in samples if s.error})[:5],
        "prompt_tokens": statistics.median(prompts) if prompts else None, "generation_tokens": tokens,
        "ttft_s": ttft_stat, "decode_tokens_per_s": summarize(dec),
        "aggregate_tokens_per_s": tokens / wall if wall > 0 else 0.0, "wall_s": wall,
    }


class Load:
    """Requests against one server; `ignore_eos` is dropped for good once the server refuses it."""

    def __init__(self, api, served: str | None, *, seq: int, gen: int, tokenizer=None):
        self.api, self.served, self.seq, self.gen, self.tok = api, served, seq, gen, tokenizer
        self.ids, self.text = build_prompt(seq, tokenizer)
        self.ignore_eos = True
        self.lock = threading.Lock()

    def body(self, max_tokens: int) -> dict:
        b = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
             "temperature": 0.0}
        if self.ignore_eos:
            b["ignore_eos"] = True
        if self.served:
            b["model"] = self.served
        return b

    def one(self, max_tokens: int | None = None) -> Sample:
        """One streaming request; any RemoteError becomes the sample's error (one line)."""
        from cohere_cli.remote.http import HTTPStatusError
        from cohere_cli.remote.backend import TextFilter, responses

        t0 = time.perf_counter()
        s = Sample(start=t0, end=t0)
        try:
            while True:
                try:
                    call, as_ids = self.api.open("completion", self.body(max_tokens or self.gen),
                                                 prompt_ids=self.ids, prompt_text=self.text)
                    break
                except HTTPStatusError as e:
                    if self.ignore_eos and e.status in (400, 422) and "ignore_eos" in e.detail.lower():
                        with self.lock:
                            self.ignore_eos = False
                        continue
                    raise
            count = (lambda t: len(self.tok.encode(t, add_bos=False))) if self.tok is not None else None
            last = None
            for r in responses(self.api, call, t0=t0, filt=TextFilter(stop=(), drop=()),
                               prompt_tokens=len(self.ids) if self.ids else None, count_tokens=count,
                               max_tokens=max_tokens or self.gen):
                last = r
            s.end = time.perf_counter()
            if last is not None:
                s.generation_tokens = last.generation_tokens or 0
                s.prompt_tokens = last.prompt_tokens or None
                s.ttft_s = last.ttft_s if s.generation_tokens else None
                s.decode_tokens_per_s = last.decode_tokens_per_s or None
                if s.generation_tokens > 1 and s.ttft_s is not None and s.end - t0 > s.ttft_s:
                    # tokens after the first over the time after the first (the server's count, not the chunks')
                    s.decode_tokens_per_s = (s.generation_tokens - 1) / (s.end - t0 - s.ttft_s)
        except CohereError as e:
            s.end = time.perf_counter()
            s.error = str(e)
        return s

    def level(self, concurrency: int, n: int, cap_s: float = WALL_CAP_S) -> list[Sample]:
        samples: list[Sample] = []
        left = [n]
        deadline = time.perf_counter() + cap_s

        def worker():
            while True:
                with self.lock:
                    if left[0] <= 0 or time.perf_counter() > deadline:
                        return
                    left[0] -= 1
                s = self.one()
                with self.lock:
                    samples.append(s)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, n))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return samples


def filler(words: int) -> str:
    return " ".join(FILLER[i % len(FILLER)] for i in range(words))


def build_prompt(seq: int, tokenizer=None) -> tuple[list[int] | None, str]:
    """About `seq` tokens: exactly seq ids (BOS + filler) with a local tokenizer, else ~one token per filler word."""
    text = filler(max(seq - 1, 1))
    if tokenizer is None:
        return None, text
    ids = tokenizer.encode(text, add_bos=True)
    while len(ids) < seq:  # a tokenizer that merges words: add more
        text = text + " " + text
        ids = tokenizer.encode(text, add_bos=True)
    ids = ids[:seq]
    return ids, tokenizer.decode(ids[1:]) if hasattr(tokenizer, "decode") else text


def run_remote_bench(endpoint, model: str | None, *, seq: int, gen: int, concurrency: list[int],
                     on_level=None) -> dict:
    """Benchmark the server behind `endpoint` (remote.backend.EndpointOptions); return the record."""
    from cohere_cli.bench.run import ENV_KEYS, SCHEMA
    from cohere_cli.bench.roofline import cpu_name, versions
    from cohere_cli.remote.backend import Api, connect
    from cohere_cli.store import utc_now

    client, server, folder, tok = connect(endpoint, model)
    if server.context is not None and seq + gen > server.context:
        raise UsageError(f"--seq {seq} + --gen {gen} is more than the served context ({server.context})")
    load = Load(Api(client), server.served, seq=seq, gen=gen, tokenizer=tok)
    warm = load.one(max_tokens=2)  # connection, first compile, prefix caches; fails fast with its one line
    if warm.error is not None:
        raise CohereError(warm.error)
    for _ in range(3):  # no local tokenizer: fit the filler to --seq with the server's own prompt counts
        if load.ids is not None or not warm.prompt_tokens or abs(warm.prompt_tokens - seq) <= max(2, seq // 20):
            break
        words = len(load.text.split())
        load.text = filler(max(1, round(words * seq / warm.prompt_tokens)))
        warm = load.one(max_tokens=2)
        if warm.error is not None:
            raise CohereError(warm.error)
    results = []
    for c in concurrency:
        if on_level:
            on_level(c, requests_for(c))
        results.append(aggregate(load.level(c, requests_for(c)), c))
    return {
        "schema": SCHEMA,
        "created_at": utc_now(),
        "versions": versions(with_torch=False),
        "machine": {
            "device": "remote", "endpoint": client.url, "cpu": cpu_name(), "cpu_count": os.cpu_count(), "gpu": None,
            "threads": max(concurrency), "memory_bandwidth_bytes_per_s": None, "bandwidth_probe": None,
            "device_peak_bandwidth_bytes_per_s": None,
            "env": {k: os.environ.get(k) for k in ENV_KEYS if os.environ.get(k) is not None},
        },
        "model": {"name": server.served or model or "the served model", "path": str(folder) if folder else None,
                  "served": server.served, "served_models": server.models, "context": server.context,
                  "tokenizer": str(folder) if tok is not None else None},
        "settings": {"seq": seq, "gen": gen, "concurrency": concurrency,
                     "requests": {str(c): requests_for(c) for c in concurrency}, "wall_cap_s": WALL_CAP_S,
                     "warmup": 1, "precisions": ["remote"], "threads": max(concurrency), "device": "remote",
                     "endpoint": client.url, "ignore_eos": load.ignore_eos,
                     "prompt": "token ids (local tokenizer)" if load.ids else
                     "text, fitted to the server's token counts"},
        "results": results,
    }
