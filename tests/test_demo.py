"""The built-in `demo` model (cohere_cli/data/demo, trained by scripts/train_demo.py).

It is also the regression test of the model core on a *trained* network: greedy answers must name the right
command, and our logits must match transformers' on the same weights.
Every command, flag and slash command the demo's answers name must exist in the shipped app: when the CLI
changes, retrain the demo (scripts/train_demo.py) rather than letting it teach commands that do not exist.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import typer

import cohere_cli
from cohere_cli.cli import app
from cohere_cli.engine.tokenizer import read_chat_templates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import demo_data  # noqa: E402
from eval_demo import tool_turn  # noqa: E402 - the eval's greedy tool turn, one copy for both

DEMO = Path(cohere_cli.__file__).parent / "data" / "demo"
NAMED = demo_data.named_commands_and_flags()
# A demo trained with tool use (scripts/train_demo.py's shipped STAGES, --tool-convs N) has Command R's tool_use
# template beside its default one, as the shipped one does; a help-desk-only retrain (--steps 150 ...) has not.
HAS_TOOLS = "tool_use" in read_chat_templates(DEMO)
needs_tools = pytest.mark.skipif(not HAS_TOOLS, reason="the shipped demo was trained without tool use "
                                 "(scripts/train_demo.py --tool-convs N)")


# ---- files -------------------------------------------------------------------------------------------------------
def test_demo_files_are_a_bf16_cohere_checkpoint():
    from safetensors import safe_open

    cfg = json.loads((DEMO / "config.json").read_text())
    assert cfg["model_type"] == "cohere" and cfg["architectures"] == ["CohereForCausalLM"]
    assert cfg["max_position_embeddings"] == 8192 and cfg["tie_word_embeddings"] is True
    weights = DEMO / "model.safetensors"
    assert weights.stat().st_size <= 26 * 10**6  # "at most ~25 MB" inside the package
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied, like the releases
        assert {str(f.get_slice(k).get_dtype()) for k in keys} == {"BF16"}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (DEMO / name).is_file(), name


def test_demo_tokenizer_has_the_command_r_layout():
    from cohere_cli.engine.template import builtin_template
    from cohere_cli.engine.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(DEMO)
    ids = {t: tok.token_to_id(t) for t in ("<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>",
                                           "<EOS_TOKEN>")}
    assert list(ids.values()) == [0, 1, 2, 3, 4, 5, 6]
    eot = tok.token_to_id("<|END_OF_TURN_TOKEN|>")
    for t in ("<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"):
        assert tok.token_to_id(t) is not None, t
    assert tok.eos_id == eot and eot in tok.stop_ids
    conf = json.loads((DEMO / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "CohereTokenizer" and conf["add_bos_token"] and not conf["add_eos_token"]
    if HAS_TOOLS:  # named templates as Command R ships them: default and tool_use, no rag (it cannot ground answers)
        assert conf["chat_template"] == [{"name": "default", "template": builtin_template("command-r-default")},
                                         {"name": "tool_use", "template": builtin_template("command-r-tool_use")}]
        assert sorted(tok.chat_templates) == ["default", "tool_use"]
    else:
        assert conf["chat_template"] == builtin_template("command-r-default")
    gen = json.loads((DEMO / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (5, eot, 0)
    cfg = json.loads((DEMO / "config.json").read_text())
    assert cfg["vocab_size"] >= tok.vocab_size and cfg["eos_token_id"] == eot
    assert tok.decode(tok.encode("cohere quantize demo --bits 4", add_bos=False)) == "cohere quantize demo --bits 4"


# ---- loading and the chat template -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rt():
    from cohere_cli.engine.runtime import load_runtime

    return load_runtime(str(DEMO), "auto")


CONVERSATIONS = [
    [{"role": "user", "content": "How do I quantize a model?"}],
    [{"role": "system", "content": "Be concise."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi! Ask me about cohere-cli."},
     {"role": "user", "content": "  How do I leave the chat?  "}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "system-multi-turn"])
def test_chat_template_renders_like_transformers(rt, messages):
    from factory_tokenizer import load_reference

    ours = rt.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ours.startswith("<BOS_TOKEN>") and ours.endswith("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    ref = load_reference(DEMO)
    theirs = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    assert rt.tokenizer.encode(ours, add_bos=False) == ref.encode(theirs, add_special_tokens=False)


# ---- the trained network -------------------------------------------------------------------------------------------
def _answer(rt, question: str, max_tokens: int) -> str:
    from cohere_cli.engine.generate import stream_generate
    from cohere_cli.engine.sampling import SamplingParams

    prompt = rt.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = rt.tokenizer.encode(prompt, add_bos=False)
    return "".join(r.text for r in stream_generate(rt.model, rt.tokenizer, ids, SamplingParams(), max_tokens))


# Questions of the training set (eval_questions forces them into it) whose answers name the command early, so a
# short max_tokens keeps this fast.
_TRAIN_QS = dict((e, q) for q, e in reversed(demo_data.eval_questions()[0]))
GREEDY = [(_TRAIN_QS[e], e) for e in ("cohere models", "cohere models rm", "/exit", "--bits 8", "cohere bench")]


@pytest.mark.parametrize("question,expect", GREEDY)
def test_greedy_answer_names_the_command(rt, question, expect):
    answer = _answer(rt, question, 32)
    assert expect in answer, answer


def test_greedy_answer_is_a_sentence_and_stops(rt):
    answer = _answer(rt, _TRAIN_QS["/exit"], 64)
    assert answer[:1].isupper() and answer.rstrip().endswith("."), answer  # stopped at <|END_OF_TURN_TOKEN|>


def test_logits_match_transformers_on_the_trained_weights(rt):
    """The model core against the reference implementation, on a network whose argmaxes mean something."""
    import torch
    from transformers import AutoModelForCausalLM

    from cohere_cli.weights.checkpoint import load_model

    ours = load_model(DEMO, dtype="float32").model
    ref = AutoModelForCausalLM.from_pretrained(str(DEMO), dtype=torch.float32).eval()
    prompt = rt.tokenizer.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True)
    ids = torch.tensor([rt.tokenizer.encode(prompt, add_bos=False)])
    with torch.no_grad():
        a = ours(ids)
        b = ref(ids).logits
    assert (a - b).abs().max().item() < 1e-3
    assert torch.equal(a.argmax(-1), b.argmax(-1))


# ---- tool use: the built-in list_models tool ---------------------------------------------------------------------
def _list_models_schema() -> dict:
    from cohere_cli.chat.tools import load_tools

    return load_tools("list_models")[0].schema


def test_tool_data_is_what_the_tool_and_the_template_give():
    """The training data's list_models schema and result text are the built-in tool's, and its action is exactly
    what the tool_use template renders for that call in the history (so a chat replays what the model wrote)."""
    from cohere_cli.chat import tools
    from cohere_cli.engine.template import builtin_template, render_chat
    from cohere_cli.engine.toolcalls import template_messages

    assert demo_data.LIST_MODELS_SCHEMA == _list_models_schema()
    from cohere_cli.chat.models_tool import installed_models

    result = tools.run_tool(tools.load_tools("list_models")[0], {})
    assert installed_models()[0] == {"name": "demo", "builtin": True, "description": demo_data.DEMO_DESCRIPTION}
    assert demo_data.tool_result(installed_models()) == result
    call = {"id": "call_0", "type": "function", "function": {"name": "list_models", "arguments": "{}"}}
    history = [{"role": "user", "content": "which models do I have?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_0", "content": result}]
    text = render_chat(builtin_template("command-r-tool_use"), template_messages(history),
                       tools=[_list_models_schema()], special_tokens={"bos_token": "<BOS_TOKEN>"})
    assert "<|CHATBOT_TOKEN|>\n" + demo_data.ACTION + "\n<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><results>" in text


@needs_tools
def test_tool_prompt_fits_the_context(rt):
    prompt = rt.tokenizer.apply_chat_template([{"role": "user", "content": "which models do I have?"}],
                                              tools=[_list_models_schema()], add_generation_prompt=True)
    assert "def list_models() -> List[Dict]:" in prompt and prompt.endswith("<|CHATBOT_TOKEN|>")
    n = len(rt.tokenizer.encode(prompt, add_bos=False))
    assert n < 600, n  # the tokenizer was trained on tool prompts: ~2,600 characters in a few hundred tokens


@needs_tools
def test_demo_calls_list_models_when_asked_which_models_it_has(rt):
    text, parser = tool_turn(rt, [{"role": "user", "content": "which models do I have?"}], 64)
    assert not parser.failed and not parser.directly_answer, text
    assert [c["function"]["name"] for c in parser.tool_calls] == ["list_models"], text
    assert json.loads(parser.tool_calls[0]["function"]["arguments"]) == {}
    assert text.strip() == demo_data.ACTION, text  # and stops: the end of turn ends the action


@needs_tools
def test_demo_answers_with_the_models_of_the_result(rt):
    entries = [{"name": "acme/owl-notes-3b", "builtin": False, "architecture": "CohereForCausalLM",
                "parameters": 3000000000, "precision": "bf16"},
               {"name": "vega-chat-int8", "builtin": False, "architecture": "Cohere2ForCausalLM",
                "parameters": 8028033024, "precision": "int8"}]
    call = {"id": "call_0", "type": "function", "function": {"name": "list_models", "arguments": "{}"}}
    history = [{"role": "user", "content": "which models do I have?"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_0", "content": demo_data.tool_result(entries)}]
    text, parser = tool_turn(rt, history, 96)
    assert not parser.tool_calls and not parser.failed, text
    assert "acme/owl-notes-3b" in text and "vega-chat-int8" in text, text


@needs_tools
def test_demo_with_the_tool_still_answers_help_desk_questions_directly(rt):
    text, parser = tool_turn(rt, [{"role": "user", "content": _TRAIN_QS["cohere bench"]}], 32)
    assert not parser.tool_calls and not parser.failed and "cohere bench" in text, text


@needs_tools
def test_chat_with_list_models_end_to_end(tmp_path, monkeypatch):
    """The README's tool example on a fresh install: `cohere chat --tools list_models`, asked which models there
    are, shows the demo's call, runs the real tool on this store and answers with the names in its result."""
    import os
    import subprocess

    from cohere_cli import store

    home = tmp_path / "home"
    env = dict(os.environ, COHERE_CLI_HOME=str(home), COLUMNS="100")
    monkeypatch.setenv("COHERE_CLI_HOME", str(home))
    for name, precision in (("CohereLabs/c4ai-command-r7b-12-2024", "bf16"), ("owl-notes-nf4", "nf4")):
        with store.entry_tmpdir(name) as tmp:
            (tmp / "config.json").write_bytes((DEMO / "config.json").read_bytes())
            store.write_manifest(tmp, store.make_manifest(tmp, name=name, precision=precision))
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "chat", "--tools", "list_models", "--yes", "--json",
                        "-p", "Which models do I have?"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "tool call: list_models {}" in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool", "assistant"], out
    first = out["messages"][2]["content"].splitlines()[0]  # "3 installed models: a, b, c"
    names = first.split(": ", 1)[1].split(", ")
    assert names == ["demo", "CohereLabs/c4ai-command-r7b-12-2024", "owl-notes-nf4"], names
    assert all(n in out["text"] for n in names), out["text"]
    assert out["steps"] == 1


