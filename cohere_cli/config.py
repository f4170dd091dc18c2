"""config.json: the one reader and the one parser, without torch (the store, `cohere models`, bench planning and
--endpoint read it too). A checkpoint's files are untrusted: the file is size-bounded, must be a JSON object, and
every failure is one CheckpointError line that says what to do. Reference: ../shared/cohere-spec.md, section 1."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from cohere_cli.errors import CheckpointError, NotARegularFile, TooBig
from cohere_cli.untrusted import parse_json, read_bounded

MAX_CONFIG_BYTES = 1 << 20  # real ones are ~1 kB; anything this big is not a config

FULL, SLIDING = "full_attention", "sliding_attention"
DENSE, SPARSE = "dense", "sparse"  # cohere2_moe's mlp_layer_types
ARCHITECTURES = ("cohere", "cohere2", "cohere2_moe")
WRAPPERS = ("cohere2_vision",)  # a vision tower + projector around one of ARCHITECTURES: we read its text model


@dataclass
class ModelConfig:
    model_type: str  # "cohere", "cohere2" or "cohere2_moe"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    logit_scale: float = 0.0625
    use_qk_norm: bool = False
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)
    rms_norm: bool = False  # cohere2_moe with rms_norm_eps: RMSNorm instead of Cohere's LayerNorm
    # cohere2_moe: per layer "dense" (a SwiGLU of dense_intermediate_size) or "sparse" (routed experts); [] = dense
    mlp_types: list[str] = field(default_factory=list)
    dense_intermediate_size: int = 0
    n_experts: int = 0
    n_experts_per_tok: int = 0
    n_shared_experts: int = 0  # one SwiGLU of intermediate_size * n_shared_experts beside the routed ones
    shared_combine: str = "average"  # "sum" or "average": (routed + shared) / 2
    router_fn: str = "softmax"  # softmax over the top-k logits, or sigmoid (renormalised when norm_topk_prob)
    norm_topk_prob: bool = True
    rope_on_full: list[bool] = field(default_factory=list)  # cohere2_moe: full layers that keep RoPE (force_rope)
    weight_prefix: str = "model."  # where the text model's weights are: "model.language_model." in a wrapper

    @classmethod
    def from_hf(cls, d: dict) -> "ModelConfig":
        """Parse a config.json dict, in either spelling: released checkpoints (`rope_theta`, `torch_dtype`,
        `sliding_window_pattern`) or current transformers (`rope_parameters`, `dtype`, `layer_types`).
        Raises ValueError (with the offending key) on anything we cannot run."""
        if d.get("model_type") in WRAPPERS:  # Command A Vision, Command A+: the text model is text_config
            text = d.get("text_config")
            if not isinstance(text, dict):
                raise ValueError(f"a {d['model_type']} config.json needs a text_config object")
            # transformers' Cohere2VisionConfig makes an untyped text_config a cohere2; the head is tied unless said
            text = {"model_type": "cohere2", "tie_word_embeddings": d.get("tie_word_embeddings", True), **text}
            if text["model_type"] in WRAPPERS:
                raise ValueError("text_config wraps another wrapper")
            return replace(cls.from_hf(text), weight_prefix="model.language_model.")
        mt = d.get("model_type")
        if mt not in ARCHITECTURES:
            raise ValueError(f"model_type {mt!r} is not a Cohere architecture (expected one of "
                             f"{', '.join(ARCHITECTURES + WRAPPERS)})")
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
            if key not in d:
                raise ValueError(f"config.json lacks {key!r}")
        H, nh = dim(d, "hidden_size"), dim(d, "num_attention_heads")
        L, I, V = dim(d, "num_hidden_layers"), dim(d, "intermediate_size"), dim(d, "vocab_size")
        nkv = dim(d, "num_key_value_heads", nh)
        if nh % nkv:
            raise ValueError(f"num_attention_heads ({nh}) is not a multiple of num_key_value_heads ({nkv})")
        if H < nh:
            raise ValueError(f"hidden_size ({H}) is smaller than num_attention_heads ({nh})")
        # Cohere2Config forces head_dim = H // nh whatever config.json says (all releases: 128); Cohere2MoeConfig
        # reads it (default 128), and it need not be H // nh there.
        hd = {"cohere2": H // nh, "cohere2_moe": dim(d, "head_dim", 128)}.get(mt) or dim(d, "head_dim", H // nh)
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError("rope_parameters / rope_scaling must be an object")
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", None):
            raise ValueError(f"rope type {rtype!r} is not supported (Cohere releases use plain RoPE)")
        theta = _real(rope, "rope_theta", _real(d, "rope_theta", 10000.0))
        window, types = None, [FULL] * L
        moe, first_k, prefix_pat = _moe(d, L) if mt == "cohere2_moe" else ({}, 0, 1)
        if mt != "cohere":
            # null, false or 0: no window (every layer sees everything); absent: transformers' default.
            window = dim(d, "sliding_window", 4096) if d.get("sliding_window", 4096) else None
            if d.get("layer_types"):
                types = d["layer_types"]
                if not isinstance(types, list):
                    raise ValueError("layer_types must be a list")
            else:  # released configs: layer i is sliding unless (i+1) is a multiple of the pattern (default 4)
                # cohere2_moe: the first_k dense layers follow their own pattern, and the rest count from 0 again
                pat = dim(d, "sliding_window_pattern", 4)
                types = ([SLIDING if (i + 1) % prefix_pat else FULL for i in range(first_k)]
                         + [SLIDING if (i + 1) % pat else FULL for i in range(L - first_k)])
            if len(types) != L or any(t not in (FULL, SLIDING) for t in types):
                raise ValueError("layer_types must name 'full_attention' or 'sliding_attention' for every layer")
        if mt == "cohere2_moe":  # Cohere2MoeAttention.force_rope: under prefix pattern 1 dense layers keep RoPE
            moe["rope_on_full"] = [t == DENSE and prefix_pat == 1 for t in moe["mlp_types"]]
        eps_key = "rms_norm_eps" if moe.get("rms_norm") else "layer_norm_eps"
        return cls(
            model_type=mt, vocab_size=V, hidden_size=H, intermediate_size=I, n_layers=L, n_heads=nh,
            n_kv_heads=nkv, head_dim=hd, max_position_embeddings=dim(d, "max_position_embeddings", 8192),
            norm_eps=_real(d, eps_key, 1e-5), rope_theta=theta,
            logit_scale=_real(d, "logit_scale", 0.0625),
            use_qk_norm=_flag(d, "use_qk_norm", False) and mt == "cohere",
            attention_bias=_flag(d, "attention_bias", False),
            tie_word_embeddings=_flag(d, "tie_word_embeddings", True),  # absent in most configs: tied
            sliding_window=window, layer_types=list(types), **moe,
        )

    def uses_rope(self, i: int) -> bool:
        """Command R: every layer. Cohere2: sliding layers only; its full layers use no positional encoding
        (pitfall 2), except cohere2_moe's dense prefix layers under pattern 1 (force_rope)."""
        return (self.model_type == "cohere" or self.is_sliding(i)
                or bool(self.rope_on_full and self.rope_on_full[i]))

    def is_sparse(self, i: int) -> bool:
        return bool(self.mlp_types) and self.mlp_types[i] == SPARSE

    def is_sliding(self, i: int) -> bool:
        return self.layer_types[i] == SLIDING and self.sliding_window is not None


