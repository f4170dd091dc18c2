"""Continuous batching (engine/batch.py): the batch must not change the answer. Every sequence run through
BatchEngine, joining and leaving at any step beside others, gets exactly the Responses stream_generate yields for it
alone (tokens, text, counts, finish reason); prefix reuse, the queue bound, cancel and threads. No timing here:
benchmarks/batch_decode.py measures throughput."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from cohere_cli.engine.batch import BatchEngine
from cohere_cli.engine.batch_forward import BatchForward, RowExact
from cohere_cli.engine.generate import Session, prefill, stream_generate
from cohere_cli.engine.sampling import SamplingParams
from cohere_cli.engine.tokenizer import Tokenizer
from cohere_cli.errors import CohereError, ContextOverflow, EngineBusy, UsageError
from cohere_cli.weights.checkpoint import load_model
from cohere_cli.weights.packed import batch_invariant
from factory_checkpoint import make_checkpoint

GREEDY = SamplingParams()
KINDS = {  # dtype "auto" is bf16 on a CPU with native bf16 (the native decode kernels), else float32
    "cohere": dict(dtype="auto"),
    # float32: oneDNN's one-row matmul differs from the batched one: served, packed linears multiply one row as two
    "cohere-fp32": dict(dtype="float32"),
    "cohere-qknorm": dict(dtype="auto", qk_norm=True),  # R+: the torch route of a fused block
    # a ring on the sliding layers (context 1024 > window 16 + slack 512), NoPE full layers
    "cohere2": dict(dtype="auto", model_type="cohere2", sliding_window=16, templates="cmd3"),
    "cohere2_moe": dict(dtype="auto", model_type="cohere2_moe", sliding_window=16, templates="cmd3", moe=dict(
        num_experts=4, num_experts_per_tok=2, num_shared_experts=1, first_k_dense_replace=1,
        prefix_dense_intermediate_size=96, rms_norm_eps=1e-6)),
}
TEXTS = ["The quick brown fox jumps over the lazy dog", "Once upon a time", "alpha beta gamma delta epsilon zeta "
         "eta theta iota kappa lambda", "Hello, how are you today? I hope"]


@pytest.fixture(scope="module", params=sorted(KINDS))
def rt(request, tmp_path_factory):
    kw = dict(KINDS[request.param])
    dtype = kw.pop("dtype")
    d = make_checkpoint(tmp_path_factory.mktemp(request.param), max_position_embeddings=1024, **kw)
    return served(load_model(d, dtype=dtype).model), Tokenizer.from_dir(d)


def served(model):
    """The model as `cohere serve` runs it (BatchForward makes it batch-invariant when the engine is built): the
    unbatched references below come from the same model the engine decodes with."""
    batch_invariant(model)
    return model


def fields(r):
    """What must be equal between a batched and an unbatched Response (timings and memory may differ)."""
    return (r.text, r.token, r.prompt_tokens, r.generation_tokens, r.finish_reason, r.prefilled_tokens)


def alone(model, tok, ids, params=GREEDY, n=16, stop_ids=frozenset(), session=None):
    return [fields(r) for r in stream_generate(model, tok, ids, params, n, stop_ids=set(stop_ids), session=session)]


def drive(engine, schedule: dict, until_idle=True):
    """Run steps; before step k, call schedule[k](engine). The Responses per sequence id, in order."""
    got: dict[int, list] = {}
    k = 0
    while k <= max(schedule, default=0) or (until_idle and engine.busy()):
        if k in schedule:
            schedule[k](engine)
        for sid, r in engine.step():
            got.setdefault(sid, []).append(r)
        k += 1
        assert k < 500, "the engine never went idle"
    return got


def test_concurrent_streams_equal_their_unbatched_runs(rt):
    """4 prompts of different lengths, joining at different steps (one waits for a free slot), one cancelled
    mid-way, one ending at a stop token, one at max_tokens: each equals stream_generate's run of it alone."""
    model, tok = rt
    prompts = [tok.encode(t) for t in TEXTS]
    assert len({len(p) for p in prompts}) == 4
    refs = [alone(model, tok, p, n=14 + 3 * i) for i, p in enumerate(prompts)]
    stop = {refs[1][5][1]}  # stream 1 stops where its 6th token would be (or earlier, at the same token)
    refs[1] = alone(model, tok, prompts[1], n=17, stop_ids=stop)
    assert refs[1][-1][4] == "stop" and refs[0][-1][4] == "length"
    ids = {}

    def add(i, **kw):
        return lambda e: ids.__setitem__(i, e.add(prompts[i], GREEDY, 14 + 3 * i, stop_ids=kw.get("stop", set())))

    engine = BatchEngine(model, tok, max_batch=3)
    got = drive(engine, {0: add(0), 2: add(1, stop=stop), 3: add(2), 4: add(3), 9: lambda e: e.cancel(ids[2])})
    out = {i: [fields(r) for r in got.get(ids[i], [])] for i in ids}
    assert out[0] == refs[0] and out[1] == refs[1] and out[3] == refs[3]
    assert 0 < len(out[2]) < len(refs[2]) and out[2] == refs[2][: len(out[2])]  # cancelled: a prefix, no closing
    assert not engine.busy()


