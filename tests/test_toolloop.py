"""Tool use in `cohere chat --tools` (issue 19), end to end through the real command.

The model's answers are scripted (tests/scripted_cli.py): the real checkpoint, tokenizer and templates render every
prompt, the real tool loop parses the answer's tokens, runs real tools (a JSON `exec` tool and a .py tool) and feeds
the results back. Scripted rather than a tiny checkpoint overfit to write the calls: Command R's flow takes three
different answers conditioned on ~1,500-token prompts (the action, `directly-answer` after the results, then the
grounded answer), which a few hundred CPU steps on this machine do not learn reliably; the retrained demo (issue 19,
scripts/train_demo.py) is the real-model check. Each rule picks its answer from what the rendered prompt holds, so a
wrong render (no results, no rag instruction) gets no scripted answer and fails the test."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from factory_checkpoint import make_checkpoint
from openai_server import StubServer

from cohere_cli.chat.conversation import Conversation
from cohere_cli.errors import UsageError

SCRIPTED = Path(__file__).with_name("scripted_cli.py")
ANSI = re.compile(r"\x1b\][^\x07]*\x07|\x1b\[[0-9;?]*[ -/]*[@-~]|\r")

ACTION = 'Action: ```json\n[{"tool_name": "weather", "parameters": {"city": "Paris"}}, ' \
         '{"tool_name": "population", "parameters": {"city": "Paris"}}]\n```'
DIRECT = 'Action: ```json\n[\n    {\n        "tool_name": "directly-answer",\n        "parameters": {}\n    }\n]\n```'
GROUNDED = ("Relevant Documents: 0,1\nCited Documents: 0,1\nGrounded answer: It is <co: 0>sunny in Paris</co: 0> "
            "and <co: 1>2.1 million people</co: 1> live there.")
RULES_R = [
    {"tail": ["Carefully perform the following instructions"], "say": GROUNDED},  # the rag instruction
    {"tail": ["loop forever"], "say": 'Action: ```json\n[{"tool_name": "weather", "parameters": {"city": "Oslo"}}]\n```'},
    {"tail": ["<results>"], "say": DIRECT},  # results are in: done with tools
    {"tail": ["broken"], "say": 'Action: ```json\n[{"tool_name": "weather", "parameters": {"city": "Paris"]\n```'},
    {"tail": ["block"], "say": 'Action: ```json\n[{"tool_name": "block", "parameters": {"city": "Rome"}}]\n```'},
    {"tail": ["Paris"], "say": "I will look it up.\n" + ACTION},
    {"tail": ["thanks"], "say": "You are welcome."},
]
RULES_3 = [
    {"tail": ["<|START_TOOL_RESULT|>"], "say": "<|START_RESPONSE|>It is <co>sunny in Paris</co: 0:[0]>.<|END_RESPONSE|>"},
    {"tail": ["Paris"], "say": '<|START_THINKING|>I will check the weather.<|END_THINKING|><|START_ACTION|>'
                               '[{"tool_call_id": "0", "tool_name": "weather", "parameters": {"city": "Paris"}}]'
                               '<|END_ACTION|>'},
]
POPULATION = '''def population(city: str) -> str:
    """How many people live in a city.

    Args:
        city: The city.
    """
    return f"{city}: 2.1 million people"
'''
BLOCK = """import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(600)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("tools")
    small = dict(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, max_position_embeddings=8192)
    ck_r = make_checkpoint(base / "cr", **small)
    ck_3 = make_checkpoint(base / "c3", model_type="cohere2", templates="cmd3", **small)
    from cohere_cli.engine.template import builtin_template

    cfg = json.loads((ck_3 / "tokenizer_config.json").read_text())  # as R7B ships them: named templates
    cfg["chat_template"] = [{"name": n, "template": builtin_template(f"cmd3-{n}")} for n in ("default", "tool_use", "rag")]
    (ck_3 / "tokenizer_config.json").write_text(json.dumps(cfg))
    marker = base / "block.pid"
    (base / "block.py").write_text(BLOCK)
    tools = [
        {"type": "function", "function": {"name": "weather", "description": "The weather in a city.", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "description": "The city."}},
            "required": ["city"]}}, "exec": ["echo", "sunny in", "{city}"]},
        {"type": "function", "function": {"name": "block", "description": "Waits.", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "description": "The city."}}}},
         "exec": [sys.executable, str(base / "block.py"), str(marker)]},
    ]
    (base / "tools.json").write_text(json.dumps(tools))
    (base / "pytools.py").write_text(POPULATION)
    for name, rules in (("r.json", RULES_R), ("3.json", RULES_3)):
        (base / name).write_text(json.dumps({"rules": rules}))
    return {"base": base, "cr": ck_r, "c3": ck_3, "marker": marker,
            "tools": ["--tools", str(base / "tools.json"), "--tools", str(base / "pytools.py")]}


