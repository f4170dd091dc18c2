"""Reasoning in `cohere chat` (issue 19): thinking apart from the answer, --think/--no-think, --think-budget,
--hide-thinking, --json's `thinking`, and thinking in the history as the template expects.

The reasoning template is the real 2026 `Cohere2MoE.jinja` (North Mini Code: `reasoning` switch, on by default,
`<|START_TEXT|>` bodies, past thinking written back) from the llama.cpp vendored in llama-cpp-python's sdist (spec
section 8), fetched once and cached; without the registry, a minimal template with the same switch, generation
prompt and history rule (REASONING below) stands in, and the test that needs the real one skips. Answers are
scripted (tests/scripted_cli.py); --think-budget is checked on a real tiny checkpoint's generation loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from factory_checkpoint import make_checkpoint
from factory_tokenizer import load_reference

from cohere_cli.chat.session import think_kwargs
from cohere_cli.engine.template import builtin_template
from cohere_cli.engine.thinking import has_thinking, think_budget, think_switch
from cohere_cli.engine.tokenizer import Tokenizer

SCRIPTED = Path(__file__).with_name("scripted_cli.py")
SDIST = "llama-cpp-python==0.3.36"
MEMBER = "vendor/llama.cpp/models/templates/Cohere2MoE.jinja"
# A minimal template with the real one's switch, generation prompt and history rule (Cohere2MoE.jinja).
REASONING = """{%- set reasoning = reasoning if reasoning is not undefined else true -%}
{{ bos_token }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><|START_TEXT|>You are a model.<|END_TEXT|><|END_OF_TURN_TOKEN|>
{%- for message in messages %}
{%- if message.role == 'user' %}<|START_OF_TURN_TOKEN|><|USER_TOKEN|><|START_TEXT|>{{ message.content }}<|END_TEXT|><|END_OF_TURN_TOKEN|>
{%- elif message.role == 'system' %}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><|START_TEXT|>{{ message.content }}<|END_TEXT|><|END_OF_TURN_TOKEN|>
{%- elif message.role == 'assistant' %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>
{%- if message.reasoning_content %}<|START_THINKING|>{{ message.reasoning_content }}<|END_THINKING|>{% endif -%}
<|START_TEXT|>{{ message.content }}<|END_TEXT|><|END_OF_TURN_TOKEN|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% if reasoning %}<|START_THINKING|>{% else %}<|START_THINKING|><|END_THINKING|>{% endif %}{% endif %}"""
THOUGHT = "The user asks for a capital. France's is Paris."
RULES = [
    {"tail": ["capital", "<|START_THINKING|><|END_THINKING|>"], "say": "<|START_TEXT|>Paris, quickly.<|END_TEXT|>"},
    {"tail": ["capital"], "say": THOUGHT + "<|END_THINKING|><|START_TEXT|>Paris.<|END_TEXT|>"},
    {"tail": ["thanks"], "say": "Short.<|END_THINKING|><|START_TEXT|>You are welcome.<|END_TEXT|>"},
]


def real_template() -> str | None:
    """Cohere2MoE.jinja out of the cached sdist; None when it cannot be had (no registry)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cohere-cli-tests"
    file = cache / "Cohere2MoE.jinja"
    if not file.is_file():
        with tempfile.TemporaryDirectory() as d:
            try:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                "-d", d, SDIST], capture_output=True, timeout=120, check=True)
                (sdist,) = Path(d).glob("*.tar.gz")
                with tarfile.open(sdist) as tar:
                    member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
                    text = tar.extractfile(member).read()
            except (subprocess.SubprocessError, OSError, ValueError, StopIteration, tarfile.TarError):
                return None
        cache.mkdir(parents=True, exist_ok=True)
        file.write_bytes(text)
    return file.read_text(encoding="utf-8")


