"""Memory arithmetic for Command-R family checkpoints, in pure Python (no torch, no transformers).

- parameter counts and storage dtypes straight from safetensors headers (8-byte little-endian length + JSON);
- the same counts from config.json alone (what `cohere download --dry-run` knows before fetching any weights);
- weight bytes at bf16 / int8 / nf4 the way bitsandbytes stores them: only the attention/MLP linears are
  quantized, embeddings and norms stay 16-bit;
- KV cache bytes = 2 (K and V) x sum over layers of kv_heads x head_dim x positions held x bytes per element, where
  Cohere2's sliding-window layers hold at most `sliding_window` positions.

Sizes are decimal (kB, MB, GB), like the Hugging Face Hub shows them."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.config import ARCHITECTURES, WRAPPERS, ModelConfig, dim
from cohere_cli.store import bnb_format

# bytes per element of each safetensors dtype
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8"}
SHORT_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}

# bitsandbytes 4-bit: two weights per byte plus one fp32 absmax per 64-weight block (no double quantization:
# the upper bound; double quantization shaves ~0.05 byte/param). 8-bit: one byte per weight plus one fp32 scale
# (SCB) per output row.
NF4_BYTES_PER_PARAM = 0.5 + 4 / 64
INT8_BYTES_PER_PARAM = 1.0
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4")

_MAX_HEADER = 100_000_000


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The one safetensors header reader: ({name: {"dtype", "shape", "data_offsets"}} without `__metadata__`,
    absolute offset of the data section). The layout: an 8-byte little-endian header length, then that many bytes
    of JSON. Raises ValueError (OSError when unreadable) when the file is not safetensors; the header is bounded."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n == 0 or n > _MAX_HEADER:
            raise ValueError(f"{path} has an implausible safetensors header length ({n})")
        blob = f.read(n)
    if len(blob) != n:
        raise ValueError(f"{path} ends inside its safetensors header")
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} has an unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has an unreadable safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors_header(path: Path) -> dict:
    """The tensor table of a .safetensors file (see safetensors_header)."""
    return safetensors_header(path)[0]


@dataclass
class TensorStats:
    parameters: int  # logical parameters (4-bit packed weights count twice their bytes, quant state not at all)
    bytes_by_dtype: dict[str, int]  # tensor data bytes per safetensors dtype

    @property
    def storage_dtype(self) -> str | None:
        """The dtype holding most of the bytes, spelled like torch ("bfloat16"); None for an empty checkpoint."""
        if not self.bytes_by_dtype:
            return None
        top = max(self.bytes_by_dtype, key=self.bytes_by_dtype.get)
        return DTYPE_NAMES.get(top, top.lower())


MAX_DIMS = 8  # a tensor of more dimensions is no checkpoint's
MAX_NUMEL = 1 << 50  # more elements than any file holds


def shape_numel(shape) -> int:
    """The element count of a safetensors `shape` (untrusted): -1 where it is not a list of at most MAX_DIMS
    non-negative integers or counts past MAX_NUMEL. Bounded work: a header can hold a shape of millions of huge
    dimensions, whose product as a Python integer costs quadratic time."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        return -1
    n = 1
    for d in shape:
        if type(d) is not int or d < 0 or d > MAX_NUMEL:
            return -1
        n *= d
    return n if n <= MAX_NUMEL else -1


