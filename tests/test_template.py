"""Chat templates: our rendering (text and ids) against transformers' apply_chat_template, plus golden prompts."""

from __future__ import annotations

import pytest
from factory_tokenizer import load_reference, make_tokenizer

from cohere_cli.engine import template as tpl
from cohere_cli.errors import TemplateError
from cohere_cli.engine.tokenizer import Tokenizer

pytest.importorskip("transformers")

SYSTEM = {"role": "system", "content": "You are a helpful assistant"}
TURNS = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
]
# From transformers' tests/models/cohere/test_tokenization_cohere.py (Apache-2.0).
PENGUIN = [{"role": "user", "content": "Whats the biggest penguin in the world?"}]
PENGUIN_DOCS = [
    {"title": "Tall penguins", "text": "Emperor penguins are the tallest growing up to 122 cm in height."},
    {"title": "Penguin habitats", "text": "Emperor penguins only live in Antarctica."},
]
OLD_TOOLS = [
    {
        "name": "internet_search",
        "description": "Returns a list of relevant document snippets for a textual query retrieved from the internet",
        "parameter_definitions": {
            "query": {"description": "Query to search the internet with", "type": "str", "required": True}
        },
    },
    {
        "name": "directly_answer",
        "description": (
            "Calls a standard (un-augmented) AI chatbot to generate a response given the conversation history"
        ),
        "parameter_definitions": {},
    },
]
NEW_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city <with> \"quotes\" and ünïcode",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": "integer", "description": "How many days"},
                    "units": {"type": ["string", "integer"], "description": "Units"},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "Tags"},
                },
                "required": ["city"],
            },
        },
    }
]
TOOL_CALL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_plan": "I will call get_weather.",
        "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": \"21°C\", \"sky\": \"☀️\"}"},
]


@pytest.fixture(scope="module")
def cr(tmp_path_factory):
    d = make_tokenizer(tmp_path_factory.mktemp("command-r"))
    return Tokenizer.from_dir(d), load_reference(d)


@pytest.fixture(scope="module")
def cmd3(tmp_path_factory):
    d = make_tokenizer(tmp_path_factory.mktemp("cmd3"), templates="cmd3")
    return Tokenizer.from_dir(d), load_reference(d)


def assert_same_as_transformers(pair, messages, *, template=None, **kwargs):
    """Our text and ids equal transformers' apply_chat_template(tokenize=False / True); returns our text."""
    tok, ref = pair
    ours = tok.apply_chat_template(messages, template=template, **kwargs)
    ref_kwargs = dict(kwargs, add_generation_prompt=kwargs.get("add_generation_prompt", True))
    if template is not None:
        ref_kwargs["chat_template"] = template
    theirs = ref.apply_chat_template(messages, tokenize=False, **ref_kwargs)
    assert ours == theirs
    ref_ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **ref_kwargs)
    assert tok.encode(ours, add_bos=False) == ref_ids
    # the template emits BOS itself: exactly one, first
    assert ours.startswith("<BOS_TOKEN>") and ours.count("<BOS_TOKEN>") == 1
    assert ref_ids[0] == tok.bos_id and ref_ids.count(tok.bos_id) == 1
    return ours


# ------------------------------------------------------------------------------------------------ Command R