def with_template(folder: Path, template: str) -> Path:
    """The cmd3 test tokenizer plus <|START_TEXT|> / <|END_TEXT|> (the reasoning templates' bodies), `template` its
    chat template."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    next_id = max(t["id"] for t in tok["added_tokens"]) + 1
    for i, content in enumerate(("<|START_TEXT|>", "<|END_TEXT|>")):
        entry = {"content": content, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                 "special": False}
        tok["added_tokens"].append({"id": next_id + i, **entry})
        tok["model"]["vocab"][content] = next_id + i
        cfg["added_tokens_decoder"][str(next_id + i)] = {k: v for k, v in entry.items()}
    cfg["chat_template"] = template
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("reasoning")
    real = real_template()
    ck = make_checkpoint(base / "ck", model_type="cohere2", templates="cmd3", extra_rows=2, hidden=32, layers=1,
                         heads=2, kv_heads=1, intermediate=64, max_position_embeddings=1024)
    with_template(ck, real or REASONING)
    (base / "rules.json").write_text(json.dumps({"rules": RULES}))
    return {"base": base, "ck": ck, "real": real}


def cohere(setup, *args, stdin: str | None = None, prompts: Path | None = None):
    env = dict(os.environ, COHERE_CLI_HOME=str(setup["base"] / "home"), COLUMNS="120")
    if prompts:
        env["SCRIPTED_PROMPTS"] = str(prompts)
    return subprocess.run([sys.executable, str(SCRIPTED), str(setup["base"] / "rules.json"), "chat",
                           str(setup["ck"]), *args], input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_switch_and_phase_detection(setup):
    assert think_switch(REASONING) == "reasoning"
    if setup["real"]:
        assert think_switch(setup["real"]) == "reasoning" and has_thinking(setup["real"])
    for name in ("cmd3-default", "cmd3-rag", "cmd3-tool_use"):  # a thinking phase (the plan), no switch
        assert has_thinking(builtin_template(name)) and think_switch(builtin_template(name)) is None
    assert not has_thinking(builtin_template("command-r-default"))


@pytest.mark.parametrize("which", ["minimal", "real"])
def test_think_switch_and_history_render_like_transformers(setup, tmp_path, which):
    """--think/--no-think set the template's `reasoning` as transformers' apply_chat_template(reasoning=...) does,
    and an assistant message's reasoning_content renders as there: written back by the reasoning template, left out
    by cmd3's plain answers."""
    template = REASONING if which == "minimal" else setup["real"]
    if template is None:
        pytest.skip(f"no registry: {SDIST}'s sdist (Cohere2MoE.jinja) cannot be fetched")
    folder = make_checkpoint(tmp_path / "t", templates="cmd3", tokenizer=True, hidden=16, layers=1, heads=2,
                             kv_heads=1, intermediate=32)
    with_template(folder, template)
    ours, ref = Tokenizer.from_dir(folder), load_reference(folder)
    history = [{"role": "user", "content": "capital of France?"},
               {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT},
               {"role": "user", "content": "thanks"}]
    texts = {}
    for think in (None, True, False):
        kw = think_kwargs(ours, None, think)
        assert kw == ({} if think is None else {"reasoning": think})
        mine = ours.apply_chat_template(history, **kw)
        theirs = ref.apply_chat_template(history, tokenize=False, add_generation_prompt=True, **kw)
        assert mine == theirs
        assert ours.encode(mine, add_bos=False) == ref.encode(theirs, add_special_tokens=False)
        texts[think] = mine
    assert texts[None] == texts[True] and texts[True].endswith("<|CHATBOT_TOKEN|><|START_THINKING|>")
    assert texts[False] == texts[True] + "<|END_THINKING|>"
    assert f"<|START_THINKING|>{THOUGHT}<|END_THINKING|>" in texts[True]  # this template writes past thinking back

    cmd3 = make_checkpoint(tmp_path / "c", templates="cmd3", hidden=16, layers=1, heads=2, kv_heads=1,
                           intermediate=32)
    mine = Tokenizer.from_dir(cmd3).apply_chat_template(history)
    assert mine == load_reference(cmd3).apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert THOUGHT not in mine  # cmd3 renders a plan only before tool calls


