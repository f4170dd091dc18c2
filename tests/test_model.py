"""The model core against transformers' CohereForCausalLM / Cohere2ForCausalLM on small random checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from cohere_cli.weights.checkpoint import load_model
from cohere_cli.errors import CheckpointError
from cohere_cli.engine.generate import prefill
from cohere_cli.model import Block, KVCache, ModelConfig
from factory_checkpoint import make_checkpoint, reference_model

VOCAB = 384
# Every architectural variant the family ships, and both ways configs are spelled.
CASES = {
    "cohere-gqa": dict(model_type="cohere"),
    "cohere-qknorm": dict(model_type="cohere", qk_norm=True, heads=8, kv_heads=2, hidden=128),
    "cohere-mha": dict(model_type="cohere", kv_heads=None),
    "cohere-released-fp16": dict(model_type="cohere", dtype="float16", spelling="released"),
    "cohere-bf16-sharded": dict(model_type="cohere", dtype="bfloat16", max_shard_size="150KB"),
    "cohere2-window": dict(model_type="cohere2", sliding_window=12, layers=4),
    "cohere2-released-bf16": dict(model_type="cohere2", sliding_window=12, layers=8, spelling="released",
                                  dtype="bfloat16"),
    # cohere2_moe: softmax router, shared experts summed, a dense prefix layer under pattern 1 (full attention WITH
    # RoPE), RMSNorm, head_dim 24 != hidden / heads
    "moe-softmax-sum-rms": dict(model_type="cohere2_moe", sliding_window=12, layers=4, moe=dict(
        num_experts=8, num_experts_per_tok=2, num_shared_experts=1, shared_expert_combination_strategy="sum",
        first_k_dense_replace=1, prefix_dense_intermediate_size=96, rms_norm_eps=1e-6, head_dim=24)),
    # sigmoid router (renormalised), two shared experts averaged, two dense layers under pattern 2 (the full one
    # without RoPE), Cohere LayerNorm, experts' own pattern counted from 0 after the prefix
    "moe-sigmoid-average-ln": dict(model_type="cohere2_moe", sliding_window=12, layers=6, sliding_window_pattern=3,
                                   moe=dict(num_experts=6, num_experts_per_tok=3, num_shared_experts=2,
                                            expert_selection_fn="sigmoid", first_k_dense_replace=2,
                                            prefix_dense_sliding_window_pattern=2, prefix_dense_intermediate_size=64,
                                            head_dim=16)),
    "moe-sigmoid-unnormalised-bf16": dict(model_type="cohere2_moe", sliding_window=12, layers=4, dtype="bfloat16",
                                          moe=dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False,
                                                   expert_selection_fn="sigmoid", head_dim=16)),
    # cohere2_vision wrappers around a dense cohere2 and a cohere2_moe: the text model only, from model.language_model
    "vision-cohere2": dict(model_type="cohere2", sliding_window=12, layers=4, vision=True),
    "vision-moe": dict(model_type="cohere2_moe", sliding_window=12, layers=4, vision=True,
                       moe=dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, rms_norm_eps=1e-6)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def ckpt(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    make_checkpoint(d, tokenizer=False, vocab=VOCAB, **CASES[request.param])
    return d


def test_logits_match_transformers(ckpt):
    ref = reference_model(ckpt)
    loaded = load_model(ckpt, dtype="float32")
    ours = loaded.model
    ids = torch.randint(0, VOCAB, (1, 50), generator=torch.Generator().manual_seed(1))  # > sliding window
    with torch.no_grad():
        r = ref(input_ids=ids).logits
        o = ours(ids)
    if loaded.config.weight_prefix != "model.":
        # transformers' Cohere2VisionForConditionalGeneration drops the text model's logit_scale; vLLM's keeps it
        # (its compute_logits is the language model's), as training did: we keep it. Same argmax, scaled logits.
        assert torch.equal(o.argmax(-1), r.argmax(-1))
        r = r * loaded.config.logit_scale
    assert o.shape == r.shape
    assert (o[:, -1] - r[:, -1]).abs().max().item() < 1e-4
    assert (o - r).abs().max().item() < 1e-4


def test_cached_decode_and_chunked_prefill_equal_full_forward(ckpt):
    model = load_model(ckpt, dtype="float32").model
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids[None])[0]  # (T, V)
        # prefill 17 tokens in chunks of 5, then decode the remaining ones one at a time
        # (slack=2: the sliding layers' ring buffer is smaller than the sequence, so it wraps around)
        cache = KVCache(model.config, 40, torch.float32, slack=2)
        last = prefill(model, ids[:17], cache, 0, chunk=5)
        assert (last - full[16]).abs().max().item() < 1e-4
        for t in range(17, 40):
            step = model(ids[t : t + 1][None], t, cache, last_only=True)[0, -1]
            assert (step - full[t]).abs().max().item() < 1e-4, f"position {t}"
        one_shot = prefill(model, ids, KVCache(model.config, 40, torch.float32), 0, chunk=1000)
        chunked = prefill(model, ids, KVCache(model.config, 40, torch.float32, slack=1), 0, chunk=7)
        assert (one_shot - chunked).abs().max().item() < 1e-4


def test_rewound_cache_equals_fresh_prefill(ckpt):
    """A chat rewinds the cache to the longest common prefix and continues on a different branch: the stale
    branch's keys (still in the ring or past the new end) must never be attended to."""
    model = load_model(ckpt, dtype="float32").model
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, VOCAB, (36,), generator=g), torch.randint(0, VOCAB, (10,), generator=g)
    with torch.no_grad():
        cache = KVCache(model.config, 64, torch.float32, slack=6)
        prefill(model, a, cache, 0, chunk=8)
        assert cache.can_rewind(31, 36)
        branch = torch.cat((a[:31], b))  # keep 31 tokens, continue with others
        got = prefill(model, b[:6], cache, 31, chunk=4)
        for t in range(37, 41):  # then decode on the new branch
            got = model(branch[t : t + 1][None], t, cache, last_only=True)[0, -1]
        want = model(branch[None, :41])[0, -1]
        assert (got - want).abs().max().item() < 1e-4