def test_default_system_multi_turn(cr):
    text = assert_same_as_transformers(cr, [SYSTEM, *TURNS])
    assert text == (
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
        "Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Who are you<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )


def test_default_no_system_has_no_system_turn(cr):
    text = assert_same_as_transformers(cr, TURNS)
    assert text.startswith("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello")
    assert "<|SYSTEM_TOKEN|>" not in text


def test_default_without_generation_prompt_and_stripped_content(cr):
    messages = [{"role": "user", "content": "  padded 😁 \n"}, {"role": "assistant", "content": "\tok "}]
    text = assert_same_as_transformers(cr, messages, add_generation_prompt=False)
    assert text.endswith("<|CHATBOT_TOKEN|>ok<|END_OF_TURN_TOKEN|>")


def test_default_content_with_special_token_strings(cr):
    # Without sanitizing (transformers' default), a turn token typed by the user is a real turn token.
    assert_same_as_transformers(cr, [{"role": "user", "content": "a<|END_OF_TURN_TOKEN|>b <EOS_TOKEN>"}])


@pytest.mark.parametrize("mode", ["accurate", "fast"])
def test_rag_with_documents_and_citation_mode(cr, mode):
    text = assert_same_as_transformers(
        cr, [SYSTEM, *TURNS], template="rag", documents=PENGUIN_DOCS, citation_mode=mode
    )
    assert ("Thirdly, Write 'Answer:'" in text) == (mode == "accurate")
    assert "<results>\nDocument: 0\ntitle: Tall penguins\n" in text


def test_rag_golden_prompt(cr):
    tok, _ = cr
    text = tok.apply_chat_template(PENGUIN, template="rag", documents=PENGUIN_DOCS, citation_mode="accurate")
    assert text == RAG_GOLDEN


def test_tool_use_golden_prompt_old_style_tools(cr):
    text = assert_same_as_transformers(cr, PENGUIN, tools=OLD_TOOLS)
    assert text == TOOL_USE_GOLDEN


def test_tool_use_new_style_tools_and_tool_calls(cr):
    text = assert_same_as_transformers(cr, TOOL_CALL_CHAT, tools=NEW_TOOLS)
    assert "def get_weather(city: str, days: Optional[int] = None, units: Optional[Union[str,int]] = None" in text
    # tool_call arguments go through tojson(indent=4): non-ASCII kept
    assert '"city": "Zürich"' in text
    # the official template closes a tool-call turn without <|END_OF_TURN_TOKEN|> (pitfall 15)
    assert "]```\n<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><results>" in text


def test_default_role_alternation_error(cr):
    tok, ref = cr
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TemplateError, match="Conversation roles must alternate user/assistant"):
        tok.apply_chat_template(bad)
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        ref.apply_chat_template(bad, tokenize=False)
    with pytest.raises(TemplateError, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "first"}])


def test_empty_conversation(cr):
    with pytest.raises(TemplateError, match="empty conversation"):
        cr[0].apply_chat_template([])


# ------------------------------------------------------------------------------------------------ R7B / Command A


def test_cmd3_with_system(cmd3):
    text = assert_same_as_transformers(cmd3, [SYSTEM, *TURNS])
    assert text == (
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
        "<|START_RESPONSE|>Hi there<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>"
        "Who are you<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>"
    )


def test_cmd3_without_system_always_has_an_empty_system_turn(cmd3):
    text = assert_same_as_transformers(cmd3, TURNS)
    assert text.startswith("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><|END_OF_TURN_TOKEN|>")
    assert text.endswith("<|START_RESPONSE|>")


@pytest.mark.parametrize("citations", [False, True])
def test_cmd3_documents_path(cmd3, citations):
    text = assert_same_as_transformers(cmd3, [SYSTEM, *TURNS], documents=PENGUIN_DOCS, enable_citations=citations)
    assert ("## Grounding" in text) == citations
    assert '"0": {"title": "Tall penguins", "text": "Emperor penguins are the tallest' in text
    assert "# Developer Preamble" in text


def test_cmd3_role_alternation_error(cmd3):
    with pytest.raises(TemplateError, match="alternate"):
        cmd3[0].apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_cmd3_tool_use_template_matches_transformers(cmd3):
    tok, ref = cmd3
    source = tpl.builtin_template("cmd3-tool_use")
    kwargs = dict(tools=NEW_TOOLS, add_generation_prompt=True, enable_citations=True)
    ours = tpl.render_chat(source, TOOL_CALL_CHAT, special_tokens=tok.special_tokens_map, **kwargs)
    assert ours == ref.apply_chat_template(TOOL_CALL_CHAT, chat_template=source, tokenize=False, **kwargs)
    assert "<|START_THINKING|>I will call get_weather.<|END_THINKING|>" in ours
    assert '"parameters": {"city": "Zürich", "days": 2}' in ours


# ------------------------------------------------------------------------------------------------ environment