# ---- the demo as the default model -------------------------------------------------------------------------------
def test_demo_is_the_store_name_demo():
    from cohere_cli.store import resolve_model

    assert Path(resolve_model("demo")).resolve() == DEMO.resolve()


def test_generate_demo_works_from_the_cli():
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["generate", "demo", "Run cohere", "--max-tokens", "8"])
    assert r.exit_code == 0, r.output


def test_chat_without_model_uses_demo_on_a_fresh_store(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path))  # nothing used yet
    r = CliRunner().invoke(app, ["chat", "--prompt", _TRAIN_QS["/exit"], "--max-tokens", "24"])
    assert r.exit_code == 0, r.output
    assert "demo" in r.output and "/exit" in r.stdout  # output: stdout and stderr, where the choice is announced


# ---- what the demo teaches exists in the app ---------------------------------------------------------------------
# Typer >= 0.29 vendors its own click (typer._click): introspect by duck typing, not isinstance(click.Group).
def _tree() -> dict:
    """'cohere', 'cohere chat', 'cohere models rm', ... -> the click command behind it."""
    root = typer.main.get_command(app)
    out = {}

    def walk(cmd, path: str) -> None:
        out[path] = cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")

    walk(root, "cohere")
    return out


def _options(cmd) -> set[str]:
    settings = getattr(cmd, "context_settings", None) or {}
    names = set(settings.get("help_option_names", ["--help"]))  # click adds --help itself
    for p in cmd.params:
        if getattr(p, "param_type_name", None) == "option":
            names |= set(p.opts) | set(p.secondary_opts)
    return names


