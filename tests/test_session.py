"""KV-cache reuse across calls (what a chat does every turn): same tokens as a fresh run, fewer tokens prefilled."""

from __future__ import annotations

import pytest

from cohere_cli.weights.checkpoint import load_model
from cohere_cli.engine.generate import Session, stream_generate
from cohere_cli.engine.sampling import SamplingParams
from cohere_cli.engine.tokenizer import Tokenizer
from factory_checkpoint import make_checkpoint


KINDS = {
    "cohere": {},
    "cohere2": dict(model_type="cohere2", sliding_window=16, templates="cmd3"),
    # a MoE with a dense prefix layer (full attention with RoPE) and sliding expert layers
    "cohere2_moe": dict(model_type="cohere2_moe", sliding_window=16, templates="cmd3", moe=dict(
        num_experts=4, num_experts_per_tok=2, num_shared_experts=1, first_k_dense_replace=1,
        prefix_dense_intermediate_size=96, rms_norm_eps=1e-6)),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def rt(request, tmp_path_factory):
    kw = KINDS[request.param]
    d = make_checkpoint(tmp_path_factory.mktemp(request.param), max_position_embeddings=1024, **kw)
    return load_model(d, dtype="float32").model, Tokenizer.from_dir(d)


def run(model, tok, ids, session=None, n=12):
    out = list(stream_generate(model, tok, ids, SamplingParams(), n, stop_ids=set(), session=session))
    return [r.token for r in out if r.token is not None], out[-1]


def test_second_turn_prefills_only_the_new_tail(rt):
    model, tok = rt
    session = Session(model, slack=8)  # slack 8: the cohere2 ring (16 + 8 slots) wraps within this test
    a = tok.encode("The quick brown fox jumps over the lazy dog " * 3)
    first, r1 = run(model, tok, a, session)
    assert r1.prefilled_tokens == len(a)
    b = a + first + tok.encode(" and then", add_bos=False)
    second, r2 = run(model, tok, b, session)
    # everything fed to the model before (prompt + answer minus its last token) is reused
    assert r2.prefilled_tokens == len(b) - (len(a) + len(first) - 1)
    fresh, _ = run(model, tok, b)
    assert second == fresh


def test_rewind_to_common_prefix(rt):
    model, tok = rt
    session = Session(model, slack=16)  # the ring (16 + 16 slots) wraps, and still holds the rewound window
    a = tok.encode("Once upon a time in a land far away there lived a king who had three daughters and a cat")
    run(model, tok, a, session)
    b = a[:-3] + tok.encode(" a dragon", add_bos=False)  # /edit-like: same start, different ending
    assert len(a) + 12 > 32, "the ring must have wrapped for this test to mean anything"
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert common < len(a) - 1
    got, r = run(model, tok, b, session)
    assert r.prefilled_tokens == len(b) - common
    fresh, _ = run(model, tok, b)
    assert got == fresh


def test_rewind_beyond_ring_slack_starts_over(rt):
    model, tok = rt
    session = Session(model, slack=2)
    a = tok.encode("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho")
    run(model, tok, a, session, n=20)
    b = a[:10] + tok.encode(" sigma tau", add_bos=False)
    got, r = run(model, tok, b, session)
    has_ring = model.config.sliding_window is not None
    assert r.prefilled_tokens == (len(b) if has_ring else len(b) - 10)
    assert got == run(model, tok, b)[0]


def test_generation_config_out_of_range_or_malformed_is_ignored(tmp_path):
    """generation_config.json is the checkpoint's, not the user's: a value out of range is dropped with a warning,
    a file that is not a JSON object gives no defaults; neither stops the chat."""
    from cohere_cli.chat.session import generation_defaults
    from cohere_cli.errors import CohereWarning

    (tmp_path / "generation_config.json").write_text('{"top_p": 1.5, "temperature": 0.7, "top_k": 40}')
    with pytest.warns(CohereWarning, match="top_p must be between 0.0 and 1.0"):
        assert generation_defaults(tmp_path) == {"temperature": 0.7, "top_k": 40}
    for bad in ("[1, 2]", "{not json", "\xff\xfe"):
        (tmp_path / "generation_config.json").write_text(bad)
        assert generation_defaults(tmp_path) == {}


def test_fitting_a_long_conversation_drops_the_fewest_exchanges_in_a_few_renders():
    """A loaded conversation of thousands of messages must not be rendered once per dropped exchange (issue 16:
    /load of 10^4 messages then a turn took minutes): the fewest oldest exchanges that make it fit, found in
    O(log n) renders, the same number the one-by-one policy dropped."""
    from cohere_cli.chat.conversation import Conversation
    from cohere_cli.chat.session import ChatSettings, fit_context
    from cohere_cli.errors import ContextOverflow

    def encode(conv):
        renders.append(1)
        text = "".join(t["content"] for t in conv.messages())
        return text, list(range(len(text)))  # one token a character

    settings = ChatSettings(max_tokens=10)
    for n, context in ((5000, 1000), (5000, 40_000), (3, 30), (2, 1000)):
        conv = Conversation(system="S" * 5, turns=[{"role": ("user", "assistant")[i % 2], "content": "x" * (1 + i % 7)}
                                                   for i in range(2 * n)] + [{"role": "user", "content": "q" * 5}])
        expected = Conversation(system=conv.system, turns=list(conv.turns))
        dropped_one_by_one, reserve = 0, min(10, context // 4)  # the policy, one exchange at a time
        while len("".join(t["content"] for t in expected.messages())) + reserve > context:
            cut = next(i for i in range(1, len(expected.turns)) if expected.turns[i]["role"] == "user")
            del expected.turns[:cut]
            dropped_one_by_one += 1
        renders = []
        text, ids, dropped = fit_context(conv, settings, context, encode)
        assert dropped == dropped_one_by_one and conv.turns == expected.turns
        assert len(ids) + reserve <= context and text.startswith("S" * 5)  # the preamble stays
        assert len(renders) <= 2 + 2 * n.bit_length()
    conv = Conversation(turns=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "user", "content": "q" * 100}])
    with pytest.raises(ContextOverflow, match="this message alone needs 100 tokens"):
        fit_context(conv, settings, 50, encode)
