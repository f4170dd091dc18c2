"""bitsandbytes quantization (cohere_cli/weights/quant.py, weights/quantize.py, bench/quality.py) against bitsandbytes itself and against
transformers' bitsandbytes integration, on small random checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cohere_cli.weights import qlinear
from cohere_cli.weights import quant
from cohere_cli.weights import quantize
from cohere_cli.weights.checkpoint import load_model
from cohere_cli.errors import CheckpointError, QuantizeError
from cohere_cli.engine.generate import prefill
from cohere_cli.model import KVCache
from factory_checkpoint import make_checkpoint

bnbF = qlinear.bnb().functional
VOCAB = 384
SPECS = {
    "nf4": quant.QuantSpec(bits=4),
    "nf4-nodq": quant.QuantSpec(bits=4, double_quant=False),
    "fp4-b128": quant.QuantSpec(bits=4, quant_type="fp4", blocksize=128),
    "int8": quant.QuantSpec(bits=8),
}


def stored(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def one_shot_4bit(w, spec):
    """What bitsandbytes' own quantize_4bit writes for `w`: {suffix: tensor}."""
    q, st = bnbF.quantize_4bit(w, blocksize=spec.blocksize, compress_statistics=spec.double_quant,
                               quant_type=spec.quant_type)
    return {"weight": q, **{f"weight.{k}": v for k, v in st.as_dict(packed=True).items()}}, (q, st)


def assert_same_serialization(ours: dict, ref: dict):
    assert set(ours) == set(ref)
    for k, v in ref.items():
        if ".quant_state." in k:  # the JSON of the non-tensor state: compare what it says
            assert quant.read_quant_state_json(ours[k]) == quant.read_quant_state_json(v), k
        else:
            assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
            assert torch.equal(ours[k], v), k


# ---- one weight -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["nf4", "nf4-nodq", "fp4-b128"])
@pytest.mark.parametrize("shape,dtype", [((256, 192), torch.bfloat16), ((96, 320), torch.float16),
                                         ((130, 64), torch.float32)])
