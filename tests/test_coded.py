"""bf16 weights coded in 12 bits (weights/coded.py, kernels/coded_row.c) against the packed 16-bit weights they
replace: every word decodes back bit for bit (zeros, -0, subnormals, inf and NaN, blocks with many exceptions), the
one-row kernel gives packed_row.c's bits, several rows oneDNN's, and a whole model decodes, prefills and serves
with the same logits as the uncoded one, in 0.75 of the memory."""

from __future__ import annotations

import pytest
import torch

from cohere_cli.model import KVCache, Linear, linear
from cohere_cli.weights import coded, packed
from cohere_cli.weights.checkpoint import load_model
from cohere_cli.weights.kernels.block import row_spec
from cohere_cli.weights.kernels.coded import coded_row
from factory_checkpoint import make_checkpoint

needs_coded = pytest.mark.skipif(coded_row() is None,
                                 reason="the coded kernel needs a C compiler, AVX512-BF16, VBMI and VBMI2: not here")


@pytest.fixture
def no_amx(monkeypatch):
    """The path of CPUs without AMX (every row count on the coded kernels), wherever this runs; the AMX path has
    its own test (uses_scratch patched on)."""
    monkeypatch.setattr(coded, "uses_scratch", lambda: False)


def _weight(n, k, seed):
    """A bf16 (n, k) weight like a layer's, with the words a 4-bit exponent code cannot hold planted in it."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.02).bfloat16()
    w[0, : min(k, 9)] = 0.0
    w[min(1, n - 1), k // 2] = -0.0
    w[min(2, n - 1), k - 1] = 1e-39  # a subnormal
    w[n - 1, 0] = float("inf")
    w[n // 2, k // 3] = float("nan")
    w[n // 3] *= 1e4  # a row of other exponents: many exceptions in its block
    return w


def same(a, b) -> bool:
    """Bit for bit (NaN included)."""
    return a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


def _pair(w):
    """(packed 16-bit Linear, coded Linear) of the same weight."""
    out = []
    for code in (False, True):
        lin = Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
        packed.pack_linear(lin)
        assert type(lin) is packed.RowKernelLinear
        if code:
            assert coded.code_linear(lin)
        out.append(lin)
    assert type(out[0]) is packed.RowKernelLinear and type(out[1]) is coded.CodedLinear
    return out


@needs_coded
@pytest.mark.parametrize("n,k", [(64, 64), (1000, 333), (1000, 2817), (1024, 2816), (7168, 1024)])
def test_coded_weights_decode_and_multiply_as_the_packed_ones(n, k):
    w = _weight(n, k, n + k)
    plain, c = _pair(w)
    assert same(c.plain(), w)  # every word, bit for bit
    assert c.coded.exc.numel() > 0  # the planted words went through the exceptions
    x = torch.randn(4, 1, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.inference_mode():
        for i in range(4):  # one row: packed_row.c's sums in its order
            assert same(c(x[i]), plain(x[i]))
        assert same(c(x), torch.stack([plain(x[i]) for i in range(4)]))  # rows > 1: each row its own bits


@needs_coded
@pytest.mark.parametrize("n,k", [(5, 3), (64, 2), (100, 71), (130, 2817)])
def test_the_kernel_on_padded_shapes(n, k):
    """Shapes code_linear leaves 16-bit (padding makes them larger coded), through the kernel directly: padded
    outputs and inputs, an odd k ending in a half pair."""
    from cohere_cli.weights.kernels import packed_row

    w = _weight(n, k, n * k)
    lin = Linear(k, n, bias=False)
    lin.weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    packed.pack_linear(lin)
    raw = packed_row().raw(lin.weight)
    c = coded_row().code(raw, n, k, lin.row_kp)
    back = torch.zeros_like(raw)
    assert coded_row().decode_into(c, back) and same(back, raw)
    x = torch.randn(k, generator=torch.Generator().manual_seed(2)).bfloat16()
    assert same(coded_row().row(x, c), lin(x))
    assert coded_row().row(x[:-1], c) is None  # a row of another length is declined


@needs_coded
def test_twelve_bits_a_weight_where_exponents_cluster():
    """normal(0, 0.02) weights, as the benchmark checkpoints: 12 bits and a small fraction of exceptions."""
    w = (torch.randn(1024, 2048, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    _, c = _pair(w)
    assert c.coded.exc.numel() < 1e-3 * w.numel()
    assert c.coded.nbytes < 0.77 * w.numel() * 2


@needs_coded
def test_an_assigned_weight_or_bias_is_used():
    w = _weight(128, 64, 3)
    plain, c = _pair(w)
    x = torch.randn(1, 64).bfloat16()
    b = torch.randn(128).bfloat16()
    c.bias = torch.nn.Parameter(b, requires_grad=False)
    assert row_spec(c) is None and same(c(x), plain(x) + b)
    other = torch.randn(128, 64).bfloat16()
    c.weight, c.bias = torch.nn.Parameter(other, requires_grad=False), None
    assert row_spec(c) is None and same(c(x), linear(x, other))


@needs_coded
def test_rows_get_their_own_bits_at_every_row_count(no_amx):
    """Several rows through gemm_coded_bf16: each row the bits the one-row kernel gives it (so a prompt's rows, a
    batch's sequences and a decode step agree), and within bf16 rounding of the exact product."""
    w = _weight(1000, 2817, 9)
    w[500, 2817 // 3], w[999, 0] = 0.01, 0.5  # no NaN or inf here: the comparison with the exact product needs them finite
    plain, c = _pair(w)
    x = torch.randn(100, 2817, generator=torch.Generator().manual_seed(3)).bfloat16()
    with torch.inference_mode():
        alone = torch.cat([plain(x[i : i + 1]) for i in range(100)])  # packed_row.c, one row at a time
        for rows in (2, 3, 4, 5, 8, 17, 64, 65, 66, 67, 100):  # up to 64: decoded per 4 rows; more: once, in chunks
            assert same(c(x[:rows]), alone[:rows]), rows
        assert same(c(x[:37].view(1, 37, 2817)), alone[:37].view(1, 37, -1))
    exact = x.double() @ w.double().t()
    bound = exact.abs() * 2**-8 + (x.double().abs() @ w.double().abs().t()) * 2**-20
    assert ((c(x).double() - exact).abs() <= bound).all()


@needs_coded
def test_with_amx_many_rows_run_onednn_on_a_shared_scratch(monkeypatch):
    """Where bf16 GEMM has AMX (uses_scratch), more than AMX_ROWS rows decode the weight into the packed buffer its
    shape shares and run oneDNN: the uncoded weight's bits; batch_invariant (serve) then uncodes those linears."""
    monkeypatch.setattr(coded, "uses_scratch", lambda: True)
    w = _weight(1024, 2816, 5)
    plain, c = _pair(w)
    _, c2 = _pair(w * 2)
    assert c.scratch is not None and c2.scratch is c.scratch  # one per shape
    x = torch.randn(coded.AMX_ROWS + 3, 2816, generator=torch.Generator().manual_seed(6)).bfloat16()
    with torch.inference_mode():
        assert same(c(x), linear(x, plain.weight)) and same(c2(x), linear(x, packed.pack_weight(w * 2)))
        assert same(c(x[: coded.AMX_ROWS]), torch.cat([plain(r[None]) for r in x[: coded.AMX_ROWS]]))
    holder = torch.nn.ModuleList([c])
    assert not c.rows_invariant() and packed.batch_invariant(holder) >= 0
    assert type(holder[0]) is not coded.CodedLinear and same(holder[0](x), linear(x, plain.weight))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("bf16"), tokenizer=False, vocab=384, dtype="bfloat16", hidden=128,
                           heads=4, kv_heads=2, intermediate=256, layers=3, model_type="cohere2", sliding_window=12)


def _run(model, steps=20):
    """Prefill 17 tokens (the logits of every position), then decode `steps` fixed ids."""
    ids = torch.randint(0, 384, (17 + steps,), generator=torch.Generator().manual_seed(4))
    cache = KVCache(model.config, 17 + steps, torch.bfloat16, slack=2)
    with torch.inference_mode():
        first = model(ids[:17][None], 0, cache)  # (1, 17, V)
        logits = [model(ids[t : t + 1][None], t, cache, last_only=True) for t in range(17, 17 + steps)]
    return first, torch.cat(logits), cache


_ROW_FORWARD = packed.RowKernelLinear.forward


def _rows_alone(self, x):
    """packed.RowKernelLinear.forward with every row through packed_row.c on its own: the reference for coded
    products, which give each row those bits."""
    out = [_ROW_FORWARD(self, r[None]) for r in x.reshape(-1, x.shape[-1])]  # each (1, N)
    return torch.cat(out).view(*x.shape[:-1], -1)


@needs_coded
@pytest.mark.parametrize("chunks", [False, True])
def test_a_coded_model_gives_the_uncoded_models_logits(checkpoint, monkeypatch, chunks, no_amx):
    """load_model codes every bf16 linear (in_proj, o_proj, down_proj, the tied head: coded chunk by chunk into one
    module) and runs them through block_step.c; its logits at prefill and decode are those of the same model with packed
    16-bit weights whose products take each row alone (packed_row.c), bit for bit, in less memory."""
    from cohere_cli.bench.child import module_bytes

    if chunks:  # the tied head packed and coded 64 rows at a time, into one module: the codes of the whole
        whole = load_model(checkpoint, dtype="bfloat16").model.lm_head.coded
        monkeypatch.setattr(coded, "HEAD_CHUNK_BYTES", 64 * 128 * 2)
    model = load_model(checkpoint, dtype="bfloat16").model
    if chunks:
        part = model.lm_head.coded
        assert all(torch.equal(getattr(part, f), getattr(whole, f)) for f in ("body", "meta", "exc"))
        assert part.exc.numel() and not torch.equal(part.meta[:, 2], torch.zeros_like(part.meta[:, 2]))
    with monkeypatch.context() as m:
        m.setattr(coded, "coded_row", lambda: None)
        ref = load_model(checkpoint, dtype="bfloat16").model
    codes = [m for m in model.modules() if type(m) is coded.CodedLinear]
    assert len(codes) == 3 * len(model.model.layers) + 1 and type(model.lm_head) is coded.CodedLinear
    assert not any(type(m) is coded.CodedLinear for m in ref.modules())
    for layer in model.model.layers:
        assert [row_spec(m)[0] for m in (layer.in_proj, layer.self_attn.o_proj, layer.mlp.down_proj)] == [4] * 3
    monkeypatch.setattr(packed.RowKernelLinear, "forward", _rows_alone)
    got, want = _run(model), _run(ref)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for (k1, v1, _), (k2, v2, _) in zip(got[2].layers, want[2].layers):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    assert module_bytes(model) < 0.8 * module_bytes(ref)


@needs_coded
def test_serving_keeps_the_coded_weights_where_rows_are_invariant(checkpoint, no_amx):
    """packed.batch_invariant (cohere serve) leaves coded linears coded where every row count gives a row its own
    bits (no AMX scratch): a batch of rows through a block's projections equals each row alone."""
    model = load_model(checkpoint, dtype="bfloat16").model
    before = [type(m) for m in model.modules()]
    assert coded.CodedLinear in before and not coded.uses_scratch()
    assert packed.batch_invariant(model) >= 0
    assert [type(m) for m in model.modules()] == before
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(7)).bfloat16()
    lin = model.model.layers[0].in_proj
    with torch.inference_mode():
        assert same(lin(x), torch.cat([lin(r[None]) for r in x]))
        assert lin(x[:0]).shape == (0, lin.out_features)  # no rows: no error
