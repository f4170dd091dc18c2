"""How much quantization changed a model: perplexity of both on the built-in evaluation text, the KL divergence of
the next-token distributions (parent || quantized: mean and 99th percentile) and how often their top-1 tokens
agree. Computed with the model core (cohere_cli.model's blocks), on windows of the text that each start with BOS.

Both models run layer by layer, straight from their checkpoint folders: one block of each is in memory at a time
(plus the hidden states of the evaluation windows and the embedding/head at the end), so the report works for a
model that does not fit in memory in its float form, e.g. a 70 GB parent on a 24 GB machine.

Importing this module does not import torch (`cohere models info` uses format_report)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from cohere_cli.errors import CheckpointError

EVAL_TEXT = "eval_text.txt"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_WINDOW = 512
HEAD_LOGITS = 128 * 256000  # logits per lm_head chunk and model: 131 MB of fp32 (128 positions of a 256000 vocabulary)


def eval_text() -> str:
    return resources.files("cohere_cli.data").joinpath(EVAL_TEXT).read_text(encoding="utf-8")


@dataclass
class QualityReport:
    tokens: int  # next-token predictions scored
    windows: int
    window: int  # tokens per window (BOS included)
    dtype: str  # compute dtype of both models
    parent_perplexity: float
    perplexity: float
    kl_mean: float  # nats per token, KL(parent || quantized)
    kl_p99: float
    top1_agreement: float  # fraction of positions where both models' most likely next token is the same
    seconds: float = 0.0
    text: str = "built-in"
    vocab: int | None = None  # the tokenizer's size: a perplexity above it is worse than a uniform guess

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QualityReport":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def lines(self, parent: str | None = None) -> list[str]:
        return format_report(self.to_dict(), parent)


# What the built-in text is, for the report; a general model's perplexity on prose like it is ~5 to 30.
EVAL_TEXT_WHAT = "the built-in evaluation text (general English: stories, explainers, a letter, a poem; "
HIGH_PERPLEXITY = 1000  # past this the parent does not model the text at all: only the relative change means much


def plain(v: float, digits: int = 3) -> str:
    """A number as people write it: 105,623 / 12.3 / 0.0116 (`digits` significant digits), not 1.056e+05; only
    numbers too small or large for that (under 1e-6, a billion or more) keep the exponent."""
    if not math.isfinite(v) or v == 0:
        return "0" if v == 0 else str(v)
    if abs(v) >= 1e9 or abs(v) < 1e-6:
        return f"{v:.{digits - 1}e}"
    if abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    return f"{v:.{digits - 1 - math.floor(math.log10(abs(v)))}f}"


def format_report(d: dict, parent: str | None = None) -> list[str]:
    """The report as lines of text (also what `cohere models info` shows from a manifest's "quality"); `parent`
    names the model it was measured against, when known."""
    ppl_p, ppl_q = d["parent_perplexity"], d["perplexity"]
    rel = (ppl_q / ppl_p - 1) * 100 if ppl_p else float("nan")
    change = f"{rel:+.2f}%" if abs(rel) < 0.1 else f"{rel:+,.1f}%"
    text = EVAL_TEXT_WHAT if d.get("text", "built-in") == "built-in" else "the given text ("
    lines = [
        f"quality vs parent, measured on {d['tokens']:,} tokens of {text}{d['windows']} windows of {d['window']}, "
        f"{d['dtype']}):",
        f"  perplexity      {plain(ppl_p, 4)} -> {plain(ppl_q, 4)} ({change}: the change is what matters; "
        f"lower is better)",
        f"  KL divergence   mean {plain(d['kl_mean'])}, p99 {plain(d['kl_p99'])} nats/token (0: the same "
        f"predictions)",
        f"  top-1 agreement {d['top1_agreement'] * 100:.1f}% (how often both models pick the same next token)",
    ]
    vocab = d.get("vocab")  # from a manifest: untrusted, a number or nothing
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0 else None
    if ppl_p > HIGH_PERPLEXITY or (vocab and ppl_p > vocab):
        how = (f"worse than a uniform guess among its {vocab:,} tokens" if vocab and ppl_p > vocab
               else "far above the 5 to 30 of a general model")
        who = ("the demo is a help-desk toy trained only on questions about this CLI, not on general text"
               if parent == "demo" else f"{parent or 'the parent'} was not trained on text like it")
        lines.append(f"  note: the parent's perplexity here is {how}: {who}. Judge the quantization by the change, "
                     f"the KL divergence and the top-1 agreement, not by the absolute number")
    return lines


# ---- the checkpoint, a block at a time ------------------------------------------------------------------------------
def _shell(path: str, module):
    """A module tree that puts `module` at its checkpoint path (e.g. model.layers.3), so tensor names resolve as is."""
    from torch import nn

    root = node = nn.Module()
    parts = path.split(".")
    for p in parts[:-1]:
        child = nn.Module()
        node.add_module(p, child)
        node = child
    node.add_module(parts[-1], module)
    return root


def _meta():
    """Build modules on meta without random initialisation (checkpoint._no_init: nn.init on meta imports
    torch._dynamo, seconds of every evaluation); every weight is read from the checkpoint."""
    import contextlib

    import torch

    from cohere_cli.weights.checkpoint import _no_init

    stack = contextlib.ExitStack()
    stack.enter_context(torch.device("meta"))
    stack.enter_context(_no_init())
    return stack


class LayerStream:
    """A checkpoint folder read one part (embedding, block i, final norm, head) at a time, float or bitsandbytes."""

    def __init__(self, folder: Path, dtype, device):
        from cohere_cli.weights.checkpoint import read_config, weight_files
        from cohere_cli.store.sizes import read_safetensors_header

        self.folder, self.dtype, self.device = Path(folder), dtype, device
        self.raw, self.cfg = read_config(self.folder)
        self.where: dict[str, Path] = {}
        for f in weight_files(self.folder):
            try:
                for name in read_safetensors_header(f):
                    self.where[name] = f
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{f} is corrupt or truncated ({e}): re-download it") from None
        self.quantized = isinstance(self.raw.get("quantization_config"), dict)

    def load(self, path: str, module):
        """Fill `module` (built on meta) with the tensors under `path`; returns it (quantized linears swapped in)."""
        from cohere_cli.weights.checkpoint import assign_tensor
        from cohere_cli.weights.safetensors import Reader

        shell = _shell(path, module)
        params = dict(shell.named_parameters(remove_duplicate=True))
        loader = None
        if self.quantized:
            from cohere_cli.weights.quant import QuantizedLoader

            loader = QuantizedLoader(shell, self.raw, [], self.dtype, self.device, names=set(self.where),
                                     prefix=path + ".")
        keys = [k for k in self.where if k.startswith(path + ".")]
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.where[k], []).append(k)
        seen = set()
        for f, names in by_file.items():
            with Reader(f) as sf:
                for key in names:
                    if loader is not None and loader.take(key, sf):
                        seen.add(key)
                        continue
                    if key not in params:
                        raise CheckpointError(f"{f.name} has unexpected tensor {key!r}")
                    assign_tensor(shell, key, sf.get_tensor(key), params[key], self.dtype, self.device, f)
                    seen.add(key)
        if loader is not None:
            loader.finish()
        missing = sorted(set(params) - seen)
        if missing:
            raise CheckpointError(f"checkpoint {self.folder} lacks tensor {missing[0]!r}: it is incomplete")
        return shell.get_submodule(path).eval().requires_grad_(False)

    def block(self, i: int):
        from cohere_cli.model import Block

        with _meta():
            b = Block(self.cfg, i)
        from cohere_cli.weights.layout import fuse_block

        return fuse_block(self.load(f"model.layers.{i}", b))  # the inference layout load_model gives the model core

    def embedding(self):
        from torch import nn

        with _meta():
            e = nn.Embedding(self.cfg.vocab_size, self.cfg.hidden_size)
        return self.load("model.embed_tokens", e).weight

    def norm(self):
        from cohere_cli.model import LayerNorm

        with _meta():
            n = LayerNorm(self.cfg.hidden_size, self.cfg.norm_eps)
        return self.load("model.norm", n)

    def head(self, embedding) -> Callable:
        """x (..., H) -> logits (..., V) in float32 with logit_scale, exactly like CohereForCausalLM's last step
        (for a quantized checkpoint on CPU, with the int8 head load_model builds)."""
        import torch.nn.functional as F
        from torch import nn

        from cohere_cli.weights.quant import head_threshold, int8_head

        scale = self.cfg.logit_scale
        if self.cfg.tie_word_embeddings or not any(k.startswith("lm_head.") for k in self.where):
            w = embedding if embedding is not None else self.embedding()
            lm = lambda x: F.linear(x, w)  # noqa: E731
        else:
            with _meta():
                lin = nn.Linear(self.cfg.hidden_size, self.cfg.vocab_size, bias=False)
            lm = self.load("lm_head", lin)
            w = lm.weight
        q = int8_head(w, head_threshold(self.raw)) if self.quantized else None
        if q is not None:  # the int8 head load_model runs on CPU (checkpoint.inference_layout)
            lm = q
        return lambda x: lm(x).float() * scale


# ---- the evaluation -------------------------------------------------------------------------------------------------
def eval_windows(ids: list[int], bos: int | None, window: int):
    """(B, T) windows: each starts with BOS (when the tokenizer has one) followed by the next slice of the text."""
    import torch

    body = window - (1 if bos is not None else 0)
    n = max(1, len(ids) // body)
    rows = []
    for j in range(n):
        piece = ids[j * body : (j + 1) * body]
        rows.append(([bos] if bos is not None else []) + piece)
    if len(rows) == 1 and len(rows[0]) < 2:
        raise ValueError("the evaluation text is too short for this tokenizer")
    return torch.tensor(rows, dtype=torch.long)


def _hidden_states(stream: LayerStream, windows, batch: int, tick):
    """Run every window through the embedding and all blocks; returns the last hidden states (B, T, H)."""
    import torch
    import torch.nn.functional as F

    from cohere_cli.model import rope_cos_sin

    cfg = stream.cfg
    emb = stream.embedding()
    x = F.embedding(windows.to(stream.device), emb)
    del emb
    pos = torch.arange(windows.shape[1], device=stream.device)
    rope = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, x.dtype)  # as CohereForCausalLM.forward computes it
    for i in range(cfg.n_layers):
        blk = stream.block(i)
        for s in range(0, x.shape[0], batch):
            x[s : s + batch] = blk(x[s : s + batch], pos, rope)
        del blk
        tick()
    return x


def evaluate(model: Path, parent: Path, *, tokenizer_folder: Path | None = None, text: str | None = None,
             max_tokens: int = DEFAULT_MAX_TOKENS, window: int = DEFAULT_WINDOW, dtype: str = "auto",
             device: str = "cpu", batch: int = 4,
             progress: Callable[[int, int], None] | None = None) -> QualityReport:
    """Compare `model` (typically quantized) with `parent` on the built-in text (or `text`)."""
    import torch

    with torch.inference_mode():
        return _evaluate(model, parent, tokenizer_folder, text, max_tokens, window, dtype, device, batch, progress)


def _evaluate(model, parent, tokenizer_folder, text, max_tokens, window, dtype, device, batch, progress):
    import torch

    from cohere_cli.weights.checkpoint import pick_dtype
    from cohere_cli.engine.tokenizer import Tokenizer

    t0 = time.perf_counter()
    dev = torch.device(device)
    torch_dtype, _ = pick_dtype(dtype, dev)
    q_stream = LayerStream(model, torch_dtype, dev)
    p_stream = LayerStream(parent, torch_dtype, dev)
    _check_same_shape(q_stream.cfg, p_stream.cfg)
    tok = Tokenizer.from_dir(tokenizer_folder or model)
    ids = tok.encode(text if text is not None else eval_text(), add_bos=False)[:max_tokens]
    if ids and max(ids) >= q_stream.cfg.vocab_size:
        from cohere_cli.errors import TokenizerError

        raise TokenizerError(f"the tokenizer produces id {max(ids)} but the model has {q_stream.cfg.vocab_size} "
                             f"embedding rows: tokenizer and weights do not belong together")
    w = min(window, q_stream.cfg.max_position_embeddings)
    windows = eval_windows(ids, tok.bos_id, w)

    total = 2 * q_stream.cfg.n_layers + 1
    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0], total)

    h_p = _hidden_states(p_stream, windows, batch, tick)
    h_q = _hidden_states(q_stream, windows, batch, tick)
    h_p, h_q = p_stream.norm()(h_p), q_stream.norm()(h_q)
    emb_p = p_stream.embedding() if p_stream.cfg.tie_word_embeddings else None
    emb_q = q_stream.embedding() if q_stream.cfg.tie_word_embeddings else None
    if emb_p is not None and emb_q is not None and torch.equal(emb_p, emb_q):
        emb_q = emb_p  # the usual case: quantization leaves the embedding alone; keep one copy
    head_p, head_q = p_stream.head(emb_p), q_stream.head(emb_q)

    targets = windows[:, 1:].to(dev)  # (B, T-1)
    nll_p, nll_q, kls, agree = [], [], [], []
    hp, hq = h_p[:, :-1].reshape(-1, h_p.shape[-1]), h_q[:, :-1].reshape(-1, h_q.shape[-1])
    tg = targets.reshape(-1)
    chunk = max(128, HEAD_LOGITS // q_stream.cfg.vocab_size)  # positions per head call: one call for a small vocab
    for s in range(0, tg.numel(), chunk):
        lp = torch.log_softmax(head_p(hp[s : s + chunk]), dim=-1)  # (c, V) float32
        lq = torch.log_softmax(head_q(hq[s : s + chunk]), dim=-1)
        t = tg[s : s + chunk, None]
        nll_p.append(-lp.gather(-1, t)[:, 0])
        nll_q.append(-lq.gather(-1, t)[:, 0])
        kls.append((lp.exp() * (lp - lq)).sum(-1))
        agree.append(lp.argmax(-1) == lq.argmax(-1))
    tick()
    nll_p, nll_q = torch.cat(nll_p).double(), torch.cat(nll_q).double()
    kl = torch.cat(kls).double()
    return QualityReport(
        tokens=int(tg.numel()), windows=int(windows.shape[0]), window=int(windows.shape[1]),
        dtype=str(torch_dtype).removeprefix("torch."),
        parent_perplexity=math.exp(nll_p.mean().item()), perplexity=math.exp(nll_q.mean().item()),
        kl_mean=kl.mean().item(), kl_p99=torch.quantile(kl, 0.99).item(),
        top1_agreement=torch.cat(agree).double().mean().item(), seconds=time.perf_counter() - t0,
        text="built-in" if text is None else "given", vocab=tok.vocab_size,
    )


def _check_same_shape(a, b) -> None:
    for k in ("model_type", "vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads"):
        if getattr(a, k) != getattr(b, k):
            raise CheckpointError(f"the model and its parent differ in {k} ({getattr(a, k)} vs {getattr(b, k)}): "
                                  f"not a quantization of that parent")