def test_chunked_4bit_equals_bnb_one_shot(spec, shape, dtype):
    spec = SPECS[spec]
    w = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)
    step = quant.row_chunk(shape, spec.blocksize, target_elems=shape[1] * 7)  # several chunks, aligned to blocks
    assert step < shape[0]
    ours = quant.quantize_weight(w, spec, rows=step)
    ref, _ = one_shot_4bit(w, spec)
    assert_same_serialization(ours, ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_chunked_int8_equals_bnb_int8params(dtype):
    w = (torch.randn(200, 96, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype)
    ours = quant.quantize_weight(w, SPECS["int8"], rows=64)
    p = qlinear.bnb().nn.Int8Params(w.clone(), has_fp16_weights=False, requires_grad=False).to("cpu")  # bnb's path
    assert torch.equal(ours["weight"], p.data) and ours["weight"].dtype == torch.int8
    assert torch.equal(ours["SCB"], p.SCB)
    assert ours["weight_format"].item() == 0


def test_cpu_kernel_layout_is_bitsandbytes_layout():
    convert = getattr(bnbF, "_convert_weight_packed_for_cpu", None)
    if convert is None:
        pytest.skip("this bitsandbytes has no CPU repacking")
    import copy

    for n, k in ((4096, 512), (96, 256), (32, 64)):
        w = torch.randn(n, k).bfloat16()
        q, st = bnbF.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        packed, _ = convert(q.clone(), copy.deepcopy(st))
        assert torch.equal(qlinear.pack_for_cpu(q, n, k), packed)
        assert torch.equal(qlinear.unpack_from_cpu(packed), q)


@pytest.mark.parametrize("spec", ["nf4", "fp4-b128", "int8"])
def test_forward_paths(spec):
    """Kernel, weight-only (int8) and dequantize+GEMM give the float result up to rounding, the dequantize path is
    exactly F.linear with the dequantized weight, weight-only int8 is that product up to bf16 rounding of the
    scales and the output, and the default picks one of them per row count."""
    spec = SPECS[spec]
    n, k = 256, 512
    w = (torch.randn(n, k, generator=torch.Generator().manual_seed(2)) * 0.05).bfloat16()
    tensors = quant.quantize_weight(w, spec)
    cls = qlinear.QuantLinear4bit if spec.bits == 4 else qlinear.QuantLinear8bit
    mod = cls.from_stored(tensors, k, n)
    default = mod.kernel_max_rows
    assert default == qlinear.kernel_max_rows(spec.bits)
    woq = getattr(mod, "woq_max_rows", 0)
    assert woq == (qlinear.WOQ_MAX_ROWS if spec.bits == 8 else 0)
    deq = mod.dequantize(torch.float32)
    paths = ["kernel", "dequantize", None] + (["woq"] if spec.bits == 8 else [])
    for rows in (1, 3, 16, 64):
        x = torch.randn(2, rows, k, generator=torch.Generator().manual_seed(rows)).bfloat16()
        outs = {}
        for path in paths:
            qlinear.force_path(mod, path)
            with torch.no_grad():
                outs[path] = y = mod(x)
            ref = torch.nn.functional.linear(x.float(), deq)
            assert y.shape == (2, rows, n) and y.dtype == torch.bfloat16
            rel = ((y.float() - ref).norm() / ref.norm()).item()
            assert rel < (0.005 if path == "woq" else 0.02), (path, rows, rel)  # woq: no activation quantization
        assert torch.equal(outs["dequantize"], torch.nn.functional.linear(x, mod.dequantize(torch.bfloat16)))
        expect = "woq" if 2 * rows <= woq else "kernel" if 2 * rows <= default else "dequantize"
        assert torch.equal(outs[None], outs[expect])


@pytest.mark.skipif(not qlinear.cpu_has_int8_mm(), reason="torch._int_mm has no AVX-512 kernel on this CPU")
@pytest.mark.parametrize("dtype,native", [(torch.bfloat16, False), (torch.float16, False), (torch.float32, False),
                                          (torch.bfloat16, True)])  # the native kernel takes bf16 rows
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [700, 704])  # neither a multiple of the kernel's 64 bytes; only 704 of 16 (woq)
def test_int8_one_row_is_bitsandbytes_llm_int8(dtype, bias, native, k, monkeypatch):
    """A decode row through QuantLinear8bit is bitsandbytes' LLM.int8() bit for bit (its registered ops:
    int8_vectorwise_quant, then int8_scaled_mm), in torch ops and in the native kernel (bf16 rows); a row with an
    outlier (|x| >= threshold) leaves that path for the weight-only one (no activation quantization at all) where
    torch's weight-only kernel is right (in_features a multiple of 16), else for bitsandbytes' int8 kernel."""
    from cohere_cli.weights import kernels

    if native and kernels.int8_row() is None:
        pytest.skip("the native kernel is built where a C compiler and AVX512-VNNI are: not here")
    if not native:
        monkeypatch.setattr(kernels, "int8_row", lambda: None)
    n = 324
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    mod = qlinear.QuantLinear8bit.from_stored(quant.quantize_weight(w, SPECS["int8"]), k, n, b, threshold=6.0)
    assert mod.row_kernel
    seen = set()
    for i in range(40):
        x = (torch.randn(1, 1, k, generator=g) * (0.2 + i / 20)).to(dtype)  # row maxima from ~0.6 to ~9
        a = x.reshape(1, k)
        with torch.no_grad():
            y = mod(x)
        assert y.shape == (1, 1, n) and y.dtype == dtype
        outlier = a.abs().max().item() >= 6.0
        seen.add(outlier)
        if outlier:
            assert mod._llm_int8_row(a) is None
            qlinear.force_path(mod, "woq" if k % 16 == 0 else "kernel")
            with torch.no_grad():
                assert torch.equal(y, mod(x)) and not y.isnan().any()
            qlinear.force_path(mod, None)
        else:
            ca, sca, _ = torch.ops.bitsandbytes.int8_vectorwise_quant.default(a.clone(), 0.0)
            ref = torch.ops.bitsandbytes.int8_scaled_mm.default(ca, mod.cb, sca, mod.scb, bias=b, dtype=dtype)
            assert torch.equal(y.reshape(1, n), ref)
    assert seen == {False, True}


@pytest.mark.skipif(not qlinear.cpu_has_int8_mm(), reason="torch._int_mm has no AVX-512 kernel on this CPU")
@pytest.mark.parametrize("rows,n,k", [(512, 1000, 256), (129, 37, 64), (9, 16, 700), (300, 5, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_prefill_int8_product_is_bitsandbytes_int8_scaled_mm(rows, n, k, bias, monkeypatch):
    """Several rows (prefill) of LLM.int8(): our slices of torch._int_mm and native dequantization give
    bitsandbytes' int8_scaled_mm bit for bit (row slices of 128 and a partial one, outputs not a multiple of 16,
    a bias, products that overflow bf16 to inf), with the native pass in use where it builds."""
    from cohere_cli.weights import bnb_cpu, kernels

    g = torch.Generator().manual_seed(rows + n)
    ca = torch.randint(-127, 128, (rows, k), dtype=torch.int8, generator=g)
    cb = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    sca = torch.rand(rows, generator=g) * 8
    scb = torch.rand(n, generator=g) * 8
    sca[0] = 3e38  # inf after scaling: rounds like torch
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    want = torch.ops.bitsandbytes.int8_scaled_mm.default(ca, cb, sca, scb, bias=b, dtype=torch.bfloat16)
    real, calls = kernels.int8_dequant(), []
    if real is not None:  # count the rows the native pass converts
        monkeypatch.setattr(kernels, "int8_dequant", lambda: lambda *a: calls.append(a[1]) or real(*a))
    got = bnb_cpu.int8_scaled_mm(ca, cb, sca, scb, b, torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want) and got[0].isinf().any()
    assert real is None or (sum(calls) == rows and max(calls) <= bnb_cpu.INT8_SLICE)  # every row, in slices


def test_bitsandbytes_is_imported_without_fetching_hub_kernels():
    """bitsandbytes' import would ask the Hub for remote kernel code through the `kernels` package (where it is
    installed, as in this test environment): our import of it never lets it, and leaves `kernels` importable."""
    import subprocess
    import sys

    code = ("import sys, importlib.util; from cohere_cli.weights.bnb_cpu import bnb; bnb(); "
            "assert 'bitsandbytes' in sys.modules; print(sorted(m for m in ('kernels', 'huggingface_hub') "
            "if m in sys.modules and sys.modules[m] is not None), sys.modules.get('kernels', 0) is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "False"]


# ---- whole checkpoints ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("parent")
    return make_checkpoint(d, tokenizer=False, vocab=VOCAB, dtype="bfloat16", hidden=128, heads=4, kv_heads=2,
                           intermediate=256, layers=3, max_shard_size="200KB")


@pytest.fixture(scope="module")
def quantized(parent, tmp_path_factory):
    """spec name -> folder quantized by us (several output shards)."""
    out = {}
    for name, spec in SPECS.items():
        d = tmp_path_factory.mktemp(f"q-{name}")
        quantize.quantize_checkpoint(parent, d, spec, max_shard_bytes=150_000)
        out[name] = d
    return out


def test_output_is_sharded_with_index(quantized):
    d = quantized["nf4"]
    index = json.loads((d / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == sorted(p.name for p in d.glob("*.safetensors"))
    for f in files:
        with safe_open(str(d / f), framework="pt") as sf:
            assert sf.metadata() == {"format": "pt"}
            assert {k for k, v in index["weight_map"].items() if v == f} == set(sf.keys())
    total = sum(t.numel() * t.element_size() for t in stored(d).values())
    assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("name", sorted(SPECS))
def test_dequantized_weights_equal_bnb_bit_for_bit(parent, quantized, name):
    spec = SPECS[name]
    ref_sd, ours = stored(parent), stored(quantized[name])
    model = load_model(quantized[name], dtype="bfloat16").model
    mods = qlinear.quantized_modules(model)
    linears = [k[: -len(".weight")] for k in ref_sd if quant.QUANTIZABLE.match(k[: -len(".weight")])]
    assert sorted(mods) == sorted(linears) and len(linears) == 3 * 7
    for mod in linears:
        w = ref_sd[f"{mod}.weight"]
        mine = {k[len(mod) + 1 :]: v for k, v in ours.items() if k.startswith(mod + ".")}
        if spec.bits == 4:
            ref, (q, st) = one_shot_4bit(w, spec)
            assert_same_serialization(mine, ref)
            expect = bnbF.dequantize_4bit(q, st)  # bitsandbytes' own quantize -> dequantize of the parent
            qs = bnbF.QuantState.from_dict({k[len("weight.") :]: v for k, v in mine.items() if k != "weight"},
                                           device=torch.device("cpu"))
            assert torch.equal(bnbF.dequantize_4bit(mine["weight"], qs), expect)
        else:
            cb, scb, _ = bnbF.int8_vectorwise_quant(w.half())
            assert torch.equal(mine["weight"], cb) and torch.equal(mine["SCB"], scb)
            expect = bnbF.int8_vectorwise_dequant(cb, scb).to(w.dtype)
        # the loaded module (repacked for the CPU kernel where there is one) dequantizes to the same bits
        assert torch.equal(mods[mod].dequantize(w.dtype), expect), mod
    # everything else is the parent's tensor, byte for byte
    for k, v in ref_sd.items():
        if not quant.QUANTIZABLE.match(k[: -len(".weight")]):
            assert torch.equal(ours[k], v) and ours[k].dtype == v.dtype, k


def test_config_carries_quantization_config(parent, quantized):
    cfg = json.loads((quantized["nf4"] / "config.json").read_text())
    pcfg = json.loads((parent / "config.json").read_text())
    q = cfg.pop("quantization_config")
    assert cfg.pop(quant.HEAD_KEY) == "int8"  # how the head runs (quant.head_threshold); transformers ignores it
    assert cfg == pcfg
    assert q["quant_method"] == "bitsandbytes" and q["load_in_4bit"] and not q["load_in_8bit"]
    assert q["bnb_4bit_quant_type"] == "nf4" and q["bnb_4bit_use_double_quant"] is True
    q8 = json.loads((quantized["int8"] / "config.json").read_text())["quantization_config"]
    assert q8["load_in_8bit"] and not q8["load_in_4bit"] and q8["llm_int8_skip_modules"] == ["lm_head"]


@pytest.mark.parametrize("name,bnb_kwargs", [
    ("nf4", dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                 bnb_4bit_compute_dtype=torch.bfloat16)),
    ("int8", dict(load_in_8bit=True)),
])
def test_same_tensors_as_transformers_writes(parent, quantized, tmp_path, name, bnb_kwargs):
    """transformers quantizing the parent and saving it writes the very tensors we write; and our loader reads its
    checkpoint to the same model as ours."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    hf = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.bfloat16,
                                              quantization_config=BitsAndBytesConfig(**bnb_kwargs))
    hf.save_pretrained(tmp_path)
    theirs, ours = stored(tmp_path), stored(quantized[name])
    assert_same_serialization(ours, theirs)
    hf_q = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    our_q = json.loads((quantized[name] / "config.json").read_text())["quantization_config"]
    for k in ("quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
              "bnb_4bit_quant_storage", "llm_int8_threshold"):
        assert hf_q[k] == our_q[k], k
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = load_model(tmp_path, dtype="bfloat16").model(ids)
        b = load_model(quantized[name], dtype="bfloat16").model(ids)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["nf4", "int8"])
def test_greedy_tokens_agree_with_transformers_teacher_forced(parent, quantized, name):
    """Our model core on the quantized checkpoint vs transformers loading the same folder with bitsandbytes: the
    next-token argmax agrees on >= 90% of positions, for a whole-sequence forward (on either path) and for cached
    decoding one token at a time (the bitsandbytes kernel path)."""
    from transformers import AutoModelForCausalLM

    folder = quantized[name]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ours = load_model(folder, dtype="bfloat16").model
    # the sequence: transformers' own greedy continuation of a random prompt
    prompt = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        seq = hf.generate(prompt, max_new_tokens=56, do_sample=False, min_new_tokens=56)
        ref = hf(seq).logits[0].argmax(-1)  # (T,)
        fulls = []
        for path in ("dequantize", "kernel", None):
            qlinear.force_path(ours, path)
            fulls.append(ours(seq)[0].argmax(-1))
        T = seq.shape[1]
        cache = KVCache(ours.config, T, torch.bfloat16)
        steps = [prefill(ours, seq[0, :1], cache, 0).argmax()]
        for t in range(1, T):
            steps.append(ours(seq[:, t : t + 1], t, cache, last_only=True)[0, -1].argmax())
        stepwise = torch.stack(steps)
    for full in fulls:
        assert (full == ref).float().mean().item() >= 0.9
    assert (stepwise == ref).float().mean().item() >= 0.9
    # transformers' greedy tokens are its argmaxes: teacher-forced, we predict them too
    assert (stepwise[7:-1] == seq[0, 8:]).float().mean().item() >= 0.9


def test_int8_head_built_at_load(parent, quantized, tmp_path):
    """On CPU a quantized checkpoint runs its (stored float, tied) head as LLM.int8(): bitsandbytes' int8 of the
    stored embedding, built at load, with the embedding lookups reading the file; config.json's quant.HEAD_KEY
    "float" (`cohere quantize --head float`) keeps the head as stored. The logits of both stay close."""
    import shutil

    from cohere_cli.model import Linear

    folder = quantized["nf4"]
    as_float = tmp_path / "float-head"
    shutil.copytree(folder, as_float)
    cfg = json.loads((as_float / "config.json").read_text())
    cfg[quant.HEAD_KEY] = "float"
    (as_float / "config.json").write_text(json.dumps(cfg))

    m8, mf = load_model(folder, dtype="bfloat16").model, load_model(as_float, dtype="bfloat16").model
    assert type(m8.lm_head) is qlinear.QuantLinear8bit and isinstance(mf.lm_head, Linear)  # (or RowKernelLinear)
    assert "lm_head" not in qlinear.quantized_modules(m8) and "lm_head" in qlinear.quantized_modules(m8, fused=True)
    emb = stored(folder)["model.embed_tokens.weight"]
    cb, scb, _ = bnbF.int8_vectorwise_quant(emb.half())
    assert torch.equal(m8.lm_head.cb, cb) and torch.equal(m8.lm_head.scb, scb)
    assert getattr(m8.model.embed_tokens.weight, "file_backed", False)
    assert torch.equal(m8.model.embed_tokens.weight, emb)
    assert isinstance(load_model(parent, dtype="bfloat16").model.lm_head, Linear)  # float checkpoints: untouched

    ids = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        full8, fullf = m8(ids)[0], mf(ids)[0]  # (T, V): many rows, bitsandbytes' int8 path
        steps = []
        for m in (m8, mf):  # cached decoding: one row per step, the LLM.int8() row path
            cache = KVCache(m.config, 48, torch.bfloat16)
            prefill(m, ids[0, :40], cache, 0)
            steps.append(torch.cat([m(ids[:, t : t + 1], t, cache, last_only=True)[0] for t in range(40, 48)]))
    for a, b in ((full8, fullf), tuple(steps)):
        rel = ((a - b).norm() / b.norm()).item()
        assert 0 < rel < 0.03, rel
        assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.9


def test_keep_leaves_linears_float_and_transformers_agrees(parent, tmp_path):
    from transformers import AutoModelForCausalLM

    spec = quant.QuantSpec(bits=4, keep=["model.layers.0.*", "*.down_proj"])
    r = quantize.quantize_checkpoint(parent, tmp_path, spec)
    kept = sorted(r.plan.kept)
    assert kept == sorted([f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj",
                                                           "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                                                           "mlp.up_proj", "mlp.down_proj")]
                          + ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"])
    sd = stored(tmp_path)
    for m in kept:
        assert sd[f"{m}.weight"].dtype == torch.bfloat16 and f"{m}.weight.absmax" not in sd
    q = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert q["llm_int8_skip_modules"] == ["lm_head", *r.plan.kept]
    ours = load_model(tmp_path, dtype="bfloat16").model
    assert sorted(qlinear.quantized_modules(ours)) == sorted(r.plan.quantized)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        agree = (hf(ids).logits.argmax(-1) == ours(ids).argmax(-1)).float().mean().item()
    assert agree >= 0.9


def test_refuses_quantized_parent_and_nothing_to_quantize(quantized, parent, tmp_path):
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize.quantize_checkpoint(quantized["nf4"], tmp_path, SPECS["nf4"])
    with pytest.raises(QuantizeError, match="nothing to quantize"):
        quantize.quantize_checkpoint(parent, tmp_path, quant.QuantSpec(bits=4, keep=["*"]))


def test_loader_errors(quantized, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(quantized["nf4"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'gptq' is not supported"):
        load_model(d)
    # the config's bits are read back and must match the tensors (an nf4 folder whose config says int8)
    cfg["quantization_config"].update(quant_method="bitsandbytes", load_in_4bit=False, load_in_8bit=True,
                                      _load_in_4bit=False, _load_in_8bit=True)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json says 8-bit but .* is stored 4-bit"):
        load_model(d)
    cfg["quantization_config"].update(load_in_8bit=False, _load_in_8bit=False)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="says neither load_in_4bit nor load_in_8bit"):
        load_model(d)
    shutil.rmtree(d)
    shutil.copytree(quantized["nf4"], d)
    victim = "model.layers.1.mlp.up_proj.weight.absmax"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    f = d / index["weight_map"][victim]
    sd = load_file(f)
    del sd[victim]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="'model.layers.1.mlp.up_proj' lacks weight.absmax"):
        load_model(d)


# ---- the quality report ---------------------------------------------------------------------------------------------
def test_quality_report_recomputed_independently(tmp_path):
    """The report's numbers, recomputed here with plain full-model forwards of both models."""
    from cohere_cli.bench.quality import eval_text, evaluate
    from cohere_cli.engine.tokenizer import Tokenizer

    p = make_checkpoint(tmp_path / "p", dtype="bfloat16", hidden=128, heads=4, kv_heads=2, intermediate=256,
                        layers=2)
    q = tmp_path / "q"
    q.mkdir()
    quantize.quantize_checkpoint(p, q, SPECS["nf4"])
    report = evaluate(q, p, max_tokens=1500, window=256, dtype="bfloat16")

    tok = Tokenizer.from_dir(q)
    ids = tok.encode(eval_text(), add_bos=False)[:1500]
    body = 255  # windows of 256: BOS + 255 tokens of text, full windows only
    rows = [[tok.bos_id] + ids[j * body : (j + 1) * body] for j in range(len(ids) // body)]
    x = torch.tensor(rows)
    mp, mq = load_model(p, dtype="bfloat16").model, load_model(q, dtype="bfloat16").model
    with torch.no_grad():
        lp = torch.log_softmax(mp(x)[:, :-1].double(), -1)
        lq = torch.log_softmax(mq(x)[:, :-1].double(), -1)
    tgt = x[:, 1:, None]
    ppl_p = math.exp(-lp.gather(-1, tgt).mean().item())
    ppl_q = math.exp(-lq.gather(-1, tgt).mean().item())
    kl = (lp.exp() * (lp - lq)).sum(-1).flatten()
    top1 = (lp.argmax(-1) == lq.argmax(-1)).double().mean().item()

    assert report.tokens == kl.numel() == len(rows) * body and report.windows == len(rows) and report.window == 256
    assert report.parent_perplexity == pytest.approx(ppl_p, rel=1e-3)
    assert report.perplexity == pytest.approx(ppl_q, rel=1e-3)
    assert report.kl_mean == pytest.approx(kl.mean().item(), rel=2e-2, abs=1e-5)
    assert report.kl_p99 == pytest.approx(torch.quantile(kl, 0.99).item(), rel=5e-2, abs=1e-5)
    assert report.top1_agreement == pytest.approx(top1, abs=0.01)
    assert report.kl_mean > 0 and 0.5 < report.top1_agreement < 1.0  # quantization did change something


# ---- fused modules (layout.fuse_rows) --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,kernel_layout", [("nf4", True), ("nf4", False), ("fp4-b128", True), ("int8", True)])
def test_fused_quantized_modules_equal_their_parts(spec, kernel_layout, monkeypatch):
    """cat() of q/k/v-shaped parts computes each part's output side by side, on every path, and leaves the parts
    working on views of its buffers (no second copy). 4-bit in both layouts: the CPU kernel's (AVX512-BF16) and the
    standard one (other CPUs, CUDA)."""
    if kernel_layout and spec != "int8" and not qlinear.cpu_has_bnb_kernel():
        pytest.skip("bitsandbytes' fused 4-bit CPU kernel needs AVX512-BF16")
    if not kernel_layout:
        monkeypatch.setattr(qlinear, "cpu_has_bnb_kernel", lambda: False)
    spec = SPECS[spec]
    k, outs = 256, (128, 64, 64)
    cls = qlinear.QuantLinear4bit if spec.bits == 4 else qlinear.QuantLinear8bit
    parts = []
    for i, n in enumerate(outs):
        w = (torch.randn(n, k, generator=torch.Generator().manual_seed(10 + i)) * 0.05).bfloat16()
        parts.append(cls.from_stored(quant.quantize_weight(w, spec), k, n))
    x = torch.randn(1, 5, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    paths = ["kernel", "dequantize", None] + (["woq"] if spec.bits == 8 else [])
    with torch.no_grad():
        before = {p: [qlinear.force_path(m, p) or m(x) for m in parts] for p in paths}
        fused = cls.cat(parts)
        assert fused.out_features == sum(outs)
        for p in paths:
            qlinear.force_path(fused, p)
            assert torch.equal(fused(x), torch.cat(before[p], dim=-1)), p
            assert all(torch.equal(qlinear.force_path(m, p) or m(x), want) for m, want in zip(parts, before[p])), p
    if spec.bits == 4:
        assert fused.cpu_kernel == kernel_layout
    big = fused.cb if spec.bits == 8 else fused.packed
    for m in parts:
        mine = m.cb if spec.bits == 8 else m.packed
        assert mine.untyped_storage().data_ptr() == big.untyped_storage().data_ptr()


def test_direct_4bit_kernel_call_equals_the_registered_op():
    """gemv_4bit_cpu calls bitsandbytes' C function itself where the registered op would: same bits."""
    if not qlinear.cpu_has_bnb_kernel():
        pytest.skip("bitsandbytes' fused 4-bit CPU kernel needs AVX512-BF16")
    n, k = 96, 320
    w = (torch.randn(n, k, generator=torch.Generator().manual_seed(5)) * 0.05).bfloat16()
    mod = qlinear.QuantLinear4bit.from_stored(quant.quantize_weight(w, SPECS["nf4"]), k, n)
    for rows in (1, 3):
        a = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).bfloat16()
        ours = qlinear.gemv_4bit_cpu(a, mod.packed, mod.absmax_t, mod.code, "nf4", mod.blocksize, n)
        ref = torch.ops.bitsandbytes.gemv_4bit.default(a, mod.packed, [n, k], mod.absmax_t, mod.code, mod.blocksize)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("spec", ["nf4", "fp4-b128"])
def test_4bit_row_kernel_is_as_close_as_bitsandbytes_own(spec):
    """One bf16 row through kernels.gemv_4bit_row (our decode kernel, bitsandbytes' weight layout) lands as close
    to the exact product with bitsandbytes' dequantized weight as bitsandbytes' own fused kernel does, row for
    row, for shapes of several 32-row groups and scale blocks."""
    from cohere_cli.weights import kernels

    fn = kernels.gemv_4bit_row()
    if fn is None or not qlinear.cpu_has_bnb_kernel():
        pytest.skip("the kernel needs a C compiler and AVX512-BF16: not here")
    spec = SPECS[spec]
    for n, k in ((96, 512), (1024, 1280)):
        g = torch.Generator().manual_seed(n)
        w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
        mod = qlinear.QuantLinear4bit.from_stored(quant.quantize_weight(w, spec), k, n)
        exact_w = mod.dequantize(torch.float32)
        for _ in range(3):
            x = torch.randn(1, 1, k, generator=g).bfloat16()
            with torch.no_grad():
                ours = mod(x).view(n).float()  # the module's one-row path: this kernel
            out = torch.empty(n, dtype=torch.bfloat16)
            assert fn(x.data_ptr(), mod.packed.data_ptr(), mod.absmax_t.data_ptr(), mod.code.data_ptr(), n, k,
                      mod.blocksize, out.data_ptr()) == 0
            assert torch.equal(out.float(), ours)
            theirs = qlinear.gemv_4bit_cpu(x.view(1, k), mod.packed, mod.absmax_t, mod.code, spec.quant_type,
                                           mod.blocksize, n).view(n).float()
            exact = exact_w @ x.view(k).float()
            scale = exact.abs().max()
            err_ours, err_theirs = (ours - exact).abs() / scale, (theirs - exact).abs() / scale
            assert err_ours.max() <= 2 * err_theirs.max() + 1e-4, (err_ours.max(), err_theirs.max())
            assert err_ours.mean() <= 1.5 * err_theirs.mean() + 1e-5, (err_ours.mean(), err_theirs.mean())


def test_int8_rows_with_outliers_are_bitsandbytes_mixed_decomposition():
    """Several rows with outlier columns (|x| >= threshold) through QuantLinear8bit's int8 path: bitsandbytes'
    int8_mixed_scaled_mm, up to the float summation order of the padded outlier matmul (5 outlier columns run as
    8), and the matmul's inner size is a power of two."""
    n, k = 256, 512
    g = torch.Generator().manual_seed(9)
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    mod = qlinear.QuantLinear8bit.from_stored(quant.quantize_weight(w, SPECS["int8"]), k, n, threshold=6.0)
    qlinear.force_path(mod, "kernel")
    for rows in (3, 64):
        x = torch.randn(rows, k, generator=g).bfloat16()
        x[0, [3, 50, 51, 200, 511]] = torch.tensor([7.0, -9.0, 6.5, -12.0, 8.0]).bfloat16()  # five outlier columns
        ca, sca, cols = torch.ops.bitsandbytes.int8_vectorwise_quant.default(x.clone(), 6.0)
        assert cols.numel() == 5
        want, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm.default(x.clone(), ca, mod.cb, sca, mod.scb, cols, None)
        sub_a, sub_b = mod._outlier_parts(x, cols)
        assert sub_a.shape == (rows, 8) and sub_b.shape == (8, n) and not sub_a[:, 5:].any()
        with torch.no_grad():
            got = mod(x[None])[0]
        torch.testing.assert_close(got.float(), want.float(), atol=1e-2, rtol=2**-7)
        assert (got != want).float().mean() < 0.02


@pytest.mark.parametrize("spec", ["nf4", "int8"])
def test_bound_native_call_follows_its_tensors(spec):
    """The one-row native call binds raw pointers once (qlinear._bound); it must be rebuilt whenever what it bound
    changes: an in-place edit, a dtype change that swaps .data under the same Parameter, a copy of the module."""
    import copy

    n, k = 64, 128
    g = torch.Generator().manual_seed(11)
    w = (torch.randn(n, k, generator=g) * 0.05).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if spec == "int8" else None
    cls = qlinear.QuantLinear4bit if spec == "nf4" else qlinear.QuantLinear8bit
    mod = cls.from_stored(quant.quantize_weight(w, SPECS[spec]), k, n, b)
    x = (torch.randn(1, 1, k, generator=g) * 0.5).bfloat16()
    with torch.no_grad():
        y = mod(x)
        twin = copy.deepcopy(mod)
        assert "_plan" not in twin.__dict__
        (twin.cb if spec == "int8" else twin.packed).zero_()  # the copy's own weight, zeroed
        assert torch.equal(mod(x), y)  # the original is untouched
        zero_w = twin(x).float() - (0 if b is None else b.float())
        assert zero_w.abs().max() < 1e-2 if spec == "int8" else zero_w.abs().max() > 0  # nf4 code 0 is -1.0
        (mod.cb if spec == "int8" else mod.packed).copy_(twin.cb if spec == "int8" else twin.packed)  # in place
        assert torch.equal(mod(x), twin(x))
        if spec == "int8":
            mod.to(torch.float32)  # bias: same Parameter, new float32 .data; the native call must not reuse it
            torch.testing.assert_close(mod(x).float(), twin.to(torch.float32)(x).float())


def test_int8_weight_stored_off_a_64_byte_boundary_runs_and_matches():
    """A stored int8 weight can sit anywhere in the buffer it came from (safetensors packs tensors back to back):
    torch's weight-only int8 kernel loads it with aligned instructions from 4 rows on and segfaulted on a 64 x 160
    cohere2_moe expert at offset 40. The module keeps an aligned copy; the result is the aligned weight's."""
    from cohere_cli.weights.qlinear import QuantLinear8bit

    g = torch.Generator().manual_seed(0)
    buf = torch.randint(-127, 128, (40 + 64 * 160,), dtype=torch.int8, generator=g)
    cb = buf[40:].view(64, 160)  # data_ptr % 64 == 40 (the buffer itself is aligned)
    assert cb.data_ptr() % 64 == 40
    scb = torch.rand(64, generator=g) + 0.5
    lin, ref = QuantLinear8bit(160, 64, cb, scb), QuantLinear8bit(160, 64, cb.clone(), scb)
    assert lin.cb.data_ptr() % 64 == 0
    x = torch.randn(4, 160, generator=g).bfloat16()
    torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=0)
