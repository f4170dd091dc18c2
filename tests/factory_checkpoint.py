"""Small random Cohere / Cohere2 checkpoints, written by transformers itself (the reference we test against).

`make_checkpoint` returns the folder; `reference_model` loads it back with transformers in float32."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TRANSFORMERS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_checkpoint(
    path: Path,
    *,
    model_type: str = "cohere",
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = 2,
    intermediate: int = 160,
    vocab: int | None = None,
    extra_rows: int = 0,
    qk_norm: bool = False,
    sliding_window: int | None = None,
    sliding_window_pattern: int = 4,
    max_position_embeddings: int = 512,
    logit_scale: float = 0.5,
    rope_theta: float = 10000.0,
    dtype: str = "float32",
    spelling: str = "current",
    max_shard_size: str | None = None,
    seed: int = 0,
    init_std: float = 0.08,
    tokenizer: bool = True,
    templates: str | None = "command-r",
    moe: dict | None = None,
    vision: bool = False,
) -> Path:
    """A random checkpoint folder: config.json + safetensors (+ tokenizer files).

    spelling="current" keeps what transformers writes (`rope_parameters`, `dtype`, `layer_types`);
    spelling="released" rewrites config.json the way the released Cohere checkpoints spell it (`rope_theta`,
    `torch_dtype`, `sliding_window_pattern`, no `tie_word_embeddings`, no `layer_types`/`head_dim`).
    `extra_rows` makes the embedding larger than the tokenizer, as in the real models (256000 rows, 255029 tokens).
    init_std is larger than transformers' 0.02 so that random models have decisive argmaxes (stable greedy tests).
    model_type="cohere2_moe" takes Cohere2MoeConfig's own fields in `moe` (num_experts, first_k_dense_replace, ...);
    vision=True wraps the text model in a cohere2_vision checkpoint (a tiny SigLIP tower and projector beside it).
    """
    from transformers import (Cohere2Config, Cohere2ForCausalLM, Cohere2MoeConfig, Cohere2MoeForCausalLM,
                              CohereConfig, CohereForCausalLM)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok_vocab = None
    if tokenizer:
        from factory_tokenizer import make_tokenizer

        make_tokenizer(path, templates=templates)
        tok_vocab = json.loads((path / "tokenizer.json").read_text())
        tok_vocab = len(tok_vocab["model"]["vocab"]) + sum(
            1 for t in tok_vocab["added_tokens"] if t["content"] not in tok_vocab["model"]["vocab"]
        )
    V = (vocab or tok_vocab or 512) + extra_rows
    common = dict(
        vocab_size=V, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=max_position_embeddings,
        logit_scale=logit_scale, initializer_range=init_std, bos_token_id=5, eos_token_id=255001 if V > 255001 else 6,
        pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    torch.manual_seed(seed)
    if model_type == "cohere":
        cfg = CohereConfig(use_qk_norm=qk_norm, **common)
        model = CohereForCausalLM(cfg)
    elif model_type == "cohere2_moe":
        cfg = Cohere2MoeConfig(sliding_window=sliding_window or 4096, sliding_window_pattern=sliding_window_pattern,
                               **{**common, **(moe or {})})
        model = Cohere2MoeForCausalLM(cfg)
    else:
        cfg = Cohere2Config(
            sliding_window=sliding_window or 4096,
            layer_types=[
                "sliding_attention" if (i + 1) % sliding_window_pattern else "full_attention" for i in range(layers)
            ],
            **common,
        )
        model = Cohere2ForCausalLM(cfg)
    with torch.no_grad():  # transformers initialises LayerNorm weights to 1: randomise so the norms are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    if vision:
        model = _vision_wrapper(model, seed)
    model = model.to(TRANSFORMERS_DTYPES[dtype])
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kw)
    if spelling == "released":
        _respell_released(path / "config.json", sliding_window_pattern)
    return path


def _vision_wrapper(text_model, seed: int):
    """Cohere2VisionForConditionalGeneration around `text_model` (its weights as they are), with a tiny tower."""
    from transformers import Cohere2VisionConfig, Cohere2VisionForConditionalGeneration

    tc = text_model.config
    cfg = Cohere2VisionConfig(
        text_config=tc.to_dict(), tie_word_embeddings=tc.tie_word_embeddings, alignment_intermediate_size=64,
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        image_token_id=min(tc.vocab_size - 1, 255036))
    torch.manual_seed(seed + 1)
    wrapped = Cohere2VisionForConditionalGeneration(cfg)
    wrapped.model.language_model.load_state_dict(text_model.model.state_dict())
    if not tc.tie_word_embeddings:
        wrapped.lm_head.load_state_dict(text_model.lm_head.state_dict())
    return wrapped


def _respell_released(config_path: Path, pattern: int) -> None:
    c = json.loads(config_path.read_text())
    rope = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = rope.get("rope_theta", 10000.0)
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    c.pop("tie_word_embeddings", None)
    if c["model_type"] == "cohere2":
        c.pop("layer_types", None)
        c.pop("head_dim", None)
        c["sliding_window_pattern"] = pattern
        c["order_of_interleaved_layers"] = "local_attn_first"
        c["position_embedding_type"] = "rope_gptj"
    config_path.write_text(json.dumps(c, indent=2))


def reference_model(path: Path, dtype=torch.float32):
    """The transformers model for a checkpoint folder, eager attention, in `dtype`."""
    from transformers import AutoModelForCausalLM, Cohere2VisionForConditionalGeneration

    wrapped = json.loads((Path(path) / "config.json").read_text())["model_type"] == "cohere2_vision"
    cls = Cohere2VisionForConditionalGeneration if wrapped else AutoModelForCausalLM
    m = cls.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return m.eval()


def make_endless_checkpoint(path: Path, **kw) -> Path:
    """A model that never says a stop token (their embedding rows are zero, so their logits are 0 while greedy
    picks a positive one): answers run to --max-tokens, long enough to interrupt (tests/test_repl.py,
    tests/test_remote.py)."""
    from safetensors.torch import load_file, save_file

    from cohere_cli.engine.tokenizer import Tokenizer

    d = make_checkpoint(path, **kw)
    f = d / "model.safetensors"
    sd = load_file(f)
    for t in Tokenizer.from_dir(d).stop_ids:
        sd["model.embed_tokens.weight"][t] = 0
    save_file(sd, f, metadata={"format": "pt"})
    return d
