"""The whole decode step of a block in one native call (kernels/block_step.c) against the per-op native path it
replaces (the same kernels, one call each): the same logits and the same cache, bit for bit, for bf16, LLM.int8()
and 4-bit checkpoints; declines (an outlier mid-layer, after the cache write) and changed weights fall back to that
path with the same results."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cohere_cli.engine.generate import prefill
from cohere_cli.model import KVCache
from cohere_cli.weights import kernels, layout, packed, quant, quantize
from cohere_cli.weights.checkpoint import load_model
from cohere_cli.weights.kernels.block import BlockStep, block_step, row_spec
from factory_checkpoint import make_checkpoint

ops = kernels.decode_ops()
needs_step = pytest.mark.skipif(ops is None or block_step() is None,
                                reason="the kernels need a C compiler, AVX512-BF16 and VNNI: not here")
KIND = {"bf16": 1, "int8": 2, "nf4": 3, "coded": 4}  # block_step.c's Mat kinds (coded: bf16 in 12 bits)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A cohere2 model with sliding layers (rings that wrap) and its int8 and nf4 quantizations."""
    parent = make_checkpoint(tmp_path_factory.mktemp("bf16"), tokenizer=False, vocab=384, dtype="bfloat16",
                             hidden=128, heads=4, kv_heads=2, intermediate=256, layers=4, model_type="cohere2",
                             sliding_window=12)
    out = {"bf16": parent}
    for name, spec in (("int8", quant.QuantSpec(bits=8)), ("nf4", quant.QuantSpec(bits=4))):
        out[name] = tmp_path_factory.mktemp(name)
        quantize.quantize_checkpoint(parent, out[name], spec)
    return out


def _counting(calls: list, runs: list | None = None) -> BlockStep:
    """ops.block with its C functions counted: each block's call (its stage: 0 done, else where it declined), and
    with `runs` the whole-model step too ((blocks done, stage) per call; without it, that step is off)."""
    real, whole = ops.block.fn, ops.block.layers_fn

    def fn(*args):
        err = real(*args)
        calls.append(err)
        return err

    def layers_fn(*args):
        done = whole(*args)
        runs.append((done, args[-1]._obj.value))  # (the last argument: byref(stage))
        return done

    return BlockStep(fn, layers_fn if runs is not None else None)


def _decode_both(model, steps, before=None, seed=4, runs=None):
    """Prefill 17 tokens into two caches, then decode `steps` tokens into each: one through the fused step (with a
    `runs` list: all blocks in one call, model_step_bf16), one through the per-op path; `before(t)` runs ahead of
    each step. -> (fused logits, per-op logits, caches, calls)."""
    calls: list = []
    fused = dataclasses.replace(ops, block=_counting(calls, runs))
    per_op = dataclasses.replace(ops, block=None)
    ids = torch.randint(0, 384, (17 + steps,), generator=torch.Generator().manual_seed(seed))
    caches = [KVCache(model.config, 17 + steps, torch.bfloat16, slack=2) for _ in range(2)]
    got, want = [], []
    with torch.inference_mode():
        for c in caches:
            prefill(model, ids[:17], c, 0, chunk=5)
        for t in range(17, 17 + steps):
            if before is not None:
                before(t)
            layout.use_decode_kernels(model, fused)
            got.append(model(ids[t : t + 1][None], t, caches[0], last_only=True))
            layout.use_decode_kernels(model, per_op)
            want.append(model(ids[t : t + 1][None], t, caches[1], last_only=True))
    layout.use_decode_kernels(model, ops)
    return torch.cat(got), torch.cat(want), caches, calls


def _same_caches(caches):
    for (k1, v1, s1), (k2, v2, s2) in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
        assert torch.equal(s1, s2) if s1 is not None else s2 is None


@needs_step
@pytest.mark.parametrize("kind", ["bf16", "coded", "int8", "nf4"])
def test_block_step_gives_the_per_op_bits(checkpoints, kind, monkeypatch):
    from cohere_cli.weights import coded

    if kind == "bf16":  # the packed 16-bit weights, where the coded kernel would take them
        monkeypatch.setattr(coded, "coded_row", lambda: None)
    elif kind == "coded" and coded.coded_row() is None:
        pytest.skip("the coded kernel needs VBMI2: not here")
    model = load_model(checkpoints["bf16" if kind == "coded" else kind], dtype="bfloat16").model
    for layer in model.model.layers:  # every matmul of every block on the kernel of its precision
        specs = [row_spec(m) for m in (layer.in_proj, layer.self_attn.o_proj, layer.mlp.down_proj)]
        assert [s[0] if s else None for s in specs] == [KIND[kind]] * 3
    got, want, caches, calls = _decode_both(model, 23)
    assert calls and not any(calls) and len(calls) == 23 * len(model.model.layers)  # it ran, never declined
    assert torch.equal(got, want)
    _same_caches(caches)  # the sliding layers' rings wrapped (window 12, slack 2) on the way