# config.json is untrusted: every dimension is bounded, far above any real model (Command A: hidden 12288, 64
# layers, 96 heads, vocab 256000, 256K positions) and far below what would make planning or loading allocate
# gigabytes from a 1 kB file (num_hidden_layers = 10**9 once built a billion-entry list).
LIMITS = {
    "hidden_size": 1 << 17, "num_attention_heads": 1 << 12, "num_key_value_heads": 1 << 12,
    "num_hidden_layers": 1 << 12, "intermediate_size": 1 << 20, "vocab_size": 1 << 22, "head_dim": 1 << 12,
    "max_position_embeddings": 1 << 24, "sliding_window": 1 << 24, "sliding_window_pattern": 1 << 12,
    "num_experts": 1 << 12, "num_experts_per_tok": 1 << 12, "num_shared_experts": 1 << 8,
    "first_k_dense_replace": 1 << 12, "prefix_dense_intermediate_size": 1 << 20,
    "prefix_dense_sliding_window_pattern": 1 << 12,
}


def dim(d: dict, key: str, default: int = 0, lo: int = 1) -> int:
    """An integer field from `lo` (default 1) to its LIMITS bound (4096.0 is accepted, as JSON writers produce)."""
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise ValueError(f"{key} must be an integer, not {str(v)[:40]!r}")
    v = int(v)
    if not lo <= v <= LIMITS[key]:
        raise ValueError(f"{key} = {v} is out of range ({lo} to {LIMITS[key]})")
    return v