def tensor_stats(files: Iterable[Path]) -> TensorStats:
    """Parameter count and bytes per dtype over safetensors files, from their headers only."""
    params = 0
    by_dtype: dict[str, int] = {}
    for path in files:
        header = read_safetensors_header(path)
        owners = {n.partition(".quant_state.")[0] for n in header if ".quant_state." in n}  # 4-bit weights
        for name, t in header.items():
            numel = shape_numel(t.get("shape", []))
            dtype = t.get("dtype", "?")
            by_dtype[dtype] = by_dtype.get(dtype, 0) + int(numel * DTYPE_BYTES.get(dtype, 1))
            if name.endswith(bnb_format.AUX_SUFFIXES) or ".quant_state." in name:
                continue
            packed_4bit = dtype == "U8" and name in owners
            params += numel * 2 if packed_4bit else numel
    return TensorStats(params, by_dtype)


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (top level, sorted)."""
    return sorted(p for p in Path(folder).glob("*.safetensors") if p.is_file())


def precision_of(config: dict | None, storage_dtype: str | None) -> str | None:
    """What the weights are: "nf4"/"fp4"/"int8" for bitsandbytes checkpoints, else the storage dtype ("bf16"...)."""
    q = (config or {}).get("quantization_config")
    q = q if isinstance(q, dict) else {}  # untrusted: anything but an object means not quantized
    if q.get("load_in_4bit") or q.get("_load_in_4bit"):
        return str(q.get("bnb_4bit_quant_type") or "nf4")
    if q.get("load_in_8bit") or q.get("_load_in_8bit"):
        return "int8"
    if q.get("quant_method"):
        return str(q["quant_method"])
    if storage_dtype is None:
        return None
    return SHORT_PRECISION.get(storage_dtype, storage_dtype)


# ---- dimensions from config.json --------------------------------------------------------------------------------
@dataclass
class Dims:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position_embeddings: int | None
    sliding_window: int | None
    sliding: list[bool]  # per layer: True when the layer only attends to the last `sliding_window` positions
    qk_norm: bool
    tied: bool
    # cohere2_moe: per layer whether its MLP is routed experts; their count, how many a token runs, their width,
    # the shared experts' total width and the dense layers' width (dense models: sparse == [], intermediate)
    sparse: list[bool] = field(default_factory=list)
    experts: int = 0
    experts_per_tok: int = 0
    shared_intermediate: int = 0
    dense_intermediate: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> Dims:
        """Raises ValueError naming the missing key when the config lacks the dimensions."""
        if cfg.get("model_type") in ARCHITECTURES + WRAPPERS:
            try:
                text = cfg.get("text_config") if cfg.get("model_type") in WRAPPERS else cfg
                return cls._from_model_config(text if isinstance(text, dict) else cfg, ModelConfig.from_hf(cfg))
            except (TypeError, ValueError, AttributeError):
                pass  # one we cannot run: the plain reading below still sizes it
        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
            cfg = cfg["text_config"]
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key not in cfg:
                raise ValueError(f"config.json lacks {key}")
        # Bounded as the Cohere parser bounds them: a 1 kB file must not make sizing allocate gigabytes.
        hidden, layers, heads = dim(cfg, "hidden_size"), dim(cfg, "num_hidden_layers"), dim(cfg, "num_attention_heads")
        intermediate, vocab = dim(cfg, "intermediate_size"), dim(cfg, "vocab_size")
        kv = dim(cfg, "num_key_value_heads", heads)
        head_dim = dim(cfg, "head_dim", max(1, hidden // heads))
        model_type = str(cfg.get("model_type", "?"))
        window = cfg.get("sliding_window")
        sliding = layer_is_sliding(cfg, layers)
        return cls(
            model_type=model_type, hidden=hidden, layers=layers, heads=heads, kv_heads=kv, head_dim=head_dim,
            intermediate=intermediate, vocab=vocab, max_position_embeddings=dim(cfg, "max_position_embeddings", 0) or None,
            sliding_window=int(window) if window and any(sliding) else None, sliding=sliding,
            qk_norm=bool(cfg.get("use_qk_norm", False)), tied=bool(cfg.get("tie_word_embeddings", True)),
        )

    @classmethod
    def _from_model_config(cls, cfg: dict, mc: ModelConfig) -> Dims:
        """The model's own reading (head_dim, which layers slide, the window): what it will allocate and run."""
        sliding = [mc.is_sliding(i) for i in range(mc.n_layers)]
        return cls(model_type=mc.model_type, hidden=mc.hidden_size, layers=mc.n_layers, heads=mc.n_heads,
                   kv_heads=mc.n_kv_heads, head_dim=mc.head_dim, intermediate=mc.intermediate_size,
                   vocab=mc.vocab_size, max_position_embeddings=dim(cfg, "max_position_embeddings", 0) or None,
                   sliding_window=mc.sliding_window if any(sliding) else None, sliding=sliding,
                   qk_norm=mc.use_qk_norm, tied=mc.tie_word_embeddings,
                   sparse=[mc.is_sparse(i) for i in range(mc.n_layers)] if mc.mlp_types else [],
                   experts=mc.n_experts, experts_per_tok=mc.n_experts_per_tok,
                   shared_intermediate=mc.intermediate_size * mc.n_shared_experts,
                   dense_intermediate=mc.dense_intermediate_size)


def layer_is_sliding(cfg: dict, layers: int) -> list[bool]:
    """Per layer, whether it is a sliding-window layer: from `layer_types` when given, else for Cohere2 layer i
    slides iff (i+1) % sliding_window_pattern != 0 (pattern default 4: every 4th layer is full attention).
    Command-R (model_type cohere) has no sliding layers."""
    types = cfg.get("layer_types")
    if isinstance(types, list) and len(types) == layers:
        return [t == "sliding_attention" for t in types]
    if cfg.get("model_type") != "cohere2" or cfg.get("sliding_window") in (None, 0):
        return [False] * layers
    pattern = dim(cfg, "sliding_window_pattern", 4)
    return [(i + 1) % pattern != 0 for i in range(layers)]