@needs_step
@pytest.mark.parametrize("where,stage", [("in_proj", 1), ("o_proj", 2), ("down_proj", 3)])
def test_a_decline_falls_back_from_where_it_stopped_with_the_same_results(checkpoints, where, stage):
    """LLM.int8() declines a row with an outlier. In in_proj's input nothing is written yet (the per-op path runs
    the block); in o_proj's or down_proj's the attention has written this token's key and value, and the step is
    finished from the kernel's attention output and activation (o_proj's output too) with the block's modules:
    the same bits as the per-op path, which takes bitsandbytes' outlier decomposition there."""
    model = load_model(checkpoints["int8"], dtype="bfloat16").model
    layer = model.model.layers[1]
    mod = {"in_proj": layer.in_proj, "o_proj": layer.self_attn.o_proj, "down_proj": layer.mlp.down_proj}[where]
    mod.threshold = 1e-6  # every input row has an "outlier"
    got, want, caches, calls = _decode_both(model, 6)
    assert calls.count(stage) == 6 and calls.count(0) == 6 * (len(model.model.layers) - 1)
    assert torch.equal(got, want)
    _same_caches(caches)


@needs_step
def test_a_model_loaded_in_inference_mode_decodes_through_it(checkpoints):
    """Tensors made under torch.inference_mode() keep no version counter: nothing on the way may ask for one."""
    for kind in ("bf16", "int8"):
        with torch.inference_mode():
            model = load_model(checkpoints[kind], dtype="bfloat16").model
        assert model.model.layers[0].input_layernorm.weight.is_inference()
        got, want, caches, calls = _decode_both(model, 3)
        assert calls and not any(calls) and torch.equal(got, want)


@needs_step
@pytest.mark.parametrize("coding", [False, True])
def test_changed_weights_are_read_anew(checkpoints, coding, monkeypatch):
    """A weight replaced (bf16: a new packed Parameter, which the row kernel no longer takes; coded: a weight
    assigned over the coded one) or edited in place (int8: its rows and scales) between steps: the fused step never
    reads the old pointers."""
    from cohere_cli.weights import coded

    if not coding:
        monkeypatch.setattr(coded, "coded_row", lambda: None)
    elif coded.coded_row() is None:
        pytest.skip("the coded kernel needs VBMI2: not here")
    model = load_model(checkpoints["bf16"], dtype="bfloat16").model
    down = model.model.layers[2].mlp.down_proj
    assert (type(down) is coded.CodedLinear) == coding
    plain = torch.randn(down.out_features, down.in_features, generator=torch.Generator().manual_seed(1)).bfloat16() * 0.05

    def swap(t):
        if t == 20:
            down.weight = torch.nn.Parameter(packed.pack_weight(plain), requires_grad=False)

    got, want, caches, calls = _decode_both(model, 6, swap)
    assert torch.equal(got, want)
    n = len(model.model.layers)  # layer 2 declines (before its C call) once down_proj is another weight: steps 20-22
    assert len(calls) == 6 * n - 3 and not any(calls)
    _same_caches(caches)

    norm = model.model.layers[1].input_layernorm  # a new norm weight (another buffer): a new description

    def renorm(t):
        if t == 18:
            norm.weight = torch.nn.Parameter(norm.weight.detach() * 1.5 + 0.25, requires_grad=False)

    got, want, caches, calls = _decode_both(model, 4, renorm)
    assert torch.equal(got, want) and len(calls) == 4 * (n - 1) and not any(calls)  # (layer 2: as above)
    _same_caches(caches)

    model = load_model(checkpoints["int8"], dtype="bfloat16").model
    lin = model.model.layers[0].mlp.down_proj
    before = None

    def edit(t):
        nonlocal before
        if t == 19:
            before = row_spec(lin)
            lin.cb.neg_()  # the rows (and so their sums) change in place
            lin.scb.mul_(2)

    got, want, caches, calls = _decode_both(model, 4, edit)
    assert row_spec(lin) != before and not any(calls)  # rebuilt (the row sums are new), still fused
    assert torch.equal(got, want)
    _same_caches(caches)


@needs_step
@pytest.mark.parametrize("kind", ["bf16", "coded", "int8", "nf4"])
def test_all_blocks_in_one_call_give_the_per_op_bits(checkpoints, kind, monkeypatch):
    """layout.FusedDecoder: one model_step_bf16 call per token runs every block (rings wrapping on the way)."""
    from cohere_cli.weights import coded

    if kind == "bf16":
        monkeypatch.setattr(coded, "coded_row", lambda: None)
    elif kind == "coded" and coded.coded_row() is None:
        pytest.skip("the coded kernel needs VBMI2: not here")
    model = load_model(checkpoints["bf16" if kind == "coded" else kind], dtype="bfloat16").model
    assert type(model.model) is layout.FusedDecoder and model.model.native is ops
    runs: list = []
    got, want, caches, calls = _decode_both(model, 23, runs=runs)
    assert runs == [(len(model.model.layers), 0)] * 23 and calls == []
    assert torch.equal(got, want)
    _same_caches(caches)


