"""The native decode ops (cohere_cli/weights/kernels/decode.c) against the model's own torch path: rotary, cache write and
attention of one new token for every shape the family ships and the masks it needs, the LayerNorm, the SwiGLU
activation, and whole models decoding through them."""

from __future__ import annotations

import math

import pytest
import torch

from cohere_cli.weights import kernels, layout, packed
from cohere_cli.weights.checkpoint import load_model
from cohere_cli.engine.generate import prefill
from cohere_cli.model import Attention, KVCache, ModelConfig, layer_norm, rope_cos_sin
from factory_checkpoint import make_checkpoint

ops = kernels.decode_ops()
needs_kernel = pytest.mark.skipif(ops is None, reason="the kernels need a C compiler and AVX512-BF16: not here")
attend = ops.attend if ops is not None else None


def _config(nh, nkv, hd, model_type="cohere2", window=None):
    return ModelConfig(model_type=model_type, vocab_size=8, hidden_size=nh * hd, intermediate_size=8, n_layers=1,
                       n_heads=nh, n_kv_heads=nkv, head_dim=hd, sliding_window=window,
                       layer_types=["sliding_attention" if window else "full_attention"])


@needs_kernel
@pytest.mark.parametrize("nh,nkv,hd,keys,window,ring,rope", [
    (16, 4, 64, 550, None, False, True),  # the benchmark model's layer, cohere (rotary everywhere)
    (32, 8, 128, 700, None, False, False),  # R7B / Command A global layer: no rotary
    (96, 8, 128, 290, None, False, True),  # R+: 12 query heads per kv head
    (4, 4, 16, 33, None, False, True),  # no grouping, a head dim under the kernel's 32-wide dot
    (12, 1, 48, 300, 100, False, True),  # a sliding layer without a ring: window mask by slot index
    (32, 8, 128, 700, 600, True, True),  # a sliding ring that has wrapped, one slot never written
    (16, 4, 64, 1, None, False, True),  # the first token
    (16, 4, 64, 4000, None, False, True),  # long enough for many key chunks per thread
])
def test_decode_attention_kernel_matches_torch(nh, nkv, hd, keys, window, ring, rope):
    g = torch.Generator().manual_seed(keys)
    cfg = _config(nh, nkv, hd, "cohere" if rope and not window else "cohere2", window)
    n = keys if ring else keys + 7  # cache slots
    qpos = 5000 if ring else keys - 1
    slot = qpos % n if ring else qpos
    qkv = torch.randn(1, 1, (nh + 2 * nkv) * hd, generator=g).bfloat16()
    kc0 = torch.randn(1, nkv, n, hd, generator=g).bfloat16()
    vc0 = torch.randn(1, nkv, n, hd, generator=g).bfloat16()
    slot_pos0 = None
    if ring:  # slot j holds the latest position p <= qpos with p % n == j; slot 3 never written
        slot_pos0 = torch.tensor([qpos - ((qpos - j) % n) for j in range(n)])
        slot_pos0[3] = KVCache.EMPTY
    a = Attention(cfg, 0)
    a.use_rope = rope
    pos = torch.tensor([qpos])
    cis = rope_cos_sin(pos, hd, 10000.0, torch.bfloat16)
    a.o_proj = torch.nn.Identity()  # attend's output is then the attention itself, (1, 1, nh*hd)
    caches = [(kc0.clone(), vc0.clone(), None if slot_pos0 is None else slot_pos0.clone()) for _ in range(2)]
    with torch.inference_mode():
        want = a.attend(*layout.split_heads(a, qkv, cis), pos, caches[0], None)
        got = attend(qkv, cis if rope else None, caches[1][0], caches[1][1], slot, n if ring else qpos + 1,
                     caches[1][2], qpos, window or 0, nh, nkv, hd, 1.0 / math.sqrt(hd))
    assert got is not None
    torch.testing.assert_close(got.view(1, 1, -1).float(), want.float(), atol=4e-3, rtol=1e-2)
    # the cache is written exactly as the torch path writes it (rotary rounded the same way)
    assert torch.equal(caches[1][0], caches[0][0]) and torch.equal(caches[1][1], caches[0][1])
    if ring:
        assert torch.equal(caches[1][2], caches[0][2])


@needs_kernel
def test_decode_attention_kernel_declines_what_it_cannot_run():
    qkv = torch.randn(1, 1, 3 * 24).bfloat16()
    kc = torch.zeros(1, 1, 8, 24, dtype=torch.bfloat16)
    assert attend(qkv, None, kc, kc.clone(), 0, 1, None, 0, 0, 1, 1, 24, 0.2) is None  # head dim not 16k
    assert attend(qkv.float(), None, kc.float(), kc.float(), 0, 1, None, 0, 0, 1, 1, 24, 0.2) is None  # dtype