def test_sliding_window_ring_buffer_is_bounded():
    cfg = ModelConfig.from_hf({
        "model_type": "cohere2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 8, "intermediate_size": 128, "vocab_size": 100, "sliding_window": 16,
    })
    assert [cfg.is_sliding(i) for i in range(8)] == [True, True, True, False] * 2
    cache = KVCache(cfg, 1000, torch.float32, slack=4)
    lengths = [k.shape[2] for k, _, _ in cache.layers]
    assert lengths == [20, 20, 20, 1000] * 2
    assert cache.can_rewind(996, 1000) and not cache.can_rewind(990, 1000)


def test_both_config_spellings_parse_the_same():
    current = {
        "model_type": "cohere2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 4, "intermediate_size": 128, "vocab_size": 100, "sliding_window": 16,
        "rope_parameters": {"rope_type": "default", "rope_theta": 50000.0}, "dtype": "bfloat16", "head_dim": 16,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"], "tie_word_embeddings": True,
        "logit_scale": 0.25,
    }
    released = {k: v for k, v in current.items() if k not in ("rope_parameters", "dtype", "layer_types",
                                                                 "tie_word_embeddings", "head_dim")}
    released.update(rope_theta=50000, torch_dtype="bfloat16", sliding_window_pattern=4)
    assert ModelConfig.from_hf(current) == ModelConfig.from_hf(released)


def test_embedding_larger_than_tokenizer_loads(tmp_path):
    make_checkpoint(tmp_path, tokenizer=False, vocab=300, extra_rows=37)
    loaded = load_model(tmp_path, dtype="float32")
    assert loaded.model.model.embed_tokens.weight.shape[0] == 337


def test_loads_into_requested_dtype(tmp_path):
    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype="float16")
    m = load_model(tmp_path, dtype="bfloat16").model
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert m.lm_head.weight is m.model.embed_tokens.weight  # tied, not copied


# ---- bad checkpoints ------------------------------------------------------------------------------------------------
def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_unknown_model_type(tmp_path):
    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB)
    c = json.loads((tmp_path / "config.json").read_text())
    c["model_type"] = "llama"
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="'llama' is not a Cohere architecture"):
        load_model(tmp_path)


def test_corrupt_safetensors(tmp_path):
    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated download
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)


def test_missing_and_unexpected_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB)
    f = tmp_path / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_model(tmp_path)
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(160, 64)
    sd["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.1.mlp.extra.weight'"):
        load_model(tmp_path)


def test_shape_mismatch(tmp_path):
    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB)
    c = json.loads((tmp_path / "config.json").read_text())
    c["intermediate_size"] = 200
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match="config.json implies"):
        load_model(tmp_path)