def test_thinking_apart_hidden_and_json(setup, tmp_path):
    r = cohere(setup, "-p", "capital of France?")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Paris.\n"  # the answer alone on stdout
    assert THOUGHT in r.stderr  # the thinking, dimmed, on stderr

    r = cohere(setup, "-p", "capital of France?", "--hide-thinking")
    assert r.returncode == 0 and r.stdout == "Paris.\n"
    assert THOUGHT not in r.stderr and "(thought for" in r.stderr

    r = cohere(setup, "-p", "capital of France?", "--json")
    record = json.loads(r.stdout)
    assert (record["thinking"], record["text"]) == (THOUGHT, "Paris.")

    prompts = tmp_path / "prompts.jsonl"
    r = cohere(setup, "-p", "capital of France?", "--no-think", "--json", prompts=prompts)
    record = json.loads(r.stdout)
    assert (record["thinking"], record["text"]) == ("", "Paris, quickly.")
    assert json.loads(prompts.read_text()).endswith("<|START_THINKING|><|END_THINKING|>")


def test_history_keeps_thinking_as_the_template_expects(setup, tmp_path):
    """The REPL stores the answer as content and the thinking as reasoning_content; the next prompt is exactly
    transformers' rendering of those messages; /save keeps them and --history renders the same prompt again."""
    prompts, saved = tmp_path / "prompts.jsonl", tmp_path / "chat.json"
    r = cohere(setup, stdin=f"capital of France?\nthanks\n/save {saved}\n", prompts=prompts)
    assert r.returncode == 0, r.stderr
    assert "You are welcome." in r.stdout and THOUGHT not in r.stdout
    messages = json.loads(saved.read_text())["messages"]
    assert messages[:3] == [{"role": "user", "content": "capital of France?"},
                            {"role": "assistant", "content": "Paris.", "reasoning_content": THOUGHT},
                            {"role": "user", "content": "thanks"}]
    second = [json.loads(line) for line in prompts.read_text().splitlines()][1]
    ref = load_reference(setup["ck"])
    assert second == ref.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)

    again = tmp_path / "again.jsonl"
    r = cohere(setup, "--history", str(saved), "-p", "capital of France?", prompts=again)
    assert r.returncode == 0, r.stderr
    assert json.loads(again.read_text()).startswith(second)


def test_think_budget_forces_the_end_of_thinking(setup):
    """After N thinking tokens the loop feeds <|END_THINKING|><|START_TEXT|> as the next tokens: they are yielded
    at positions N+1, N+2 and the model's next forwards take them as input."""
    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.sampling import SamplingParams
    from cohere_cli.weights.checkpoint import load_model

    tok = Tokenizer.from_dir(setup["ck"])
    model = load_model(setup["ck"], dtype="float32").model
    fed: list[list[int]] = []

    class Recording:  # the model, with each forward's input ids written down
        def __getattr__(self, name):
            return getattr(model, name)

        def __call__(self, ids, *args, **kwargs):
            fed.append(ids[0].tolist())
            return model(ids, *args, **kwargs)

    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "capital of France?"}]), add_bos=False)
    start, end, text = (tok.token_to_id(t) for t in ("<|START_THINKING|>", "<|END_THINKING|>", "<|START_TEXT|>"))
    assert ids[-1] == start
    for n in (3, 0):
        fed.clear()
        budget = think_budget(tok, n, ids, tools=False)
        out = [r.token for r in stream_generate(Recording(), tok, ids, SamplingParams(temperature=0.0), n + 4,
                                                stop_ids=set(), think=budget) if r.token is not None]
        assert end not in out[:n] and out[n:n + 2] == [end, text] and budget.cut
        decode_inputs = fed[1:]  # after the prefill, one forward per token, fed the token before it
        assert decode_inputs[n] == [end] and decode_inputs[n + 1] == [text]
    # with tools the model may act after thinking: only <|END_THINKING|> is forced
    assert think_budget(tok, 2, ids, tools=True).after == []


def test_endpoint_refuses_think_budget(setup):
    r = cohere(setup, "--endpoint", "http://127.0.0.1:9/v1", "-p", "hi", "--think-budget", "5")
    assert r.returncode == 2 and "--think-budget works with a local model only" in r.stderr
