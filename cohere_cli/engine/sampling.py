"""Next-token selection: repetition penalty, then temperature, top-k, top-p, min-p (transformers' order)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from cohere_cli.errors import UsageError

if TYPE_CHECKING:
    import torch


# The one table of bounds: the CLI's options declare theirs from it, SamplingParams checks it, and so `/set` does too.
BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 100.0),
    "top_k": (0, 1 << 30),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (0.01, 100.0),
    "max_tokens": (1, 1 << 30),
    "seed": (-(1 << 63), (1 << 64) - 1),  # what torch.Generator.manual_seed accepts (it raises past it)
}


def check_bounds(key: str, value) -> None:
    """UsageError unless `value` is within BOUNDS[key] (keys without bounds pass)."""
    lo, hi = BOUNDS.get(key, (None, None))
    if value is not None and lo is not None and not lo <= value <= hi:
        raise UsageError(f"{key} must be between {lo} and {hi} (got {value})")


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            check_bounds(f.name, getattr(self, f.name))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SamplingOverrides:
    """The sampling options given on a command line (None: not given, so the checkpoint's generation_config.json,
    or the server's default, applies), checked against the same BOUNDS."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            check_bounds(f.name, getattr(self, f.name))

    def given(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Sampler:
    """Stateful only in its random generator, so a seeded run is reproducible token for token.
    `n_valid` masks embedding rows past the tokenizer's vocabulary: the real models have 256000 rows for
    255029 tokens, and a padding row must never be emitted (it would decode to nothing)."""

    def __init__(self, params: SamplingParams, n_valid: int | None = None):
        import torch  # here, not at the top: SamplingParams serves the --endpoint paths, which never need torch

        self.p = params
        self.n_valid = n_valid
        self.gen = torch.Generator()
        self.gen.manual_seed(params.seed if params.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, history: torch.Tensor | None = None) -> int:
        """logits (V,) float32; history: ids seen so far (prompt + generated), for the repetition penalty."""
        import torch
        p = self.p
        logits = logits.float()
        if self.n_valid is not None and self.n_valid < logits.shape[-1]:
            logits = logits[: self.n_valid]  # a view: ids past it are never picked (no 1 MB copy per token)
        if p.repetition_penalty != 1.0 and history is not None and history.numel():
            history = history[history < logits.shape[-1]]  # ids past n_valid have no logit left to penalize
            logits = logits.clone()
            prev = logits[history]
            # CTRL-style, as transformers: shrink positive logits, grow negative ones
            logits[history] = torch.where(prev > 0, prev / p.repetition_penalty, prev * p.repetition_penalty)
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        scaled = logits / p.temperature
        if not torch.isfinite(scaled.max()):  # a temperature so small that the division overflows: its limit, greedy
            return int(torch.argmax(logits))
        logits = scaled
        if p.top_k > 0 and p.top_k < logits.shape[-1]:
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, idx = torch.sort(logits, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest set whose mass reaches top_p
            drop[0] = False  # and always the most likely token (transformers' min_tokens_to_keep=1): top_p=0 is greedy
            logits = logits.scatter(0, idx[drop], float("-inf"))
        probs = logits.softmax(-1)
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return int(torch.multinomial(probs, 1, generator=self.gen))