@needs_step
@pytest.mark.parametrize("where,stage", [("in_proj", 1), ("o_proj", 2), ("down_proj", 3)])
def test_a_block_declining_mid_model_is_finished_and_the_run_goes_on(checkpoints, where, stage):
    """An outlier in block 1 (LLM.int8()): the call stops there, block 1 is finished in Python (stage 1: its module
    runs it, through its own block step, which declines again, then the per-op path), and a second call runs the
    rest. The same bits as the per-op path."""
    model = load_model(checkpoints["int8"], dtype="bfloat16").model
    layer = model.model.layers[1]
    mod = {"in_proj": layer.in_proj, "o_proj": layer.self_attn.o_proj, "down_proj": layer.mlp.down_proj}[where]
    mod.threshold = 1e-6
    runs: list = []
    got, want, caches, calls = _decode_both(model, 6, runs=runs)
    n = len(model.model.layers)
    assert runs == [(1, stage), (n - 2, 0)] * 6 and calls == ([1] if stage == 1 else []) * 6
    assert torch.equal(got, want)
    _same_caches(caches)


@needs_step
def test_the_whole_model_step_reads_changed_weights_anew_and_leaves_hooked_blocks_alone(checkpoints):
    """int8 rows and scales edited in place between steps: the next call reads them (a new description). A block
    with a forward hook: the blocks run one by one, so that the hook sees them."""
    model = load_model(checkpoints["int8"], dtype="bfloat16").model
    lin = model.model.layers[0].mlp.down_proj

    def edit(t):
        if t == 19:
            lin.cb.neg_()
            lin.scb.mul_(2)

    runs: list = []
    got, want, caches, calls = _decode_both(model, 4, edit, runs=runs)
    assert runs == [(len(model.model.layers), 0)] * 4 and torch.equal(got, want)
    _same_caches(caches)
    seen = []
    handle = model.model.layers[2].register_forward_hook(lambda *a: seen.append(1))
    runs.clear()
    got, want, caches, calls = _decode_both(model, 3, runs=runs)
    handle.remove()
    assert runs == [] and len(calls) == 3 * len(model.model.layers) and not any(calls)
    assert len(seen) == 2 * 3 + 2 * 4  # both decodes' 3 steps, and both prefills' 4 chunks (17 tokens, chunk 5)
    assert torch.equal(got, want)


@needs_step
def test_blocks_changed_after_install_run_as_their_modules_do(checkpoints):
    """A block given no native ops after use_decode_kernels, or swapped for a plain model.Block: no whole-model
    call, and each block runs as its module does (the same logits as with the whole-model path off)."""
    from cohere_cli.model import Block

    model = load_model(checkpoints["bf16"], dtype="bfloat16").model
    calls, runs = [], []
    layout.use_decode_kernels(model, dataclasses.replace(ops, block=_counting(calls, runs)))
    ids = torch.randint(0, 384, (20,), generator=torch.Generator().manual_seed(3))

    def decode(off: bool):
        cache = KVCache(model.config, 20, torch.bfloat16)
        native = model.model.native
        if off:
            model.model.native = None
        with torch.inference_mode():
            prefill(model, ids[:17], cache, 0)
            out = torch.cat([model(ids[t : t + 1][None], t, cache, last_only=True) for t in range(17, 20)])
        model.model.native = native
        return out

    model.model.layers[1].native = None
    want = decode(off=True)
    runs.clear()
    assert torch.equal(decode(off=False), want) and runs == []
    plain = Block(model.config, 1).to(torch.bfloat16)
    plain.load_state_dict(model.model.layers[1].state_dict(), strict=False)
    model.model.layers[1] = plain
    want = decode(off=True)
    assert torch.equal(decode(off=False), want) and runs == []


@needs_step
def test_the_whole_model_call_declines_a_cache_position_out_of_range():
    """model_step_bf16's own checks, before anything is written: an empty ring (n = 0) or a position past a
    straight cache stops at stage 1 with no layer done."""
    import ctypes as ct

    from cohere_cli.weights.kernels.block import Layer

    buf = torch.zeros(64, dtype=torch.bfloat16)
    pos = torch.zeros(4, dtype=torch.int64)
    for n, ring, qpos in ((0, True, 3), (4, False, 4), (4, False, -1)):
        arr = (Layer * 1)(Layer(None, buf.data_ptr(), buf.data_ptr(), n, 0, pos.data_ptr() if ring else None))
        stage = ct.c_int64(0)
        p = buf.data_ptr()
        done = ops.block.layers_fn(arr, 1, p, None, qpos, 1, p, p, p, p, p, ct.byref(stage))
        assert (done, stage.value) == (0, 1), (n, ring, qpos)