def _real(d: dict, key: str, default: float) -> float:
    v = d.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{key} must be a finite number, not {str(v)[:40]!r}")
    return float(v)


def _flag(d: dict, key: str, default: bool) -> bool:
    v = d.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):  # bool("false") is True: refuse rather than guess
        raise ValueError(f"{key} must be true or false, not {str(v)[:40]!r}")
    return v


def _moe(d: dict, L: int) -> tuple[dict, int, int]:
    """cohere2_moe's fields (Cohere2MoeConfig's names and defaults), the dense prefix length and its pattern."""
    E = dim(d, "num_experts", 8)
    k = dim(d, "num_experts_per_tok", 2)
    if k > E:
        raise ValueError(f"num_experts_per_tok ({k}) is more than num_experts ({E})")
    first_k = dim(d, "first_k_dense_replace", 0, lo=0)
    if first_k > L:
        raise ValueError(f"first_k_dense_replace ({first_k}) is more than num_hidden_layers ({L})")
    types = d.get("mlp_layer_types") or [DENSE if i < first_k else SPARSE for i in range(L)]
    if not isinstance(types, list) or len(types) != L or any(t not in (DENSE, SPARSE) for t in types):
        raise ValueError("mlp_layer_types must name 'dense' or 'sparse' for every layer")
    choice = {"shared_expert_combination_strategy": ("average", "sum"), "expert_selection_fn": ("softmax", "sigmoid")}
    for key, allowed in choice.items():
        if d.get(key, allowed[0]) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}")
    rms = d.get("rms_norm_eps") is not None
    fields = dict(
        mlp_types=list(types), n_experts=E, n_experts_per_tok=k,
        n_shared_experts=dim(d, "num_shared_experts", 0, lo=0),
        shared_combine=d.get("shared_expert_combination_strategy", "average"),
        router_fn=d.get("expert_selection_fn", "softmax"), norm_topk_prob=_flag(d, "norm_topk_prob", True),
        dense_intermediate_size=dim(d, "prefix_dense_intermediate_size", 1) if DENSE in types else 0,
        rms_norm=rms,
    )
    if DENSE in types and d.get("prefix_dense_intermediate_size") is None:
        raise ValueError("config.json has dense MLP layers but no prefix_dense_intermediate_size")
    return fields, first_k, dim(d, "prefix_dense_sliding_window_pattern", 1)


def read_json_object(path: Path, max_bytes: int) -> dict:
    """A checkpoint's (or the store's) small JSON file as a dict: the one bounded reader. FileNotFoundError when it
    is absent, OSError when unreadable, ValueError (saying why, as "is ...") when it is over `max_bytes`, not JSON,
    or not an object, or not a regular file (a FIFO would block forever, /dev/zero never ends)."""
    try:
        data = read_bounded(path, max_bytes, "JSON file")
    except NotARegularFile:
        raise ValueError("is not a regular file (a FIFO, a device or a folder)") from None
    except TooBig:
        raise ValueError(f"is over {max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"is over {max_bytes} bytes") \
            from None
    raw = parse_json(data)
    if not isinstance(raw, dict):
        raise ValueError("is not a JSON object")
    return raw


def read_config_json(folder: Path) -> dict:
    """The folder's config.json as a dict; CheckpointError when it is missing, too big, not JSON or not an object."""
    path = Path(folder) / "config.json"
    try:
        return read_json_object(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a checkpoint folder (no config.json): give the folder that holds a "
                              f"model's config.json and weights, or a name `cohere models` lists") from None
    except OSError as e:
        raise CheckpointError(f"{path} is unreadable ({e.strerror or e}): re-download the checkpoint") from None
    except ValueError as e:
        raise CheckpointError(f"{path} {e}: re-download the checkpoint") from None


def read_config(folder: Path) -> tuple[dict, ModelConfig]:
    """config.json as read, and parsed into what the model runs; CheckpointError on anything we cannot run."""
    raw = read_config_json(folder)
    try:
        return raw, ModelConfig.from_hf(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{Path(folder) / 'config.json'}: {e}") from None