# ---- the decode layout ----------------------------------------------------------------------------------------------
def untie(folder, seed: int = 0) -> None:
    """Give a checkpoint a head of its own (Command-R releases tie it; other exports may not)."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((folder / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(cfg))
    (f,) = sorted(folder.glob("*.safetensors"))
    sd = load_file(f)
    emb = sd["model.embed_tokens.weight"]
    sd["lm_head.weight"] = (torch.randn(emb.shape, generator=torch.Generator().manual_seed(seed)) * 0.05).to(emb.dtype)
    save_file(sd, f, metadata={"format": "pt"})


def assert_same_logits(fast, plain, dtype: str) -> None:
    """The same logits for a 20-token prompt, and for 8 cached decode steps after a 12-token prefill."""
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(3))
    tol = 1e-5 if dtype == "float32" else 2e-2
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids), plain(ids), atol=tol, rtol=tol)
        caches = [KVCache(m.config, 32, getattr(torch, dtype)) for m in (fast, plain)]
        for m, c in zip((fast, plain), caches):
            prefill(m, ids[0, :12], c)
        for t in range(12, 20):
            a, b = (m(ids[:, t : t + 1], t, c, last_only=True) for m, c in zip((fast, plain), caches))
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tied", [True, False])
def test_decode_layout_computes_what_the_checkpoint_layout_does(tmp_path, dtype, tied):
    """load_model's default layout (q/k/v and gate/up fused; on CPU every float linear packed for oneDNN) against
    the checkpoint's own modules (inference=False): the same logits for a prompt and for cached decode steps."""
    from cohere_cli.model import Linear
    from cohere_cli.weights import layout
    from cohere_cli.weights.coded import CodedLinear

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype="bfloat16")
    if not tied:
        untie(tmp_path)
    fast = load_model(tmp_path, dtype=dtype).model
    plain = load_model(tmp_path, dtype=dtype, inference=False).model
    block = fast.model.layers[0]
    assert isinstance(block.in_proj, Linear) and block.in_proj.out_features == sum(p.out_features for p in layout.inputs(block))
    assert type(plain.model.layers[0]) is Block and not hasattr(plain.model.layers[0], "in_proj")
    packs = torch.backends.mkldnn.is_available() and (dtype == "float32" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    def packed(lin):  # packed for oneDNN, or (bf16, where the CPU has the kernel) coded in 12 bits from that
        return type(lin) is CodedLinear or lin.weight.is_mkldnn

    if packs:  # the packed fused matrix is the only copy: the projections' views of the plain one are gone
        assert packed(block.in_proj) and packed(block.mlp.down_proj)
        assert block.self_attn.q_proj.weight is None
    # a tied head is packed from the embedding when the lookups can read the checkpoint file instead (stored in
    # the model's dtype: no second copy); otherwise it stays the embedding matrix
    head_packed = packs and (not tied or dtype == "bfloat16")
    assert packed(fast.lm_head) == head_packed
    assert (fast.lm_head.weight is fast.model.embed_tokens.weight) == (tied and not head_packed)
    assert torch.equal(fast.model.embed_tokens.weight, plain.model.embed_tokens.weight)
    assert_same_logits(fast, plain, dtype)


def test_mapped_tensor_reads_the_checkpoint_file(tmp_path):
    """checkpoint.mapped_tensor: the stored bytes as a tensor, found in whichever shard holds them; None where the
    dtype differs or the key is absent (the caller then keeps its own copy)."""
    from safetensors.torch import load_file

    from cohere_cli.weights.checkpoint import mapped_tensor, weight_files

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype="bfloat16", max_shard_size="150KB")
    files = weight_files(tmp_path)
    assert len(files) > 1
    stored = {k: v for f in files for k, v in load_file(f).items()}
    for key in ("model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight", "model.norm.weight"):
        t = mapped_tensor(files, key, torch.bfloat16)
        assert t is not None and torch.equal(t, stored[key]), key
    assert mapped_tensor(files, "model.embed_tokens.weight", torch.float32) is None
    assert mapped_tensor(files, "lm_head.weight", torch.bfloat16) is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_moe_decode_layout_computes_what_the_checkpoint_layout_does(tmp_path, dtype):
    """A cohere2_moe checkpoint in the decode layout: q/k/v fused and each expert's gate/up fused (the router picks
    the MLPs after the norm, so the block's five projections cannot be one matmul), packed on CPU; the same logits
    as the checkpoint's modules for a prompt and for cached decode steps. The dense prefix layer fuses whole."""
    from cohere_cli.model import SparseMoE
    from cohere_cli.weights import layout

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype="bfloat16", model_type="cohere2_moe",
                    sliding_window=8, moe=dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                                               first_k_dense_replace=1, prefix_dense_intermediate_size=96,
                                               rms_norm_eps=1e-6))
    fast = load_model(tmp_path, dtype=dtype).model
    plain = load_model(tmp_path, dtype=dtype, inference=False).model
    dense, sparse = fast.model.layers[0], fast.model.layers[1]
    assert isinstance(dense, layout.FusedBlock) and isinstance(sparse.mlp, SparseMoE)
    assert isinstance(sparse.self_attn, layout.FusedAttention)
    assert all(isinstance(e, layout.FusedMLP) for e in layout.mlps(sparse))
    assert isinstance(sparse.mlp, layout.BucketedMoE)  # experts' rows padded to few shapes (oneDNN's cache)
    assert [layout.bucket(n) for n in (1, 4, 5, 7, 9, 13, 100, 512)] == [1, 4, 6, 8, 12, 16, 128, 512]
    assert_same_logits(fast, plain, dtype)


def test_vision_wrapper_never_reads_the_vision_tower(tmp_path, monkeypatch):
    """A cohere2_vision checkpoint's tower and projector stay on disk: load_model reads the text model's tensors
    only (each read into memory of its own: what is never asked for is never resident)."""
    from cohere_cli.weights import safetensors

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, model_type="cohere2", sliding_window=8, vision=True)
    asked: list[str] = []
    for name in ("get_tensor", "mapped"):
        real = getattr(safetensors.Reader, name)
        monkeypatch.setattr(safetensors.Reader, name,
                            lambda self, key, real=real: asked.append(key) or real(self, key))
    loaded = load_model(tmp_path, dtype="float32", inference=False)
    assert asked and all(k.startswith("model.language_model.") for k in asked), asked
    assert not any("vision" in n or "projector" in n for n, _ in loaded.model.named_parameters())