def env(setup, **extra):
    return dict(os.environ, COHERE_CLI_HOME=str(setup["base"] / "home"), COLUMNS="120", **extra)


def cohere(setup, script: str, *args, stdin: str | None = None, prompts: Path | None = None):
    extra = {"SCRIPTED_PROMPTS": str(prompts)} if prompts else {}
    return subprocess.run([sys.executable, str(SCRIPTED), str(setup["base"] / script), *args], input=stdin,
                          capture_output=True, text=True, env=env(setup, **extra), timeout=120)


def test_command_r_tool_loop_end_to_end(setup):
    """Action -> both tools run (exec and .py) -> results in <results> -> directly-answer -> the rag template with
    the results as documents -> a grounded answer with citations; --json holds the OpenAI-format messages."""
    prompts = setup["base"] / "prompts-r.jsonl"
    r = cohere(setup, "r.json", "chat", str(setup["cr"]), *setup["tools"], "--yes", "--json",
               "-p", "What is the weather in Paris?", prompts=prompts)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    m = out["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "tool", "assistant"]
    assert m[1]["content"] == "I will look it up."
    calls = m[1]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("weather", {"city": "Paris"}), ("population", {"city": "Paris"})]
    assert [(t["tool_call_id"], t["content"]) for t in m[2:4]] == [
        (calls[0]["id"], "sunny in Paris\n"), (calls[1]["id"], "Paris: 2.1 million people")]
    assert m[4]["content"] == out["text"] == GROUNDED and out["steps"] == 1
    assert "tool call: weather {\"city\": \"Paris\"}" in r.stderr and "→ Paris: 2.1 million people" in r.stderr
    rendered = [json.loads(line) for line in prompts.read_text().splitlines()]
    assert len(rendered) == 3  # the action, directly-answer, the grounded answer
    assert "def weather(city: str) -> List[Dict]" in rendered[0] and "<results>" not in rendered[0]
    assert "<results>\nsunny in Paris</results>" in rendered[1]
    assert "Document: 0\ntitle: weather {\"city\": \"Paris\"}\ntext: sunny in Paris" in rendered[2]
    assert '[1] weather {"city": "Paris"}' in r.stderr and '[2] population {"city": "Paris"}' in r.stderr


def test_a_tool_schema_without_descriptions_renders_with_command_r(setup):
    """OpenAI schemas often leave out descriptions and additionalProperties; Command R's template reads them without
    checking (UndefinedError), so the loop fills the template's defaults (chat/tools.template_tool, as serve does)."""
    bare = setup["base"] / "bare.json"
    bare.write_text(json.dumps([{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "where": {"type": "object", "properties": {"lat": {"type": "number"}}}}}},
        "exec": ["echo", "sunny in", "{city}"]}]))
    r = cohere(setup, "r.json", "chat", str(setup["cr"]), "--tools", str(bare), "--yes", "-p",
               "What is the weather in Paris?")
    assert r.returncode == 0, r.stderr
    assert "tool call: weather {\"city\": \"Paris\"}" in r.stderr and "→ sunny in Paris" in r.stderr, r.stderr