@pytest.mark.parametrize("command", sorted(NAMED["commands"]))
def test_named_command_exists(command):
    assert command in _tree(), f"the demo teaches `{command}`, which the app does not have"


@pytest.mark.parametrize("command,flag", sorted(NAMED["flags"]), ids=lambda v: v)
def test_named_flag_exists(command, flag):
    tree = _tree()
    assert command in tree, f"the demo teaches `{command} {flag}`, but there is no `{command}`"
    assert flag in _options(tree[command]), f"the demo teaches `{command} {flag}`, which the app does not have"


@pytest.mark.parametrize("slash", sorted(NAMED["slash"]))
def test_named_slash_command_exists(slash):
    """Chat (REPL) commands are not Typer commands: they must be defined as a string literal in the package."""
    pattern = re.compile(r"""["']""" + re.escape(slash) + r"""(?![\w-])""")
    sources = [p for p in Path(cohere_cli.__file__).parent.rglob("*.py")]
    assert any(pattern.search(p.read_text(encoding="utf-8")) for p in sources), (
        f"the demo teaches the chat command {slash}, which cohere_cli does not define"
    )


# ---- the data behind it ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_questions_are_in_training_and_paraphrases_are_not():
    demo_data.check_heldout()
    train_qs, heldout_qs = demo_data.eval_questions()
    assert len(train_qs) == 40 and len(heldout_qs) == 20
    asked = {m["content"] for c in demo_data.training_conversations(0) for m in c if m["role"] == "user"}
    keys = {demo_data.normalize(q) for q in asked}
    assert all(q in asked for q, _ in train_qs)
    assert not any(demo_data.normalize(q) in keys for q, _ in heldout_qs)


def test_every_answer_names_what_it_is_scored_on():
    for it in demo_data.INTENTS:
        if it.expect:
            for a in it.answers:
                assert it.expect in a, (it.name, a)