@dataclass
class ParamCounts:
    linear: int  # attention + MLP projection weights: what bitsandbytes quantizes
    linear_rows: int  # their output rows (one int8 scale each)
    other: int  # embeddings, norms and MoE routers (stay 16-bit when quantized); a tied lm_head is not stored
    active_linear: int = -1  # the linear weights one token runs (MoE: the chosen and shared experts only)
    active_rows: int = -1

    @property
    def total(self) -> int:
        return self.linear + self.other

    def active(self) -> ParamCounts:
        """The parameters one token reads: every one in a dense model, the routed few in a MoE."""
        if self.active_linear < 0:
            return self
        return ParamCounts(self.active_linear, self.active_rows, self.other)


def param_counts(d: Dims) -> ParamCounts:
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    attn, attn_rows = d.hidden * q + 2 * d.hidden * kv + q * d.hidden, q + 2 * kv + d.hidden
    norms = d.hidden + ((d.heads + d.kv_heads) * d.head_dim if d.qk_norm else 0)
    other = d.vocab * d.hidden + d.layers * norms + d.hidden
    if not d.tied:
        other += d.vocab * d.hidden

    def mlp(width: int) -> tuple[int, int]:  # SwiGLU: gate, up, down; rows 2 x width + hidden
        return 3 * d.hidden * width, 2 * width + d.hidden

    if not d.sparse:
        w, r = mlp(d.intermediate)
        return ParamCounts(linear=d.layers * (attn + w), linear_rows=d.layers * (attn_rows + r), other=other)
    total, active = [0, 0], [0, 0]  # (linear params, rows): all of them, and what one token runs
    for sparse in d.sparse:
        if sparse:
            (ew, er), (sw, sr) = mlp(d.intermediate), mlp(d.shared_intermediate) if d.shared_intermediate else (0, 0)
            total[0] += attn + d.experts * ew + sw
            total[1] += attn_rows + d.experts * er + sr
            active[0] += attn + d.experts_per_tok * ew + sw
            active[1] += attn_rows + d.experts_per_tok * er + sr
            other += d.experts * d.hidden  # the router, kept in float
        else:
            w, r = mlp(d.dense_intermediate)
            for c in (total, active):
                c[0], c[1] = c[0] + attn + w, c[1] + attn_rows + r
    return ParamCounts(total[0], total[1], other, active[0], active[1])


def weights_bytes(d: Dims, precision: str, active: bool = False) -> int:
    """Bytes the weights take in memory at `precision` (fp32, bf16, fp16, int8 or nf4); with `active`, the bytes
    one token reads (a MoE's chosen experts, not all of them)."""
    c = param_counts(d).active() if active else param_counts(d)
    if precision == "fp32":
        return 4 * c.total
    if precision in ("bf16", "fp16"):
        return 2 * c.total
    if precision == "int8":
        return int(c.linear * INT8_BYTES_PER_PARAM) + 4 * c.linear_rows + 2 * c.other
    if precision in ("nf4", "fp4"):
        return int(c.linear * NF4_BYTES_PER_PARAM) + 2 * c.other
    raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")


def kv_cache_bytes(d: Dims, seq: int, bytes_per_element: int = 2, batch: int = 1) -> int:
    """KV cache for `seq` positions: 2 x layers x kv_heads x head_dim x positions x bytes, where sliding layers
    hold min(seq, sliding_window) positions."""
    per_position = 2 * d.kv_heads * d.head_dim * bytes_per_element * batch
    total = 0
    for sliding in d.sliding:
        held = min(seq, d.sliding_window) if sliding and d.sliding_window else seq
        total += per_position * held
    return total


def memory_lines(d: Dims, seq: int) -> list[str]:
    """Weights at bf16 / int8 / nf4 and the bf16 KV cache at `seq` tokens, as two lines of text."""
    params = param_counts(d).total
    w = " | ".join(f"{p} {human_bytes(weights_bytes(d, p))}" for p in ("bf16", "int8", "nf4"))
    kv = kv_cache_bytes(d, seq)
    window = f", {sum(d.sliding)} of {d.layers} layers sliding at {d.sliding_window}" if d.sliding_window else ""
    lines = [f"memory: {human_params(params)} parameters ({d.model_type}); weights {w}"]
    if d.sparse:  # a MoE reads a fraction of them per token: what decode speed depends on
        active = param_counts(d).active().total
        r = " | ".join(f"{p} {human_bytes(weights_bytes(d, p, active=True))}" for p in ("bf16", "int8", "nf4"))
        lines.append(f"        {human_params(active)} active per token ({d.experts_per_tok} of {d.experts} experts); "
                     f"read per token {r}")
    return lines + [f"        KV cache at {seq} tokens: {human_bytes(kv)} (bf16{window})"]


def human_bytes(n: float) -> str:
    """Decimal units, 3 significant digits: 999 B, 1.2 kB, 16.1 GB, 671 MB."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.3g} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def human_params(n: int | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}" if n / div < 100 else f"{n / div:.0f}{unit}"
    return str(n)