def test_cmd3_tool_loop_end_to_end(setup):
    """R7B / Command A: the plan and the action in <|START_ACTION|> blocks (control tokens), the results in a
    <|START_TOOL_RESULT|> turn, the answer in <|START_RESPONSE|> with cmd3 citations."""
    r = cohere(setup, "3.json", "chat", str(setup["c3"]), *setup["tools"], "--yes", "--json",
               "-p", "What is the weather in Paris?")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["messages"]
    assert m[1]["content"] is None and m[1]["tool_plan"] == "I will check the weather."
    assert m[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert m[2] == {"role": "tool", "tool_call_id": m[1]["tool_calls"][0]["id"], "content": "sunny in Paris\n"}
    assert m[3] == {"role": "assistant", "content": "It is <co>sunny in Paris</co: 0:[0]>."}
    assert "I will check the weather." in r.stderr  # the plan, shown apart (dimmed on a terminal)
    assert '[1] weather {"city": "Paris"}' in r.stderr  # <co>..</co: 0:[0]>: tool call 0's result


def test_malformed_call_save_load_and_replay(setup, tmp_path):
    """Piped REPL: malformed tool JSON is one error line and the session goes on; /save keeps the tool messages;
    a saved session replays exactly (the next prompt renders the same ids as in the session that saved it)."""
    saved = tmp_path / "chat.json"
    prompts = tmp_path / "a.jsonl"
    r = cohere(setup, "r.json", "chat", str(setup["cr"]), *setup["tools"], "--yes", prompts=prompts,
               stdin=f"this is broken\n/undo\nWhat is the weather in Paris?\n/save {saved}\nthanks\nloop forever\n")
    assert r.returncode == 0, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the model's tool call is malformed: the action's JSON is malformed"]
    # printed: the grounded answer with [n] marks (its sources on stderr), then the next answer
    assert r.stdout.endswith("I will look it up.\nIt is sunny in Paris[1] and 2.1 million people[2] live there.\n"
                             "You are welcome.\n")
    data = json.loads(saved.read_text())
    assert [x["role"] for x in data["messages"]] == ["user", "assistant", "tool", "tool", "assistant"]
    assert Conversation.load(saved).to_json() == data  # loaded back whole
    assert "stopped after 5 rounds of tool calls (--max-steps 5): ask again to go on" in r.stderr
    assert r.stderr.count("tool call: weather {\"city\": \"Oslo\"}") == 5
    after = json.loads(prompts.read_text().splitlines()[-7])  # "thanks", after the tool exchange
    prompts_b = tmp_path / "b.jsonl"
    r = cohere(setup, "r.json", "chat", str(setup["cr"]), *setup["tools"], prompts=prompts_b,
               stdin=f"/load {saved}\n/tools\nthanks\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(prompts_b.read_text().splitlines()[-1]) == after  # the same prompt, token for token
    assert "loaded 1 exchange (5 messages)" in r.stderr
    assert "weather(city)" in r.stderr and "population(city)" in r.stderr and "echo sunny in {city}" in r.stderr


@pytest.mark.parametrize("message, why", [
    ({"role": "assistant", "content": None, "tool_calls": "x"}, "tool_calls must be a list"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "a", "function": {"name": "x"}}] * 33},
     "tool_calls must be a list"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "", "function": {"name": "x"}}]},
     "tool_calls must be a list"),
    ({"role": "tool", "content": "r"}, "needs its tool_call_id"),
    ({"role": "tool", "tool_call_id": "x" * 300, "content": "r"}, "needs its tool_call_id"),
    ({"role": "assistant", "content": None}, "string content"),
])
def test_loaded_tool_messages_are_validated(tmp_path, message, why):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, message]}))
    with pytest.raises(UsageError, match=why):
        Conversation.load(path)