FEATURES = (
    "{%- set ns = namespace(n=0) -%}"
    "{%- for m in messages -%}{%- if loop.index > 3 %}{% break %}{% endif -%}"
    "{% generation %}[{{ m.role }}:{{ m.content }}|{{ m.thinking }}|{{ m.reasoning_content }}|"
    "{{ m.get('extra', 'no-extra') }}]{% endgeneration %}{%- set ns.n = ns.n + 1 -%}{%- endfor %}\n"
    "{{ ns.n }} {{ dict(a=1)|tojson }} {{ {'k': '<é>', 'b': [1, 2]}|tojson(indent=2, sort_keys=true) }}\n"
    "{{ [1, 2]|tojson(separators=[',', ':']) }} {{ bos_token }} {{ eos_token }} {{ pad_token }} {{ unk_token }}\n"
    "{{ tools|tojson }} {{ documents|tojson }} {{ add_generation_prompt }} {{ custom }} {{ strftime_now('%Y') }}\n"
)


def test_environment_matches_transformers(cr):
    tok, ref = cr
    messages = [
        {"role": "user", "content": "a", "extra": None},  # None values are dropped: the template sees no key
        {"role": "assistant", "content": "b", "reasoning": "because"},  # aliased to thinking/reasoning_content
        {"role": "user", "content": ("tuple", "content")},
        {"role": "user", "content": "beyond the break"},
    ]
    kwargs = dict(tools=[{"name": "t"}], documents=[{"title": "x"}], add_generation_prompt=False, custom="c")
    ours = tpl.render_chat(FEATURES, messages, special_tokens=tok.special_tokens_map, **kwargs)
    assert ours == ref.apply_chat_template(messages, chat_template=FEATURES, tokenize=False, **kwargs)
    assert "because|because" in ours and "no-extra" in ours and "beyond" not in ours


def test_kwargs_override_special_tokens(cr):
    tok, ref = cr
    source = "{{ bos_token }}|{{ eos_token }}"
    ours = tpl.render_chat(source, TURNS, special_tokens=tok.special_tokens_map, bos_token="B")
    assert ours == ref.apply_chat_template(TURNS, chat_template=source, tokenize=False, bos_token="B")
    assert ours == "B|<|END_OF_TURN_TOKEN|>"


def test_template_errors_become_template_error():
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(TemplateError, match="syntax error"):
        tpl.render_chat("{% if %}", msgs)
    with pytest.raises(TemplateError, match="rejected the conversation: nope"):
        tpl.render_chat("{{ raise_exception('nope') }}", msgs)
    with pytest.raises(TemplateError, match="failed"):
        tpl.render_chat("{{ messages[0].content + 1 }}", msgs)
    with pytest.raises(TemplateError, match="failed"):  # the sandbox holds
        tpl.render_chat("{{ messages.__class__.__mro__ }}{{ messages.append(1) }}", msgs)
    with pytest.raises(TemplateError, match="failed"):
        tpl.render_chat("{% set ns = namespace() %}{% set ns._x = 1 %}", msgs)