@needs_kernel
@pytest.mark.parametrize("h", [64, 1024, 8192, 100])
def test_layer_norm_kernel_matches_torch(h):
    g = torch.Generator().manual_seed(h)
    for wdtype in (torch.bfloat16, torch.float32):
        x = (torch.randn(1, 1, h, generator=g) * 3 + 0.5).bfloat16()
        w = (torch.rand(h, generator=g) + 0.5).to(wdtype)
        got, want = ops.norm(x, w, 1e-5), layer_norm(x, w, 1e-5)
        assert got.shape == want.shape and got.dtype == torch.bfloat16
        # within one bf16 ulp, and equal nearly everywhere (float32 summation order only)
        torch.testing.assert_close(got.float(), want.float(), atol=0, rtol=2**-7)
        assert (got != want).float().mean() < 0.02
    assert ops.norm(x.float(), w, 1e-5) is None  # not bf16: the torch path


@needs_kernel
@pytest.mark.parametrize("i", [2816, 8, 37])
def test_silu_mul_kernel_matches_torch(i):
    g = torch.Generator().manual_seed(i)
    gu = (torch.randn(1, 1, 2 * i, generator=g) * 4).bfloat16()
    gu[0, 0, :4] = torch.tensor([100.0, -100.0, 0.0, -0.0])  # exp overflow and underflow, zeros
    gate, up = gu.chunk(2, dim=-1)
    got, want = ops.silu_mul(gu), torch.nn.functional.silu(gate) * up
    assert got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=0, rtol=2**-7)
    assert (got != want).float().mean() < 0.02


@needs_kernel
@pytest.mark.parametrize("case", [dict(model_type="cohere"), dict(model_type="cohere2", sliding_window=12, layers=4)])
def test_model_decodes_the_same_through_the_kernels(tmp_path, case):
    """load_model installs the kernels for bf16 on CPU; decoding through them (ring buffers wrapping, slack 2)
    gives the torch path's logits and leaves the same cache behind."""
    make_checkpoint(tmp_path, tokenizer=False, vocab=384, dtype="bfloat16", hidden=128, heads=4, kv_heads=2, **case)
    model = load_model(tmp_path, dtype="bfloat16").model
    assert all(layer.native is ops for layer in model.model.layers)
    ids = torch.randint(0, 384, (40,), generator=torch.Generator().manual_seed(4))
    caches = [KVCache(model.config, 40, torch.bfloat16, slack=2) for _ in range(2)]
    with torch.inference_mode():
        for c in caches:
            prefill(model, ids[:17], c, 0, chunk=5)
        for t in range(17, 40):
            got = model(ids[t : t + 1][None], t, caches[0], last_only=True)
            layout.use_decode_kernels(model, None)
            want = model(ids[t : t + 1][None], t, caches[1], last_only=True)
            layout.use_decode_kernels(model, ops)
            torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)
            assert want.flatten()[got.argmax()] >= want.max() - 0.05, t  # greedy picks a token as likely
    for (k1, v1, s1), (k2, v2, s2) in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(s1, s2) if s1 is not None else s2 is None
        torch.testing.assert_close(k1, k2, atol=3e-2, rtol=3e-2)  # the keys of steps after the first differ
        torch.testing.assert_close(v1, v2, atol=3e-2, rtol=3e-2)  # by the attention outputs' last bits


@needs_kernel
def test_decode_attention_kernel_propagates_nan_like_torch():
    """A NaN key makes the heads that see it NaN, wherever it falls (vector body or scalar tail of a block)."""
    nh, nkv, hd = 8, 2, 64
    for bad in (5, 130):
        g = torch.Generator().manual_seed(bad)
        n = 140
        qkv = torch.randn(1, 1, (nh + 2 * nkv) * hd, generator=g).bfloat16()
        kc = torch.randn(1, nkv, n, hd, generator=g).bfloat16()
        kc[0, 1, bad, 3] = float("nan")  # kv head 1 only
        vc = torch.randn(1, nkv, n, hd, generator=g).bfloat16()
        out = attend(qkv, None, kc, vc, n - 1, n, None, n - 1, 0, nh, nkv, hd, 0.125).view(nh, hd)
        assert out[:4].isfinite().all() and out[4:].isnan().all(), bad


def test_rope_table_built_in_inference_mode_serves_training(tmp_path):
    """The model caches its rotary table; one built during generation (inference mode) must not be an inference
    tensor, or a later forward with autograd fails."""
    make_checkpoint(tmp_path, tokenizer=False, vocab=384)
    model = load_model(tmp_path, dtype="float32", inference=False).model
    q = model.model.layers[0].self_attn.q_proj.weight
    q.requires_grad_(True)  # rotary then saves the table for backward
    ids = torch.randint(0, 384, (1, 8))
    with torch.inference_mode():
        model(ids)
    model(ids).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


