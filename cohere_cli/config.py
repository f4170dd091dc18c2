"""config.json: the one reader and the one parser, without torch (the store, `cohere models`, bench planning and
--endpoint read it too). A checkpoint's files are untrusted: the file is size-bounded, must be a JSON object, and
every failure is one CheckpointError line that says what to do. Reference: ../shared/cohere-spec.md, section 1."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cohere_cli.errors import CheckpointError

MAX_CONFIG_BYTES = 1 << 20  # real ones are ~1 kB; anything this big is not a config

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass
class ModelConfig:
    model_type: str  # "cohere" or "cohere2"
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

    @classmethod
    def from_hf(cls, d: dict) -> "ModelConfig":
        """Parse a config.json dict, in either spelling: released checkpoints (`rope_theta`, `torch_dtype`,
        `sliding_window_pattern`) or current transformers (`rope_parameters`, `dtype`, `layer_types`).
        Raises ValueError (with the offending key) on anything we cannot run."""
        mt = d.get("model_type")
        if mt not in ("cohere", "cohere2"):
            raise ValueError(f"model_type {mt!r} is not a Cohere architecture (expected 'cohere' or 'cohere2')")
        try:
            H, nh, L = int(d["hidden_size"]), int(d["num_attention_heads"]), int(d["num_hidden_layers"])
            I, V = int(d["intermediate_size"]), int(d["vocab_size"])
        except KeyError as e:
            raise ValueError(f"config.json lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"a dimension is not an integer ({e})") from None
        if min(H, nh, L, I, V) <= 0:
            raise ValueError("hidden_size, num_attention_heads, num_hidden_layers, intermediate_size and vocab_size "
                             "must be positive")
        nkv = int(d.get("num_key_value_heads") or nh)
        # Cohere2Config forces head_dim = H // nh whatever config.json says (all releases: 128).
        hd = H // nh if mt == "cohere2" else int(d.get("head_dim") or H // nh)
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError("rope_parameters / rope_scaling must be an object")
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", None):
            raise ValueError(f"rope type {rtype!r} is not supported (Cohere releases use plain RoPE)")
        theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        window, types = None, [FULL] * L
        if mt == "cohere2":
            window = d.get("sliding_window", 4096)
            if d.get("layer_types"):
                types = list(d["layer_types"])
            else:  # released configs: layer i is sliding unless (i+1) is a multiple of the pattern (default 4)
                pat = int(d.get("sliding_window_pattern", 4))
                types = [SLIDING if (i + 1) % pat else FULL for i in range(L)]
            if len(types) != L or set(types) - {FULL, SLIDING}:
                raise ValueError("layer_types must name 'full_attention' or 'sliding_attention' for every layer")
        return cls(
            model_type=mt, vocab_size=V, hidden_size=H, intermediate_size=I, n_layers=L, n_heads=nh,
            n_kv_heads=nkv, head_dim=hd, max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
            norm_eps=float(d.get("layer_norm_eps", 1e-5)), rope_theta=theta,
            logit_scale=float(d.get("logit_scale", 0.0625)),
            use_qk_norm=bool(d.get("use_qk_norm", False)) and mt == "cohere",
            attention_bias=bool(d.get("attention_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),  # absent in most configs: tied
            sliding_window=int(window) if window else None, layer_types=types,
        )

    def is_sliding(self, i: int) -> bool:
        return self.layer_types[i] == SLIDING and self.sliding_window is not None


def read_json_object(path: Path, max_bytes: int) -> dict:
    """A checkpoint's (or the store's) small JSON file as a dict: the one bounded reader. FileNotFoundError when it
    is absent, OSError when unreadable, ValueError (saying why, as "is ...") when it is over `max_bytes`, not JSON,
    or not an object."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"is over {max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"is over {max_bytes} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError("is not a JSON object")
    return raw


def read_config_json(folder: Path) -> dict:
    """The folder's config.json as a dict; CheckpointError when it is missing, too big, not JSON or not an object."""
    path = Path(folder) / "config.json"
    try:
        return read_json_object(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a checkpoint: it has no config.json") from None
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