# ------------------------------------------------------------------------------------------------ hostile templates
# Each memory case runs in a child under an address-space limit: a regression raises MemoryError there (a failed
# test) instead of taking the machine. One child renders them all and reports each outcome.
B = "{% set b = 'x' * 4000000 %}"
MEMORY_CASES = {
    "repeat": "{{ 'x' * 10**10 }}",  # the reported cases
    "tojson_indent": "{{ messages|tojson(indent=10**9) }}",
    "repeat_list": "{{ [1] * 10**9 }}",  # variants
    "tojson_indent_literal": "{{ messages|tojson(indent=1000000000) }}",
    "tojson_indent_big": "{{ messages|tojson(indent=1000) }}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "doubling_tilde": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "center": "{{ 'x'|center(1000000000) }}",
    "ljust": "{{ 'x'.ljust(1000000000) }}",
    "replace": "{% set s = 'x' * 1000000 %}{{ s|replace('x', s) }}",
    "printf": "{{ '%01000000000d' % 1 }}",
    "format": "{{ '{:>1000000000}'.format(1) }}",
    "shared": "{% set a = ['x' * 1000000] * 4 %}{% set b = [a, a, a, a, a, a, a, a] %}{{ [b, b, b, b]|string }}",
    "join": "{{ range(100000)|join('x' * 1000000) }}",
    "outputs": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "power": "{{ 7 ** 100000000 }}",
    # B2: output written into a {% set %} block, a macro, caller(), a {% filter %} block, a block reference, a
    # recursive loop is counted as it is written (was: a MemoryError building gigabytes)
    "block_set": B + "{% set a %}{% for i in range(1000) %}{{ b }}{% endfor %}{% endset %}{{ a|length }}",
    "macro": B + "{% macro m() %}{% for i in range(1000) %}{{ b }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "filter_block": B + "{% filter length %}{% for i in range(1000) %}{{ b }}{% endfor %}{% endfilter %}",
    "caller": B + "{% macro m() %}{{ caller()|length }}{% endmacro %}"
                  "{% call m() %}{% for i in range(1000) %}{{ b }}{% endfor %}{% endcall %}",
    "block_reference": "{{ self.z()|length }}{% block z %}{% for i in range(1000) %}{{ 'x' * 4000000 }}{% endfor %}"
                       "{% endblock %}",
    "recursive_loop": B + "{% for i in [[1] * 1000] recursive %}{% if loop.depth < 2 %}{{ loop(i)|length }}"
                          "{% else %}{{ b }}{% endif %}{% endfor %}",
    # B3: a format's whole output is estimated from the format before it runs (widths, `*`, nested fields)
    "nested_format": "{{ '{0:{1}{1}{1}{1}{1}{1}{1}{1}{1}{1}}'.format(1, 9)|length }}",
    "star_printf": "{{ (('%*s' * 1000) % ((4000000, '') * 1000))|length }}",
    "brace_widths": "{{ ('{:4000000}' * 1000).format(*range(1000))|length }}",
    "printf_mapping": "{% set d = {'a': 'x' * 4000000} %}{{ ('%(a)s' * 1000) % d }}",
    "printf_precision": "{{ ('%.4000000f' * 1000) % ((1.0,) * 1000) }}",
    "format_filter": "{{ ('%*s' * 1000)|format(*((4000000, '') * 1000)) }}",
    "format_map": "{{ ('{a}' * 1000).format_map({'a': 'x' * 4000000}) }}",
    # values the size measure missed: a namespace's attributes, dict views, bytes, big integers' digits
    "namespace_str": "{% set ns = namespace(s='x' * 4000000) %}{{ [ns] * 1000 }}",
    "dict_items": "{% set d = {'a': 'x' * 4000000} %}{{ [d.items()] * 1000 }}",
    "bytes_repeat": "{{ 'x'.encode() * 10**10 }}",
    "big_ints": "{{ [10**4000] * 200000 }}",
    # B1: filters and methods that multiply their input, estimated before they run
    "translate": "{{ ('x' * 1000).translate({120: 'y' * 4000000}) }}",
    "wordwrap": "{{ ('x ' * 100000)|wordwrap(1, wrapstring='y' * 4000000) }}",
    "urlize": "{{ ('a.com ' * 100000)|urlize(target='y' * 4000000) }}",
}
CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (AS_BYTES, AS_BYTES))
from cohere_cli.engine.template import render_chat
from cohere_cli.errors import TemplateError
out = {}
for name, source in json.loads(sys.stdin.read()).items():
    try:
        out[name] = "rendered %d" % len(render_chat(source, [{"role": "user", "content": "hi"}]))
    except TemplateError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def test_hostile_templates_stop_at_the_size_bounds():
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", CHILD.replace("AS_BYTES", str(800 << 20))], input=json.dumps(MEMORY_CASES),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]  # a MemoryError (a regression) fails here
    for name, outcome in json.loads(r.stdout).items():
        assert outcome.startswith("the chat template was stopped"), (name, outcome)
        assert "\n" not in outcome


