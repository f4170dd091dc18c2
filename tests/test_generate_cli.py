"""`cohere generate --json` and `cohere chat --prompt --json` end to end, against transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cohere_cli.engine.tokenizer import Tokenizer
from factory_checkpoint import make_checkpoint, reference_model
from factory_tokenizer import load_reference

PROMPT = "The quick brown fox 42 jumps over the lazy dog, and then"
CASES = {
    "cohere-gqa": dict(model_type="cohere"),
    "cohere-qknorm": dict(model_type="cohere", qk_norm=True, heads=8, kv_heads=2, hidden=128),
    "cohere-mha-fp16-released": dict(model_type="cohere", kv_heads=None, dtype="float16", spelling="released"),
    "cohere-bf16-extra-rows": dict(model_type="cohere", dtype="bfloat16", extra_rows=40),
    "cohere2-window-released": dict(model_type="cohere2", sliding_window=8, layers=4, spelling="released",
                                    templates="cmd3"),
    "cohere2-window-bf16": dict(model_type="cohere2", sliding_window=8, layers=8, dtype="bfloat16",
                                templates="cmd3"),
}
# Command A+'s shape in small: a cohere2_vision wrapper around a cohere2_moe (shared expert, dense prefix); only
# the greedy-parity test runs on it (the streaming and seeding tests do not depend on the architecture)
GREEDY_ONLY = {
    "vision-moe-bf16": dict(model_type="cohere2_moe", sliding_window=8, layers=4, templates="cmd3", vision=True,
                            dtype="bfloat16", moe=dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                                                       first_k_dense_replace=1, prefix_dense_intermediate_size=96)),
}


def cohere(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True)


def cohere_json(*args: str) -> dict:
    r = cohere(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # stdout holds exactly one JSON object


@pytest.fixture(scope="module", params=sorted(CASES))
def ckpt(request, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp(request.param), **CASES[request.param])


def reference_greedy(ckpt, prompt_ids: list[int], n: int) -> list[int]:
    ref = reference_model(ckpt)
    tok = load_reference(ckpt)
    stop = [tok.convert_tokens_to_ids(t) for t in ("<|END_OF_TURN_TOKEN|>", "<|END_RESPONSE|>", "<EOS_TOKEN>")]
    stop = [s for s in stop if s is not None and s != tok.unk_token_id]
    n_tok = len(tok)
    rows = ref.config.get_text_config().vocab_size  # a cohere2_vision wrapper keeps it in text_config
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=stop, pad_token_id=0,
            # embedding rows past the tokenizer are padding: we never emit them, nor may the reference
            suppress_tokens=list(range(n_tok, rows)) or None,
        )
    return out[0, len(prompt_ids):].tolist()


def test_generate_greedy_tokens_match_transformers(ckpt):
    check_greedy(ckpt)


@pytest.mark.parametrize("name", sorted(GREEDY_ONLY))
def test_generate_greedy_tokens_match_transformers_on_a_2026_checkpoint(tmp_path, name):
    check_greedy(make_checkpoint(tmp_path / name, **GREEDY_ONLY[name]))


def check_greedy(ckpt) -> None:
    rec = cohere_json("generate", str(ckpt), PROMPT, "--max-tokens", "24", "--dtype", "float32")
    ref_tok = load_reference(ckpt)
    assert rec["prompt_ids"] == ref_tok.encode(PROMPT)  # BOS once, no <|END_OF_TURN_TOKEN|><EOS_TOKEN>
    assert rec["prompt_ids"].count(ref_tok.bos_token_id) == 1
    # counts as OpenAI's usage names them, the ids beside them
    assert rec["prompt_tokens"] == len(rec["prompt_ids"]) and rec["completion_tokens"] == len(rec["token_ids"])
    expected = reference_greedy(ckpt, rec["prompt_ids"], 24)
    assert len(rec["token_ids"]) >= 8, "too short to compare: pick another prompt"
    assert rec["token_ids"] == expected[: len(rec["token_ids"])]
    assert rec["finish_reason"] == ("length" if rec["completion_tokens"] == 24 else "stop")
    # the stream shows no control tokens (a random model emits <|USER_TOKEN|> & co.); the rest decodes as transformers
    ours = Tokenizer.from_dir(ckpt)
    assert rec["text"] == ours.decode(rec["token_ids"], skip_special_tokens=True)
    plain = [t for t in rec["token_ids"] if t not in ours.control_ids]
    assert rec["text"] == ref_tok.decode(plain)
    assert rec["prefill_tokens_per_s"] > 0 and rec["decode_tokens_per_s"] > 0


# streaming and seeding do not depend on the architecture: one checkpoint of each model type (each case costs two
# CLI starts; the greedy-parity test above covers every case)
ONE_PER_TYPE = pytest.mark.parametrize("ckpt", ["cohere-gqa", "cohere2-window-bf16"], indirect=True)


@ONE_PER_TYPE
def test_generate_streams_text_to_stdout_and_stats_to_stderr(ckpt):
    r = cohere("generate", str(ckpt), PROMPT, "--max-tokens", "12", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    rec = cohere_json("generate", str(ckpt), PROMPT, "--max-tokens", "12", "--dtype", "float32")
    assert r.stdout == rec["text"] + "\n"  # nothing but model text (and a final newline) on stdout
    assert "tok/s" in r.stderr and "prompt tokens" in r.stderr


@ONE_PER_TYPE
def test_seeded_sampling_is_reproducible(ckpt):
    args = ("generate", str(ckpt), PROMPT, "--max-tokens", "16", "--temperature", "0.9", "--top-k", "50",
            "--top-p", "0.95", "--min-p", "0.01", "--repetition-penalty", "1.1", "--seed", "7")
    assert cohere_json(*args)["token_ids"] == cohere_json(*args)["token_ids"]


# ---- chat: prompt ids equal transformers' apply_chat_template ------------------------------------------------------
@pytest.fixture(scope="module")
def chat_ckpts(tmp_path_factory):
    return {
        "command-r": make_checkpoint(tmp_path_factory.mktemp("chat-r"), templates="command-r",
                                     max_position_embeddings=4096),
        "cmd3": make_checkpoint(tmp_path_factory.mktemp("chat-cmd3"), model_type="cohere2", sliding_window=8,
                                templates="cmd3"),
    }


HISTORY = [
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help?"},
]


@pytest.mark.parametrize("family", ["command-r", "cmd3"])
@pytest.mark.parametrize("system", [None, "You are terse."])
@pytest.mark.parametrize("with_history", [False, True])
def test_chat_prompt_ids_equal_apply_chat_template(chat_ckpts, tmp_path, family, system, with_history):
    ckpt = chat_ckpts[family]
    args = ["chat", str(ckpt), "--prompt", "What is 12 + 30?", "--max-tokens", "4"]
    messages = []
    if system:
        args += ["--system", system]
        messages.append({"role": "system", "content": system})
    if with_history:
        hist = tmp_path / "hist.json"
        hist.write_text(json.dumps({"messages": HISTORY}))
        args += ["--history", str(hist)]
        messages += HISTORY
    messages.append({"role": "user", "content": "What is 12 + 30?"})
    rec = cohere_json(*args)
    ref = load_reference(ckpt)
    expected = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert rec["prompt_ids"] == list(expected) and rec["prompt_tokens"] == len(expected)
    assert rec["prompt_ids"].count(ref.bos_token_id) == 1
    assert rec["completion_tokens"] == len(rec["token_ids"]) <= 4


def test_chat_named_template(chat_ckpts):
    ckpt = chat_ckpts["command-r"]
    rec = cohere_json("chat", str(ckpt), "--prompt", "Find the weather", "--template", "tool_use", "--max-tokens", "2")
    ref = load_reference(ckpt)
    expected = ref.apply_chat_template([{"role": "user", "content": "Find the weather"}], chat_template="tool_use",
                                       tools=[], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert rec["prompt_ids"] == list(expected)


# ---- bad input ------------------------------------------------------------------------------------------------------
def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("  ", "\x1b[2m"))]
    errors = [l for l in lines if l.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def test_prompt_longer_than_context(tmp_path):
    ckpt = make_checkpoint(tmp_path, max_position_embeddings=32)
    line = one_error_line(cohere("generate", str(ckpt), "word " * 80))
    assert "context is 32" in line


def test_unknown_template_name(chat_ckpts):
    line = one_error_line(cohere("chat", str(chat_ckpts["command-r"]), "--prompt", "hi", "--template", "nope"))
    assert "nope" in line and "default" in line


def test_bad_history_file(chat_ckpts, tmp_path):
    f = tmp_path / "h.json"
    f.write_text('{"messages": [{"role": "wizard", "content": "x"}]}')
    line = one_error_line(cohere("chat", str(chat_ckpts["command-r"]), "--prompt", "hi", "--history", str(f)))
    assert "message 0" in line


def test_corrupt_weights_via_cli(tmp_path):
    ckpt = make_checkpoint(tmp_path)
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    line = one_error_line(cohere("generate", str(ckpt), "hi"))
    assert "corrupt or truncated" in line


def test_unknown_model_type_via_cli(tmp_path):
    ckpt = make_checkpoint(tmp_path)
    c = json.loads((ckpt / "config.json").read_text())
    c["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(c))
    assert "not a Cohere architecture" in one_error_line(cohere("generate", str(ckpt), "hi"))
