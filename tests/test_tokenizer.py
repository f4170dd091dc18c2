"""cohere_cli.engine.tokenizer against transformers' CohereTokenizer on small, realistic Cohere tokenizers."""

from __future__ import annotations

import json
import unicodedata

import pytest
from factory_tokenizer import load_reference, make_tokenizer

from cohere_cli.errors import TemplateError, TokenizerError
from cohere_cli.engine.tokenizer import Tokenizer

pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    " Hello world",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "3 33 333333333 3.14159 2024-06-01 1,000,000",
    "   leading and trailing   ",
    "\t\n\n\n tabs and\r\nnewlines\n",
    "Cửa Việt café naïve résumé Größe",
    "e\u0301 (decomposed é, NFC-normalized)",
    "你好世界 日本語のテキスト 한국어 ภาษาไทย ខ្មែរ",
    "emoji 🦙🎉👍🏽🇫🇷 and ZWJ 👩‍👩‍👧",
    "```python\ndef f(x):\n    return {'a': [1, 2]}\n```",
    "<BOS_TOKEN>already has a BOS",
    "text with <|START_OF_TURN_TOKEN|><|USER_TOKEN|>turn tokens<|END_OF_TURN_TOKEN|> inside",
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "almost a token <|END_OF_TURN_TOKEN| and <EOS_TOKEN> <PAD>",
    "",
    " ",
]


@pytest.fixture(scope="module")
def cr_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("command-r"))


@pytest.fixture(scope="module")
def cmd3_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("cmd3"), templates="cmd3")


@pytest.fixture(scope="module")
def tok(cr_dir):
    return Tokenizer.from_dir(cr_dir)


@pytest.fixture(scope="module")
def ref(cr_dir):
    return load_reference(cr_dir)


# ------------------------------------------------------------------------------------------------ encode


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok, ref, text):
    assert tok.encode(text) == ref.encode(text)
    assert tok.encode(text, add_bos=False) == ref.encode(text, add_special_tokens=False)


def test_bos_added_exactly_once_and_quirk_never_leaks(tok, cr_dir):
    eot = tok.token_to_id("<|END_OF_TURN_TOKEN|>")
    eos = tok.token_to_id("<EOS_TOKEN>")
    # The factory really reproduces the real file's post-processor: the raw library appends end-of-turn + EOS...
    raw = tok._backend.encode("Hello world", add_special_tokens=True).ids
    assert raw[0] == tok.bos_id and raw[-2:] == [eot, eos]
    # ...and we never do.
    for text in TEXTS:
        if "<" in text:
            continue
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id == 5
        assert ids.count(tok.bos_id) == 1
        assert eot not in ids and eos not in ids
        assert tok.encode(text, add_bos=False) == ids[1:]