# Work done inside one C call, where neither the step bound nor the deadline (checked between steps) nor Ctrl-C can
# get in: each must END with the template stopped. Run in a child so that a regression fails the test (the timeout
# only keeps a hang from stalling the suite; nothing here asserts how fast).
TIME_CASES = {
    "sum_lists": "{{ ([[1]] * 700000)|sum(start=[])|length }}",  # B1: quadratic list concatenation in sum()
    "sum_attribute": "{% set d = {'a': [1]} %}{{ ([d] * 700000)|sum(attribute='a', start=[])|length }}",
}


def test_single_calls_that_would_run_for_hours_are_refused():
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", CHILD.replace("AS_BYTES", str(800 << 20))], input=json.dumps(TIME_CASES),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for name, outcome in json.loads(r.stdout).items():
        assert outcome.startswith("the chat template was stopped"), (name, outcome)


@pytest.mark.parametrize("source", [
    "{{ [1, 2.5, 3]|sum }} {{ [[1], [2, 3]]|sum(start=[]) }} {{ [{'n': 2}, {'n': 3}]|sum(attribute='n') }}",
    "{{ '{:>5}|{:<4}|{:^6.2f}|{!r}'.format('ab', 7, 3.14159, 'q') }} {{ '{0:{1}}|{x:{y}}'.format('a', 3, x='b', y=2) }}",
    "{{ '%5s|%-3d|%.2f|%*d' % ('x', 4, 2.0, 3, 9) }} {{ '%(a)s-%(b)05.1f' % {'a': 'A', 'b': 2} }} "
    "{{ '%s and %s'|format('x', 'y') }} {{ '{a}'.format_map({'a': 1}) }}",
    "{% set a %}[{% for i in range(3) %}{{ i }}{% endfor %}]{% endset %}{{ a }}{% macro m(x) %}<{{ x }}{{ caller() }}>"
    "{% endmacro %}{% call m(1) %}c{% endcall %}{% filter upper %}up{% endfilter %}{% block z %}Z{% endblock %}"
    "{{ self.z() }}{% for i in [[1, [2]]] recursive %}({% if i is iterable %}{{ loop(i) }}{% else %}{{ i }}"
    "{% endif %}){% endfor %}",
    "{{ 'abc'.translate({98: 'XY'}) }} {{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ [1, 2, 3]|slice(2)|list }} "
    "{{ 'a b c'|wordwrap(1, wrapstring='/') }} {{ [1, 2]|map('string')|join(',') }} {{ 'x.com'|urlize }}",
])
def test_bounded_operations_compute_what_jinja_computes(source):
    """The estimates and counting wrappers change no result: the same text as transformers' plain sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source).render()
    assert tpl.render_chat(source, [{"role": "user", "content": "x"}]) == plain


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # 10**10 iterations
    "{% for i in range(100000) recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
    "{% macro f(n) %}{% for i in range(100000) %}{{ n }}{% endfor %}{% endmacro %}"
    "{% for i in range(100000) %}{% set x = f(i) %}{% endfor %}",
])
def test_endless_template_loops_stop_at_the_step_bound(source):
    with pytest.raises(TemplateError, match="more than 1,000,000 steps"):
        tpl.render_chat(source, [{"role": "user", "content": "x"}])


def test_real_templates_pass_the_bounds_with_a_wide_margin(monkeypatch):
    """Command R's RAG and tool templates with a thousand documents and a hundred tools still render with every
    bound ten times tighter than it is."""
    from cohere_cli.engine import template_bounds as tb

    for name in ("MAX_STEPS", "MAX_PRODUCED"):
        monkeypatch.setattr(tb, name, getattr(tb, name) // 10)
    docs = [{"title": f"doc {i}", "text": "Emperor penguins are tall. " * 20} for i in range(1000)]
    tools = [dict(OLD_TOOLS[0], name=f"search_{i}") for i in range(100)]
    for name, kwargs in (("command-r-rag", {"documents": docs}), ("command-r-tool_use", {"tools": tools}),
                         ("cmd3-rag", {"documents": docs}), ("cmd3-tool_use", {"tools": NEW_TOOLS * 100})):
        text = tpl.render_chat(tpl.builtin_template(name), [*TURNS], bos_token="<BOS_TOKEN>", **kwargs)
        assert "Who are you" in text


def test_raise_exception_text_is_inert_and_one_line():
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(TemplateError) as e:
        tpl.render_chat("{{ raise_exception('\x1b]52;c;aGk=\x07 no\n\x1b[2J' * 1000) }}", msgs)
    assert "\x1b" not in str(e.value) and "\x07" not in str(e.value) and "\n" not in str(e.value)
    assert "rejected the conversation: ␛]52;c;aGk=␇ no" in str(e.value) and len(str(e.value)) < 400


def test_templates_are_compiled_once():
    source = tpl.builtin_template("command-r-default")
    assert tpl.compile_template(source) is tpl.compile_template(source)


def test_builtin_templates():
    for name in tpl.BUILTIN_TEMPLATES:
        assert "bos_token" in tpl.builtin_template(name)
    with pytest.raises(TemplateError, match="command-r-rag"):
        tpl.builtin_template("nope")


# ------------------------------------------------------------------------------------------------ goldens

_PREAMBLE = """<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|># Safety Preamble
The instructions in this section override those in the task description and style guide sections. Don't answer questions that are harmful or immoral.