@needs_kernel
def test_decode_attention_kernel_gives_the_same_bits_at_any_thread_count():
    """The key chunks (whose merge order rounds) do not follow the thread count: decode's count changes with the
    machine's load (engine/threads.py), and a greedy answer must not."""
    nh, nkv, hd, S = 16, 4, 64, 3000
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(1, 1, (nh + 2 * nkv) * hd, generator=g).bfloat16()
    kc0 = torch.randn(1, nkv, S + 1, hd, generator=g).bfloat16()
    vc0 = torch.randn(1, nkv, S + 1, hd, generator=g).bfloat16()
    cis = rope_cos_sin(torch.tensor([S - 1]), hd, 10000.0, torch.bfloat16)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(attend(qkv, cis, kc0.clone(), vc0.clone(), S - 1, S, None, S - 1, 0, nh, nkv, hd, 0.125))
    finally:
        torch.set_num_threads(before)
    assert all(o is not None and torch.equal(o, outs[0]) for o in outs)


row = kernels.packed_row()
needs_row = pytest.mark.skipif(row is None, reason="packed_row needs a C compiler, AVX512-BF16 and oneDNN: not here")


def _packed_linear(n, k, seed=0):
    """A bf16 Linear(k, n) packed as load_model packs it (packed.pack_linear), and its plain weight."""
    from cohere_cli.model import Linear

    g = torch.Generator().manual_seed(seed)
    lin = Linear(k, n, bias=False)
    lin.weight = torch.nn.Parameter(torch.randn(n, k, generator=g).bfloat16(), requires_grad=False)
    plain = lin.weight.detach().clone()
    packed.pack_linear(lin)
    return lin, plain


@needs_row
@pytest.mark.parametrize("n,k", [
    (5, 3),  # under one block and one pair: padding on both sides, an odd k
    (64, 2),
    (100, 71),  # a partial last block, an odd k
    (130, 2817),  # an odd count of pairs ends in a half pair
    (1024, 2816),  # the 213M model's down_proj
    (3072, 2048),  # the 1.25B model's q/k/v
    (7168, 1024),  # the 213M model's fused input projection
])
def test_packed_row_kernel_matches_a_float_reference(n, k):
    """One row through the native kernel on oneDNN's packed buffer: every output within bf16 rounding of the exact
    product (float64), as oneDNN's own result is; several rows keep oneDNN's kernel, bit for bit."""
    lin, plain = _packed_linear(n, k, seed=n + k)
    assert type(lin) is packed.RowKernelLinear and lin.weight.is_mkldnn
    x = torch.randn(3, 1, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    exact = x.double() @ plain.double().t()  # (3, 1, n)
    bound = exact.abs() * 2**-8 + (x.double().abs() @ plain.double().abs().t()) * 2**-20
    with torch.inference_mode():
        for i in range(3):
            got = lin(x[i : i + 1])  # (1, 1, n)
            assert got.shape == (1, 1, n) and got.dtype == torch.bfloat16
            assert ((got.double() - exact[i : i + 1]).abs() <= bound[i : i + 1]).all()
            onednn = torch.ops.mkldnn._linear_pointwise(x[i : i + 1], lin.weight, None, "none", [], "")
            assert (got == onednn).float().mean() > 0.9  # differs in a last bit where the sums' order rounds
        from cohere_cli.model import linear

        assert torch.equal(lin(x), linear(x, lin.weight))  # rows > 1: oneDNN


@needs_row
def test_packed_row_kernel_gives_the_same_bits_at_any_thread_count():
    """Each output is summed by one thread in one order: decode's thread count follows the machine's load
    (engine/threads.py), and a greedy answer must not."""
    lin, _ = _packed_linear(1000, 1536)
    x = torch.randn(1, 1536, generator=torch.Generator().manual_seed(2)).bfloat16()
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(lin(x))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(o, outs[0]) for o in outs)