def test_transformers_keeps_the_raw_post_processor(cr_dir, tok):
    """Documents a transformers 5 behaviour the CLI must not copy: with tokenizer.json present it ignores
    add_bos_token/add_eos_token from tokenizer_config.json and uses the file's post-processor as is."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(cr_dir))
    ids = plain.encode("Hello world")
    assert ids[-2:] == [tok.token_to_id("<|END_OF_TURN_TOKEN|>"), tok.token_to_id("<EOS_TOKEN>")]
    assert tok.encode("Hello world") == ids[:-2]


def test_special_token_strings_become_single_ids(tok):
    ids = tok.encode("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>hi<|END_OF_TURN_TOKEN|>", add_bos=False)
    assert ids[:2] == [tok.token_to_id("<|START_OF_TURN_TOKEN|>"), tok.token_to_id("<|USER_TOKEN|>")]
    assert ids[-1] == tok.token_to_id("<|END_OF_TURN_TOKEN|>")
    assert tok.encode("<BOS_TOKEN>", add_bos=False) == [5]


def test_digits_are_split_individually(tok):
    ids = tok.encode("333333333", add_bos=False)
    assert len(ids) == 9 and len(set(ids)) == 1


# ------------------------------------------------------------------------------------------------ attributes


def test_attributes_command_r(tok):
    assert (tok.bos_token, tok.bos_id) == ("<BOS_TOKEN>", 5)
    assert tok.eos_token == "<|END_OF_TURN_TOKEN|>"
    assert tok.eos_id == tok.token_to_id("<|END_OF_TURN_TOKEN|>")
    assert tok.token_to_id("<EOS_TOKEN>") == 6
    # Command R has no <|END_RESPONSE|>: stop on end-of-turn and on <EOS_TOKEN>.
    assert tok.token_to_id("<|END_RESPONSE|>") is None
    assert tok.stop_ids == {tok.token_to_id("<|END_OF_TURN_TOKEN|>"), 6}
    assert tok.vocab_size == max(tok._backend.get_vocab().values()) + 1
    assert tok.id_to_token(tok.vocab_size - 1) == "<|EXTRA_9_TOKEN|>"
    assert sorted(tok.chat_templates) == ["default", "rag", "tool_use"]


def test_attributes_cmd3(cmd3_dir):
    tok = Tokenizer.from_dir(cmd3_dir)
    end_response = tok.token_to_id("<|END_RESPONSE|>")
    assert end_response is not None
    assert tok.stop_ids == {tok.token_to_id("<|END_OF_TURN_TOKEN|>"), end_response, 6}
    assert list(tok.chat_templates) == ["default"]


def test_vocab_size_matches_transformers(tok, ref):
    assert tok.vocab_size == len(ref)


def test_special_tokens_map_matches_transformers(tok, ref):
    assert tok.special_tokens_map == ref.special_tokens_map


def test_special_tokens_defaults_without_config(cr_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((cr_dir / "tokenizer.json").read_bytes())
    tok = Tokenizer.from_dir(tmp_path)
    assert (tok.bos_id, tok.eos_token) == (5, "<|END_OF_TURN_TOKEN|>")  # CohereTokenizer's defaults
    assert tok.chat_templates == {}


# ------------------------------------------------------------------------------------------------ decode


@pytest.mark.parametrize("text", TEXTS)
def test_decode_roundtrip_and_matches_transformers(tok, ref, text):
    ids = tok.encode(text, add_bos=False)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    assert tok.decode(ids) == ref.decode(ids)


def test_decode_skip_special_tokens_drops_every_control_token(tok):
    ids = tok.encode("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><EOS_TOKEN>")
    assert tok.decode(ids) == (
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><EOS_TOKEN>"
    )
    assert tok.decode(ids, skip_special_tokens=True) == "Hi there"


def test_decode_ignores_ids_past_the_vocabulary(tok):
    # Real models have 256000 embedding rows for 255029 tokenizer ids; sampling a padding row must not crash.
    ids = tok.encode("Hello", add_bos=False)
    assert tok.decode([*ids, tok.vocab_size, tok.vocab_size + 500, 255999]) == "Hello"


# ------------------------------------------------------------------------------------------------ streaming

STREAM_TEXTS = [t for t in TEXTS if t] + ["😁😁😁 ～～ 我想在apple工作1314151天", "ខ្មែរ🇫🇷e\u0301"]


def _stream(tok, ids):
    dec = tok.stream_decoder()
    deltas = [dec.step(i) for i in ids]
    deltas.append(dec.flush())
    return deltas


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_deltas_join_to_full_decode_without_broken_chars(tok, text):
    ids = tok.encode(text, add_bos=False)
    deltas = _stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in d for d in deltas)


def test_stream_really_splits_multibyte_characters(tok):
    """Guard for the test above: the small vocabulary must cut some characters across tokens, so that the
    decoder has something to hold back."""
    ids = tok.encode("😁 我想在apple工作 ខ្មែរ", add_bos=False)
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    deltas = _stream(tok, ids)
    assert "" in deltas[:-1]  # at least one step held its bytes back


def test_stream_control_tokens_produce_no_text(tok):
    ids = tok.encode("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi 😁<|END_OF_TURN_TOKEN|><EOS_TOKEN>")
    deltas = _stream(tok, ids)
    assert "".join(deltas) == "Hi 😁"
    assert deltas[0] == deltas[1] == deltas[2] == ""  # BOS and the two turn markers


def test_stream_flush_emits_an_incomplete_character(tok):
    ids = tok.encode("😁", add_bos=False)
    assert len(ids) > 1
    dec = tok.stream_decoder()
    assert [dec.step(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.flush() == tok.decode(ids[:-1]) and "\ufffd" in tok.decode(ids[:-1])
    assert dec.flush() == ""


def test_stream_ignores_ids_past_the_vocabulary(tok):
    dec = tok.stream_decoder()
    assert dec.step(tok.vocab_size + 3) == ""
    assert "".join(dec.step(i) for i in tok.encode("ok", add_bos=False)) + dec.flush() == "ok"


# ------------------------------------------------------------------------------------------------ chat templates


def test_chat_template_string_means_default(cr_dir, tmp_path):
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((cr_dir / name).read_bytes())
    config = json.loads((cr_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ bos_token }}{{ messages[0]['content'] }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "<BOS_TOKEN>x"
    # transformers 5 gives chat_template.jinja priority over tokenizer_config.json
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0]['content'] }}")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "Jx"


def test_tools_pick_the_tool_use_template(tok):
    messages = [{"role": "user", "content": "hi"}]
    assert "## Available Tools" in tok.apply_chat_template(messages, tools=[])
    assert "## Available Tools" not in tok.apply_chat_template(messages)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_corrupt_tokenizer_config(cr_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((cr_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_dir(tmp_path)


def test_missing_named_template_lists_the_available_ones(tok):
    with pytest.raises(TemplateError, match="'grounded'.*default, rag, tool_use"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], template="grounded")


def test_no_chat_template(tmp_path):
    make_tokenizer(tmp_path, templates=None)
    tok = Tokenizer.from_dir(tmp_path)
    with pytest.raises(TemplateError, match="no chat template: use `cohere generate`"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("hostile", ["fifo", "deep", "huge_template", "template_fifo"])
def test_hostile_tokenizer_files_are_one_error_never_a_hang_or_a_memory_bomb(tmp_path, hostile):
    """A checkpoint's tokenizer files are untrusted: a FIFO (would block forever), JSON nested 100,000 deep, a
    chat template over its bound: each is one TokenizerError."""
    import os

    from cohere_cli.engine import tokenizer as tk

    make_tokenizer(tmp_path)
    if hostile == "fifo":
        (tmp_path / "tokenizer.json").unlink()
        os.mkfifo(tmp_path / "tokenizer.json")  # nobody ever writes: opening it blocking would hang
    elif hostile == "deep":
        (tmp_path / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)
    elif hostile == "huge_template":
        (tmp_path / "chat_template.jinja").write_text("x" * (tk.MAX_TEMPLATE_BYTES + 1))
    else:  # a named template that is a FIFO
        (tmp_path / "additional_chat_templates").mkdir()
        os.mkfifo(tmp_path / "additional_chat_templates" / "rag.jinja")
    with pytest.raises(TokenizerError, match="not a regular file|nests too deep|over the"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("where", ["chat_template.jinja", "additional_chat_templates/tool_use.jinja",
                                   "additional_chat_templates"])
def test_template_files_must_stay_inside_the_checkpoint(tmp_path, where):
    """A template file (or its folder) that is a symlink out of the checkpoint is refused, one line: rendered, the
    file (a secret, /etc/passwd) would go into a prompt sent to an endpoint server."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET {{ bos_token }}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tool_use.jinja").symlink_to(secret)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    make_tokenizer(ckpt)
    if where == "additional_chat_templates":
        (ckpt / where).symlink_to(outside)
    else:
        (ckpt / where).parent.mkdir(exist_ok=True)
        (ckpt / where).symlink_to(secret)
    with pytest.raises(TokenizerError, match="resolves outside its folder") as e:
        Tokenizer.from_dir(ckpt)
    assert "\n" not in str(e.value) and "TOP SECRET" not in str(e.value)