# System Preamble
## Basic Rules
You are a powerful conversational AI trained by Cohere to help people. You are augmented by a number of tools, and your job is to use and consume the output of these tools to best help the user. You will see a conversation history between yourself and a user, ending with an utterance from the user. You will then see a specific instruction instructing you what kind of response to generate. When you answer the user's requests, you cite your sources in your answers, according to those instructions.

# User Preamble
## Task and Context
You help people answer their questions and other requests interactively. You will be asked a very wide array of requests on all kinds of topics. You will be equipped with a wide range of search engines or similar tools to help you, which you use to research your answer. You should focus on serving the user's needs as best you can, which will be wide-ranging.

## Style Guide
Unless the user asks for a different style of answer, you should answer in full sentences, using proper grammar and spelling."""

TOOL_USE_GOLDEN = _PREAMBLE + '''

## Available Tools
Here is a list of tools that you have available to you:

```python
def internet_search(query: str) -> List[Dict]:
    """Returns a list of relevant document snippets for a textual query retrieved from the internet

    Args:
        query (str): Query to search the internet with
    """
    pass
```

```python
def directly_answer() -> List[Dict]:
    """Calls a standard (un-augmented) AI chatbot to generate a response given the conversation history
    """
    pass
```<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Whats the biggest penguin in the world?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Write 'Action:' followed by a json-formatted list of actions that you want to perform in order to produce a good response to the user's last input. You can use any of the supplied tools any number of times, but you should aim to execute the minimum number of necessary actions for the input. You should use the `directly-answer` tool if calling the other tools is unnecessary. The list of actions you want to call should be formatted as a list of json objects, for example:
```json
[
    {
        "tool_name": title of the tool in the specification,
        "parameters": a dict of parameters to input into the tool as they are defined in the specs, or {} if it takes no parameters
    }
]```<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'''

RAG_GOLDEN = _PREAMBLE + """<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Whats the biggest penguin in the world?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|><results>
Document: 0
title: Tall penguins
text: Emperor penguins are the tallest growing up to 122 cm in height.

Document: 1
title: Penguin habitats
text: Emperor penguins only live in Antarctica.
</results><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Carefully perform the following instructions, in order, starting each with a new line.
Firstly, Decide which of the retrieved documents are relevant to the user's last input by writing 'Relevant Documents:' followed by comma-separated list of document numbers. If none are relevant, you should instead write 'None'.
Secondly, Decide which of the retrieved documents contain facts that should be cited in a good answer to the user's last input by writing 'Cited Documents:' followed a comma-separated list of document numbers. If you dont want to cite any of them, you should instead write 'None'.
Thirdly, Write 'Answer:' followed by a response to the user's last input in high quality natural english. Use the retrieved documents to help you. Do not insert any citations or grounding markup.
Finally, Write 'Grounded answer:' followed by a response to the user's last input in high quality natural english. Use the symbols <co: doc> and </co: doc> to indicate when a fact comes from a document in the search result, e.g <co: 0>my fact</co: 0> for a fact from document 0.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"""
