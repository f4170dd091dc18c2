"""Tool use at the engine level: tool prompts (both template families) against transformers' apply_chat_template,
and the streaming tool-call parser (engine/toolcalls.py) for both output formats."""

from __future__ import annotations

import itertools
import json

import pytest
from factory_tokenizer import load_reference, make_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from cohere_cli.engine import template as tpl
from cohere_cli.engine.tokenizer import Tokenizer
from cohere_cli.engine.toolcalls import (
    FORMAT_CMD3, FORMAT_COMMAND_R, MAX_ACTION_CHARS, MAX_CALLS, DirectlyAnswer, Error, Text, Thinking, ToolCall,
    ToolCallParser, coalesce, template_messages)

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city, today or in a few days",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "days": {"type": "integer", "description": "How many days ahead"}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "list_models", "description": "The models installed locally",
        "parameters": {"type": "object", "properties": {}}}},
]
NAMES = ("get_weather", "list_models")


def call(id_, name, **args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


SYSTEM = {"role": "system", "content": "Be brief."}
ASK = {"role": "user", "content": "Weather in Zürich?"}
ONE_CALL = [
    ASK,
    {"role": "assistant", "content": "Let me check.", "tool_plan": "I will call get_weather.",
     "tool_calls": [call("call_a", "get_weather", city="Zürich")]},
    {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": "21°C"}'},
    {"role": "assistant", "content": "It is 21°C in Zürich."},
]
TWO_CALLS = [
    {"role": "user", "content": "Weather in Zürich and Oslo in 2 days, and my models?"},
    {"role": "assistant", "tool_plan": "Two cities, then the models.",
     "tool_calls": [call("call_b", "get_weather", city="Zürich", days=2), call("call_c", "get_weather", city="Oslo")]},
    {"role": "tool", "tool_call_id": "call_b", "content": '{"temp": "19°C"}'},
    {"role": "tool", "tool_call_id": "call_c", "content": "rain <and> \"wind\""},
]
FOLLOW_UP = [*TWO_CALLS, {"role": "assistant", "content": "19°C in Zürich, rain in Oslo."},
             {"role": "user", "content": "And tomorrow?"}]
CONVERSATIONS = {"one_turn": [SYSTEM, ASK], "one_call": ONE_CALL, "two_calls": TWO_CALLS, "follow_up": FOLLOW_UP}


@pytest.fixture(scope="module")
def command_r(tmp_path_factory):
    pytest.importorskip("transformers")
    d = make_tokenizer(tmp_path_factory.mktemp("command-r"))
    return Tokenizer.from_dir(d), load_reference(d)


@pytest.fixture(scope="module")
def cmd3(tmp_path_factory):
    pytest.importorskip("transformers")
    d = make_tokenizer(tmp_path_factory.mktemp("cmd3"), templates="cmd3")
    return Tokenizer.from_dir(d), load_reference(d)


def same_ids(tok, ref, text, theirs_kwargs, messages):
    ref_ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **theirs_kwargs)
    assert tok.encode(text, add_bos=False) == ref_ids


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_command_r_tool_use_prompt_equals_transformers(command_r, name):
    tok, ref = command_r
    messages = template_messages(CONVERSATIONS[name])
    ours = tok.apply_chat_template(messages, tools=TOOLS)  # tools select the named "tool_use" template, as in HF
    theirs = ref.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    same_ids(tok, ref, ours, dict(tools=TOOLS, add_generation_prompt=True), messages)
    assert "def get_weather(city: str, days: Optional[int] = None) -> List[Dict]:" in ours
    assert ours.endswith("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    if name != "one_turn":
        # a tool-call turn ends without <|END_OF_TURN_TOKEN|> (the official template's quirk, spec 3.3)
        assert ']```\n<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><results>\n' in ours
        assert '"city": "Zürich"' in ours  # arguments as a dict, through tojson(indent=4)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_cmd3_tool_use_prompt_equals_transformers(cmd3, name):
    tok, ref = cmd3
    source = tpl.builtin_template("cmd3-tool_use")
    messages = template_messages(CONVERSATIONS[name])
    kwargs = dict(tools=TOOLS, add_generation_prompt=True)
    ours = tpl.render_chat(source, messages, special_tokens=tok.special_tokens_map, **kwargs)
    assert ours == ref.apply_chat_template(messages, chat_template=source, tokenize=False, **kwargs)
    same_ids(tok, ref, ours, dict(kwargs, chat_template=source), messages)
    assert '"name": "get_weather"' in ours and ours.endswith("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    if name == "two_calls":
        assert ('{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Zürich", "days": 2}},'
                in ours)
        assert '"tool_call_id": "1", "tool_name": "get_weather", "parameters": {"city": "Oslo"}}' in ours
        # the two results in one system turn, matched to their calls by position
        assert '"tool_call_id": "1",\n        "results": {\n            "0": "rain <and> \\"wind\\""' in ours
        assert "<|START_THINKING|>Two cities, then the models.<|END_THINKING|>" in ours


def test_string_arguments_are_double_encoded_by_transformers(cmd3):
    """Why template_messages exists: transformers renders an OpenAI JSON-string `arguments` as a quoted string."""
    tok, ref = cmd3
    source = tpl.builtin_template("cmd3-tool_use")
    raw = ONE_CALL[:3]
    theirs = ref.apply_chat_template(raw, tools=TOOLS, chat_template=source, tokenize=False)
    ours = tpl.render_chat(source, raw, tools=TOOLS, special_tokens=tok.special_tokens_map)
    assert ours == theirs and '"parameters": "{\\"city\\"' in ours
    assert '"parameters": {"city": "Zürich"}' in tpl.render_chat(
        source, template_messages(raw), tools=TOOLS, special_tokens=tok.special_tokens_map)


def test_cmd3_default_template_ignores_tools(cmd3):
    """R7B / Command A's `default` template sets tools = [] and rejects tool messages: tools need `tool_use`."""
    tok, ref = cmd3
    ours = tok.apply_chat_template([ASK], tools=TOOLS)
    assert ours == ref.apply_chat_template([ASK], tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert "get_weather" not in ours


def test_template_messages_leaves_other_shapes_alone():
    odd = [{"role": "assistant", "tool_calls": [
        call("a", "f", x=1), {"function": {"name": "g", "arguments": "[1]"}}, {"function": {"arguments": "{bad"}},
        "not a call"]}, {"role": "user", "content": "x"}]
    out = template_messages(odd)
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    assert [c["function"]["arguments"] for c in out[0]["tool_calls"][1:3]] == ["[1]", "{bad"]
    assert out[0]["tool_calls"][3] == "not a call" and out[1] is odd[1]
    assert odd[0]["tool_calls"][0]["function"]["arguments"] == '{"x": 1}'  # a copy: the transcript keeps strings


def rendered_call_turn(pair, source, messages):
    """How the template renders the last (assistant tool-call) turn of `messages`: what it teaches the model."""
    tok, _ = pair
    text = tpl.render_chat(source, template_messages(messages), tools=TOOLS, special_tokens=tok.special_tokens_map,
                           add_generation_prompt=False)
    turn = text[text.index("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>") + len("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"):]
    return turn.split("<|START_OF_TURN_TOKEN|>")[0].split("<|END_OF_TURN_TOKEN|>")[0]


@pytest.mark.parametrize("family", [FORMAT_COMMAND_R, FORMAT_CMD3])
def test_parser_reads_what_the_template_teaches(command_r, cmd3, family):
    messages = TWO_CALLS[:2]
    if family == FORMAT_COMMAND_R:
        out = rendered_call_turn(command_r, command_r[0].chat_templates["tool_use"], messages)
        assert out.startswith("\nAction:\n```json\n[\n    {\n")
    else:
        out = rendered_call_turn(cmd3, tpl.builtin_template("cmd3-tool_use"), messages)
        assert out.startswith("<|START_THINKING|>Two cities")
    p = ToolCallParser(family, NAMES, ids=iter(["call_b", "call_c"]))
    events = coalesce([*p.feed(out), *p.finish()])
    assert [e.call for e in events if isinstance(e, ToolCall)] == messages[1]["tool_calls"]
    assert not [e for e in events if isinstance(e, Error)]
    if family == FORMAT_CMD3:
        assert p.message()["tool_plan"] == messages[1]["tool_plan"]


# ------------------------------------------------------------------------------------------------ parser

COMMAND_R_OUT = ('I will look it up.\nAction: ```json\n[\n    {\n        "tool_name": "get_weather",\n'
                 '        "parameters": {\n            "city": "Zürich ```]}"\n        }\n    }\n]\n```\nDone.')
CMD3_OUT = ('<|START_THINKING|>Plan: weather, then models.<|END_THINKING|><|START_ACTION|>[\n'
            '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Oslo <|END_ACTION|>", '
            '"days": 2}},\n    {"tool_call_id": "1", "tool_name": "list_models", "parameters": {}}\n]<|END_ACTION|>')
CMD3_ANSWER = "<|START_RESPONSE|>It is <b>19°C</b> in Zürich <co>x</co: 0:[0]>.<|END_RESPONSE|>"


def parse(fmt, text, pieces=None, tools=NAMES, **kwargs):
    p = ToolCallParser(fmt, tools, ids=(f"id{i}" for i in itertools.count()), **kwargs)
    events = []
    for piece in pieces if pieces is not None else [text]:
        events += p.feed(piece)
    events += p.finish()
    return coalesce(events), p


def at_every_boundary(fmt, text, **kwargs):
    """The events of `text` fed whole; the same must come out split in two anywhere, and a character at a time."""
    whole, p = parse(fmt, text, **kwargs)
    for k in range(len(text) + 1):
        assert parse(fmt, text, [text[:k], text[k:]], **kwargs)[0] == whole, k
    assert parse(fmt, text, list(text), **kwargs)[0] == whole
    return whole, p


def test_command_r_action_with_text_around():
    events, p = at_every_boundary(FORMAT_COMMAND_R, COMMAND_R_OUT)
    assert events == [Text("I will look it up."), ToolCall(call("id0", "get_weather", city="Zürich ```]}")),
                      Text("\nDone.")]
    assert p.message() == {"role": "assistant", "content": "I will look it up.\nDone.",
                           "tool_calls": [call("id0", "get_weather", city="Zürich ```]}")]}


@pytest.mark.parametrize("out", [
    'Action: ```json\n[{"tool_name": "get_weather", "parameters": {"city": "x"}}]\n```',
    'Action:\n```json\n[{"tool_name": "get_weather", "parameters": {"city": "x"}}]```',  # as the template renders
    'Action: [{"tool_name": "get_weather", "parameters": {"city": "x"}}]',  # no fence
    'Action: ```\n{"tool_name": "get_weather", "parameters": {"city": "x"}}\n```',  # one object, plain fence
])
def test_command_r_action_variants(out):
    events, _ = at_every_boundary(FORMAT_COMMAND_R, out)
    assert events == [ToolCall(call("id0", "get_weather", city="x"))]


def test_command_r_directly_answer_and_plain_text():
    out = 'Action: ```json\n[{"tool_name": "directly-answer", "parameters": {}}]\n```'
    events, p = at_every_boundary(FORMAT_COMMAND_R, out)
    assert events == [DirectlyAnswer()] and p.directly_answer and "tool_calls" not in p.message()
    text = "Action: not a tool call.\nThe Action: word mid-line, <|END_ACTION|> and ```json are text."
    assert at_every_boundary(FORMAT_COMMAND_R, text)[0] == [Text(text)]
    assert at_every_boundary(FORMAT_COMMAND_R, "\n\nAction: x")[0] == [Text("\n\nAction: x")]


def test_cmd3_plan_and_two_calls():
    events, p = at_every_boundary(FORMAT_CMD3, CMD3_OUT)
    calls = [call("id0", "get_weather", city="Oslo <|END_ACTION|>", days=2), call("id1", "list_models")]
    assert events == [Thinking("Plan: weather, then models."), *map(ToolCall, calls)]
    assert p.message() == {"role": "assistant", "content": None, "tool_calls": calls,
                           "tool_plan": "Plan: weather, then models."}


def test_cmd3_answer_thinking_only_and_prompt_prefix():
    assert at_every_boundary(FORMAT_CMD3, CMD3_ANSWER)[0] == [Text("It is <b>19°C</b> in Zürich <co>x</co: 0:[0]>.")]
    events, p = at_every_boundary(FORMAT_CMD3, "<|START_THINKING|>Just thinking <|START_ACTION")
    assert events == [Thinking("Just thinking <|START_ACTION")] and p.message()["content"] is None
    # the default template's prompt ends in <|START_RESPONSE|>: the output starts inside the response
    events, _ = at_every_boundary(FORMAT_CMD3, "Hello <|x|>!<|END_RESPONSE|>", prefix="...<|START_RESPONSE|>")
    assert events == [Text("Hello <|x|>!")]
    # text outside blocks is answer text, the layout whitespace between blocks is not
    out = "  stray\n<|START_THINKING|>t<|END_THINKING|>\n\n" + CMD3_ANSWER + "\n<|END_OF_TURN_TOKEN|>ignored"
    events, _ = at_every_boundary(FORMAT_CMD3, out)
    assert events == [Text("stray"), Thinking("t"), Text("It is <b>19°C</b> in Zürich <co>x</co: 0:[0]>.")]


@pytest.mark.parametrize("fmt, out, message", [
    (FORMAT_CMD3, "<|START_ACTION|>[{\"tool_name\": \"get_weather\", \"parameters\": {}}<|END_ACTION|>", "malformed"),
    (FORMAT_CMD3, "<|START_ACTION|>not json<|END_ACTION|>", "not a JSON list"),
    (FORMAT_CMD3, "<|START_ACTION|>[1, 2]<|END_ACTION|>", "not a list of"),
    (FORMAT_CMD3, '<|START_ACTION|>[{"tool_name": 3}]<|END_ACTION|>', "tool_name is not a name"),
    (FORMAT_CMD3, '<|START_ACTION|>[{"tool_name": "f", "parameters": [1]}]<|END_ACTION|>', "not an object"),
    (FORMAT_CMD3, '<|START_ACTION|>[{"tool_name": "f"}] trailing<|END_ACTION|>', "not followed by <|END_ACTION|>"),
    (FORMAT_CMD3, '<|START_ACTION|>[{"tool_name": "get_weather", "parameters": {"a": "unclosed', "ended inside"),
    (FORMAT_CMD3, "<|START_ACTION|>[{\"a\": tru}]<|END_ACTION|>", "is not valid JSON"),
    (FORMAT_CMD3, "<|START_ACTION|>" + "[" * 65 + "]" * 65 + "<|END_ACTION|>", "nests over 64"),
    (FORMAT_COMMAND_R, 'Action: ```json\n[{"tool_name": "get_weather", "parameters": {}\n```', "malformed"),
    (FORMAT_COMMAND_R, "Action: ```json\nhello\n```", "not a JSON list"),
    (FORMAT_COMMAND_R, "Action: ```json\n[" + ",".join(['{"tool_name": "list_models"}'] * (MAX_CALLS + 1)) + "]```",
     "33 calls"),
])
def test_malformed_actions_are_one_error(fmt, out, message):
    events, p = at_every_boundary(fmt, out + "<|START_RESPONSE|>more<|END_RESPONSE|>")
    assert isinstance(events[-1], Error) and message in events[-1].message and events[-1].call is None
    assert not [e for e in events if isinstance(e, ToolCall)] and p.failed
    assert p.feed("more") == [] and p.finish() == []


def test_an_oversized_action_stops_at_the_bound():
    p = ToolCallParser(FORMAT_CMD3, NAMES)
    events = p.feed('<|START_ACTION|>[{"tool_name": "get_weather", "parameters": {"city": "')
    chunk = "x" * (1 << 16)
    for _ in range((MAX_ACTION_CHARS >> 16) + 1):
        events += p.feed(chunk)
        if p.failed:
            break
    assert isinstance(events[-1], Error) and "over 1 MiB" in events[-1].message


def test_unknown_tool_is_an_error_with_its_call():
    out = '<|START_ACTION|>[{"tool_name": "rm_rf", "parameters": {}}, {"tool_name": "list_models"}]<|END_ACTION|>'
    events, p = at_every_boundary(FORMAT_CMD3, out)
    assert events == [Error("the model called an unknown tool 'rm_rf'", call("id0", "rm_rf")),
                      ToolCall(call("id1", "list_models"))]
    assert not p.failed and len(p.message()["tool_calls"]) == 2  # both are answered in the history
    assert parse(FORMAT_CMD3, out, tools=None)[0][0] == ToolCall(call("id0", "rm_rf"))  # tools=None: any name


def test_random_ids_are_unique():
    p = ToolCallParser(FORMAT_CMD3, NAMES)
    p.feed(CMD3_OUT)
    ids = [c["id"] for c in p.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    with pytest.raises(ValueError, match="unknown tool-call format"):
        ToolCallParser("llama")


TEXTS = st.lists(st.sampled_from(["a", " ", "\n", "<", "|", ">", "`", "Action:", "<|START_RESPONSE|>", "é", "["]),
                 max_size=12).map("".join)


@settings(max_examples=150, deadline=None)
@given(before=TEXTS, after=TEXTS, cut=st.lists(st.integers(0, 400), max_size=6))
def test_any_split_gives_the_same_events(before, after, cut):
    for fmt, action in ((FORMAT_COMMAND_R, "\n" + COMMAND_R_OUT), (FORMAT_CMD3, CMD3_OUT)):
        text = before + action + after
        whole, _ = parse(fmt, text)
        bounds = sorted({min(c, len(text)) for c in cut})
        pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])]
        assert parse(fmt, text, pieces)[0] == whole