def test_template_symlinks_inside_the_checkpoint_still_work(tmp_path):
    make_tokenizer(tmp_path)
    (tmp_path / "real.jinja").write_text("R{{ messages[0]['content'] }}")
    (tmp_path / "chat_template.jinja").symlink_to("real.jinja")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "Rx"


@pytest.mark.parametrize("entry, expected", [
    ([{"name": ["x"], "template": "y"}, {"name": "default", "template": "D"}], {"default": "D"}),
    ([{"name": "default", "template": ["x"]}, {"name": "rag", "template": "R"}], {"rag": "R"}),
    ([{"name": {"a": 1}, "template": {"b": 2}}, "junk", 3, None, {"name": "default"}], {}),
    ({"default": "D", "rag": ["x"], "tool_use": {"t": 1}}, {"default": "D"}),
    (["not", "entries"], {}),
    (42, {}),
])
def test_malformed_chat_template_entries_are_left_out(cr_dir, tmp_path, entry, expected):
    """tokenizer_config.json's chat_template is untrusted: entries whose name or template is not a string (an
    unhashable list as a name, a list as a template) are dropped instead of a TypeError."""
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((cr_dir / name).read_bytes())
    config = json.loads((cr_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = entry
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.chat_templates == expected
    if "default" in expected:
        assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "D"