@needs_row
def test_packed_row_layout_is_checked_against_each_weight():
    """The kernel runs only on a buffer that holds its own weight in the layout it reads: another weight's
    buffer, another shape, a float32 weight or a plain one are refused (they stay on oneDNN's kernel)."""
    kernels._CHECKED.clear()
    w = torch.randn(300, 200).bfloat16()
    pw = packed.pack_weight(w)
    wrong = w.clone()
    wrong[64 * 3 + 5, 17] += 1  # block 3: not among a later weight's samples (blocks 0 and 4 of 5)
    assert kernels.packed_row_layout(wrong, pw) is None  # the first weight of a shape: compared in full
    assert kernels.packed_row_layout(w, pw) == 224  # k padded to a multiple of 32 by oneDNN here
    other = w.clone()
    other[299, 199] += 1  # the last real element: the padded tail of the last block is compared too
    assert kernels.packed_row_layout(other, pw) is None
    other = w.clone()
    other[5, 0] += 1  # later weights of the shape: their first block is among the samples
    assert kernels.packed_row_layout(other, pw) is None
    assert kernels.packed_row_layout(w[:299], packed.pack_weight(w[:299].contiguous())) is not None
    assert kernels.packed_row_layout(w[:299], pw) is None
    assert kernels.packed_row_layout(w.float(), packed.pack_weight(w.float())) is None
    assert kernels.packed_row_layout(w, w) is None
    assert row(torch.randn(1, 201).bfloat16(), row.data_ptr(pw), 300, 200, 224) is None  # the row's length
    lin, plain = _packed_linear(300, 200)
    lin.weight = torch.nn.Parameter(packed.pack_weight(plain + 1), requires_grad=False)  # another weight since
    x = torch.randn(1, 200).bfloat16()
    from cohere_cli.model import linear

    assert torch.equal(lin(x), linear(x, lin.weight))  # oneDNN on the weight it holds, not the checked buffer
    lin, plain = _packed_linear(300, 200)
    lin.weight.data = packed.pack_weight(plain + 1)  # the same Parameter, its data replaced in place
    assert torch.equal(lin(x), linear(x, lin.weight))
    kernels._CHECKED.clear()
    before = torch.get_num_threads()
    try:  # a shape checked in full at one thread count is checked in full again at another (oneDNN's layout
        # follows the count): here a weight wrong in an unsampled block is refused at 3 threads
        torch.set_num_threads(2)
        assert kernels.packed_row_layout(w, pw) == 224
        torch.set_num_threads(3)
        assert kernels.packed_row_layout(wrong, pw) is None
    finally:
        torch.set_num_threads(before)


@needs_row
def test_a_bf16_model_decodes_through_the_row_kernel_like_onednn(tmp_path, uncoded):
    """load_model gives a bf16 model's packed linears (fused projections, o/down, the tied head) the row kernel;
    decoding through it gives oneDNN's logits to bf16 rounding, and the same greedy tokens."""
    from cohere_cli.model import Linear

    make_checkpoint(tmp_path, tokenizer=False, vocab=384, dtype="bfloat16", hidden=128, heads=4, kv_heads=2)
    model = load_model(tmp_path, dtype="bfloat16").model
    rows = [m for m in model.modules() if type(m) is packed.RowKernelLinear]
    assert len(rows) == 3 * len(model.model.layers) + 1  # in_proj, o_proj, down_proj per block; the head
    assert not [k for k in model.state_dict() if "row_" in k]  # its bookkeeping adds no state_dict key
    ids = torch.randint(0, 384, (30,), generator=torch.Generator().manual_seed(5))
    caches = [KVCache(model.config, 30, torch.bfloat16) for _ in range(2)]
    with torch.inference_mode():
        for c in caches:
            prefill(model, ids[:10], c, 0, chunk=5)
        for t in range(10, 30):
            got = model(ids[t : t + 1][None], t, caches[0], last_only=True)
            for m in rows:
                m.__class__ = Linear
            want = model(ids[t : t + 1][None], t, caches[1], last_only=True)
            for m in rows:
                m.__class__ = packed.RowKernelLinear
            torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)
            assert want.flatten()[got.argmax()] >= want.max() - 0.05, t


def test_every_kernel_builds_where_the_cpu_has_what_it_needs():
    """A kernel that does not compile is not an error at run time (its callers keep their torch path, slower), so a
    compile error would pass unnoticed: where there is a C compiler and the CPU has a kernel's extensions, each
    one must build and load."""
    import os
    import shutil

    from cohere_cli.weights.kernels import coded
    from cohere_cli.weights.kernels.block import block_step

    if os.environ.get(kernels.ENV, "1") == "0" or not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("native kernels switched off or no C compiler here")
    wanted = {"int8_row": (kernels.INT8_ROW, kernels.int8_row), "int8_dequant": (kernels.INT8_ROW, kernels.int8_dequant),
              "gemv_4bit_row": (kernels.AVX512_BF16, kernels.gemv_4bit_row),
              "packed_row": (kernels.AVX512_BF16, kernels.packed_row), "decode": (kernels.AVX512_BF16, kernels.decode_ops),
              "block_step": (kernels.AVX512_BF16 | kernels.INT8_ROW, block_step)}
    if os.environ.get(coded.CODED_ENV, "1") != "0":
        wanted["coded_row"] = (coded.CODED, coded.coded_row)
    missing = [name for name, (needs, load) in wanted.items() if needs <= kernels.cpu_flags() and load() is None]
    assert not missing, missing