def test_a_sequence_that_breaks_fails_alone(rt):
    """One sequence's sampler raises at its 4th token: that sequence ends with the exception (no more Responses,
    its slot free at once), the other two finish exactly as alone."""
    model, tok = rt
    prompts = [tok.encode(t) for t in TEXTS[:3]]
    refs = [alone(model, tok, p, n=12) for p in prompts]
    engine = BatchEngine(model, tok, max_batch=3)
    ids = [engine.add(p, GREEDY, 12, stop_ids=set()) for p in prompts]
    real, calls = engine.seqs[ids[1]].sampler, []

    def breaks(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("a broken sampler")
        return real(*args)

    engine.seqs[ids[1]].sampler = breaks
    got = drive(engine, {})
    assert [fields(r) for r in got[ids[0]]] == refs[0] and [fields(r) for r in got[ids[2]]] == refs[2]
    *before, last = got[ids[1]]
    assert isinstance(last, RuntimeError) and [fields(r) for r in before] == refs[1][:3]
    assert all(s.seq is None for s in engine.slots) and not engine.busy()
    again = engine.add(prompts[1], GREEDY, 12, stop_ids=set())  # its slot serves again, from a clean cache
    assert [fields(r) for r in drive(engine, {})[again]] == refs[1]


def test_batched_logits_are_bit_identical_to_one_row_forwards(rt):
    """The invariant under the token tests, where a last-bit difference shows even without a near tie: one
    decode forward of 3 rows at ragged positions gives each row the model's own one-token logits, bit for bit."""
    model, tok = rt
    prompts = [tok.encode(t) for t in TEXTS[:3]]
    one, many = [Session(model, 256) for _ in prompts], [Session(model, 256) for _ in prompts]
    with torch.inference_mode():
        for p, a, b in zip(prompts, one, many):
            prefill(model, torch.tensor(p), a.cache)
            prefill(model, torch.tensor(p), b.cache)
        tokens = [17, 42, 99]
        for step in range(3):  # a few steps: the cache written by the batch is read back by the next one
            want = [model(torch.tensor([[t]]), len(p) + step, s.cache, last_only=True)[0, -1]
                    for t, p, s in zip(tokens, prompts, one)]
            got = BatchForward(model).decode(tokens, [len(p) + step for p in prompts], [s.cache for s in many])
            for r in range(3):
                assert torch.equal(got[r], want[r]), (step, r)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_served_linear_gives_a_row_the_same_bits_alone_as_in_any_batch(dtype):
    """oneDNN multiplies one row with another K order than several (bf16 with K > 1024, as the 213M model's
    down_proj; fp32): packed.batch_invariant (what BatchForward does to the served model) makes such a linear
    multiply one row as two, so a decode alone and a batched one agree bit for bit and serve batches every linear
    instead of running rows one by one. Several weights: the probe must not miss a 1-in-4,000 difference."""
    from cohere_cli.model import Linear
    from cohere_cli.weights import packed

    if not packed.packable(torch.empty(1, dtype=dtype)):
        pytest.skip(f"oneDNN does not take {dtype} here: nothing is packed")
    for seed in range(4):
        torch.manual_seed(seed)
        lin = Linear(2816, 1024, bias=False).to(dtype)
        packed.pack_linear(lin)
        # pack alone keeps the fastest one-row kernel (cohere chat, generate): bf16's native one where it runs
        assert type(lin) is Linear or (dtype == torch.bfloat16 and type(lin) is packed.RowKernelLinear)
        packed._ONE_ROW_DIFFERS.clear()  # probe each weight anew
        packed.batch_invariant(lin)
        x = torch.randn(64, 1, 2816).to(dtype)  # (B, 1, K): 64 rows of one token
        with torch.inference_mode():
            alone = torch.cat([lin(x[i : i + 1]) for i in range(64)])  # (64, 1, N)
            for m in (2, 3, 64):
                assert torch.equal(lin(x[:m]), alone[:m]), (seed, m)
        assert RowExact().exact(lin, x[:4])  # batched by the engine, not row by row


def test_seeded_sampling_is_reproducible_per_sequence(rt):
    model, tok = rt
    prompts = [tok.encode(t) for t in TEXTS[:3]]
    params = [SamplingParams(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=100 + i)
              for i in range(3)]
    refs = [alone(model, tok, p, q) for p, q in zip(prompts, params)]
    engine = BatchEngine(model, tok, max_batch=3)
    ids = []
    got = drive(engine, {i: (lambda e, i=i: ids.append(e.add(prompts[i], params[i], 16, stop_ids=set())))
                         for i in range(3)})
    assert [[fields(r) for r in got[s]] for s in ids] == refs


def test_next_turn_prefills_only_its_tail_in_the_slot_holding_its_prefix(rt):
    """Conversation A's second turn goes to A's slot (B's conversation holds the other one) and prefills only
    what A's cache lacks; its tokens are those of a REPL Session doing the same two turns."""
    model, tok = rt
    a1, b1 = tok.encode(TEXTS[0]), tok.encode(TEXTS[3])
    engine = BatchEngine(model, tok, max_batch=2)
    sid = {}
    got = drive(engine, {0: lambda e: sid.__setitem__("a", e.add(a1, GREEDY, 12, stop_ids=set())),
                         1: lambda e: sid.__setitem__("b", e.add(b1, GREEDY, 12, stop_ids=set()))})
    answer = [r.token for r in got[sid["a"]] if r.token is not None]
    a2 = a1 + answer + tok.encode(" and then", add_bos=False)
    got2 = drive(engine, {0: lambda e: sid.__setitem__("a2", e.add(a2, GREEDY, 10, stop_ids=set()))})
    closing = got2[sid["a2"]][-1]
    assert closing.prefilled_tokens == len(a2) - (len(a1) + len(answer) - 1)
    session = Session(model, 1024)
    alone(model, tok, a1, n=12, session=session)
    assert [fields(r) for r in got2[sid["a2"]]] == alone(model, tok, a2, n=10, session=session)


def test_queue_bound_and_cancel_frees_a_slot_at_once(rt):
    model, tok = rt
    p = tok.encode(TEXTS[0])
    engine = BatchEngine(model, tok, max_batch=1, max_queue=2)
    first, second = engine.add(p, GREEDY, 50, stop_ids=set()), engine.add(p, GREEDY, 5, stop_ids=set())
    with pytest.raises(EngineBusy) as e:
        engine.add(p, GREEDY, 5)
    assert isinstance(e.value, CohereError) and "waiting" in str(e.value)
    assert {s for s, _ in engine.step()} == {first}  # one slot: the second waits
    third = engine.add(p, GREEDY, 5, stop_ids=set())  # a queue place is free again
    assert {s for s, _ in engine.step()} == {first}
    engine.cancel(first)
    engine.cancel(12345)  # unknown: ignored
    assert {s for s, _ in engine.step()} == {second}  # admitted at the very next step
    engine.cancel(third)  # still waiting: gone from the queue
    rest = drive(engine, {})
    assert set(rest) == {second} and rest[second][-1].finish_reason == "length"
    assert not engine.busy()


def test_prompt_that_does_not_fit_is_refused_at_once(rt):
    model, tok = rt
    engine = BatchEngine(model, tok, context=32)
    with pytest.raises(ContextOverflow):
        engine.add([], GREEDY, 5)
    with pytest.raises(ContextOverflow):
        engine.add(list(range(7, 39)), GREEDY, 5)
    with pytest.raises(UsageError):
        engine.add([7, 8], GREEDY, 0)
    sid = engine.add(list(range(7, 37)), GREEDY, 50, stop_ids=set())  # 30 tokens: 2 fit
    got = drive(engine, {})
    assert got[sid][-1].generation_tokens == 2 and got[sid][-1].finish_reason == "length"


def test_requests_from_other_threads_while_a_worker_steps(rt):
    model, tok = rt
    prompts = [tok.encode(t) for t in TEXTS]
    refs = [alone(model, tok, p, n=8) for p in prompts]
    engine = BatchEngine(model, tok, max_batch=2)
    got: dict[int, list] = {}
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            for sid, r in engine.step():
                got.setdefault(sid, []).append(fields(r))

    t = threading.Thread(target=worker)
    t.start()
    try:
        ids = [engine.add(p, GREEDY, 8, stop_ids=set()) for p in prompts]
        gone = engine.add(prompts[0], GREEDY, 8, stop_ids=set())
        engine.cancel(gone)
        while engine.busy():
            stop.wait(0.01)
    finally:
        stop.set()
        t.join(60)
    assert [got[i] for i in ids] == refs
    assert got.get(gone, []) == refs[0][: len(got.get(gone, []))]


def test_demo_four_concurrent_greedy_streams_equal_their_unbatched_runs():
    d = Path(__file__).resolve().parents[1] / "cohere_cli" / "data" / "demo"
    model, tok = served(load_model(d).model), Tokenizer.from_dir(d)
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]), add_bos=False)
               for q in ("What is the capital of France?", "Say hello.", "Tell me a short story about a cat.",
                         "How do I list the models I have?")]
    refs = [alone(model, tok, p, n=24, stop_ids=tok.stop_ids) for p in prompts]
    engine = BatchEngine(model, tok, max_batch=4)
    ids = []
    got = drive(engine, {i: (lambda e, i=i: ids.append(e.add(prompts[i], GREEDY, 24))) for i in range(4)})
    assert [[fields(r) for r in got[s]] for s in ids] == refs