def test_endpoint_server_parsed_tool_calls(setup):
    """--endpoint: `tools` go in the chat request; the server's streamed tool_calls are run here and the results
    sent back as tool messages."""
    with StubServer("tools") as server:
        r = cohere(setup, "r.json", "chat", str(setup["cr"]), "--endpoint", server.url, *setup["tools"], "--yes",
                   "--json", "-p", "What is the weather in Paris?")
        reqs = [q for q in server.requests if q["path"].endswith("/chat/completions")]
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["messages"]
    assert m[1]["tool_calls"] == [{"id": "call_stub_1", "type": "function",
                                  "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]
    assert m[2] == {"role": "tool", "tool_call_id": "call_stub_1", "content": "sunny in Paris\n"}
    assert m[3] == {"role": "assistant", "content": "It is sunny in Paris."}
    assert len(reqs) == 2 and all("tools" in q["body"] for q in reqs)
    assert [t["function"]["name"] for t in reqs[0]["body"]["tools"]] == ["weather", "block", "population"]
    assert reqs[1]["body"]["messages"][-2:] == m[1:3]


def test_endpoint_refusing_tools_falls_back_to_local_parsing(setup):
    """A server that refuses `tools` (400): the prompt is rendered here with the tool template and sent as a raw
    completion, and the calls are parsed here: the same loop, the same grounded answer."""
    rules = [["Grounded answer:", GROUNDED], ["<results>", DIRECT], ["Paris", ACTION]]
    with StubServer("tools", refuse_tools=True, rules=rules) as server:
        r = cohere(setup, "r.json", "chat", str(setup["cr"]), "--endpoint", server.url, *setup["tools"], "--yes",
                   "--json", "-p", "What is the weather in Paris?")
        paths = [q["path"] for q in server.requests]
    assert r.returncode == 0, r.stderr
    assert "does not take tools" in r.stderr
    m = json.loads(r.stdout)["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "tool", "tool", "assistant"] and m[4]["content"] == GROUNDED
    assert paths[0].endswith("/chat/completions") and paths[1:].count("/v1/completions") >= 3


def test_confirmation_and_ctrl_c_during_a_tool_in_a_terminal(setup):
    """A pty: `n` declines a call (the model gets an error result), `always` runs this one and the rest; Ctrl-C
    while a tool runs stops it (its process is killed) and the session goes on, the message taken back."""
    p = pexpect.spawn(sys.executable, [str(SCRIPTED), str(setup["base"] / "r.json"), "chat", str(setup["cr"]),
                                       *setup["tools"]], env=env(setup, TERM="xterm-256color"), encoding="utf-8",
                      timeout=60, dimensions=(50, 120))
    try:
        p.expect(">>>")
        p.sendline("What is the weather in Paris?")
        p.expect_exact("run it? [y/N/always]")
        p.sendline("n")
        p.expect_exact("run it? [y/N/always]")  # the second call
        shown = ANSI.sub("", p.before)
        assert "not run" in shown and "error: the user declined to run this tool" in shown
        p.sendline("always")
        p.expect("tok/s")
        assert "→ Paris: 2.1 million people" in ANSI.sub("", p.before)
        p.expect(">>>")
        p.sendline("block please")
        deadline = time.monotonic() + 60
        while not setup["marker"].exists() or not setup["marker"].read_text():
            assert time.monotonic() < deadline, "the blocking tool never started"
            time.sleep(0.05)
        pid = int(setup["marker"].read_text())
        p.sendintr()
        p.expect_exact("[interrupted]")
        p.expect(">>>")
        with pytest.raises(ProcessLookupError):
            for _ in range(100):  # killed with its process group, and reaped
                os.kill(pid, 0)
                time.sleep(0.05)
        p.sendline("/tools")
        p.expect("block")
        p.expect(">>>")
        p.sendline("thanks")
        p.expect("tok/s")
        assert "You are welcome." in ANSI.sub("", p.before)
        p.expect(">>>")
        p.sendline("/show")
        p.expect(r"2 exchanges \((\d+) messages\)")  # the blocked message was taken back
        assert p.match.group(1) == "7"
    finally:
        if setup["marker"].exists() and setup["marker"].read_text():
            try:
                os.kill(int(setup["marker"].read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.terminate(force=True)
