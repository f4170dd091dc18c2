"""`chat`, `generate` (and `bench`) with `--endpoint`, against a real OpenAI-compatible server started here
(`transformers serve` on a small checkpoint, see openai_server.py), plus a stub for the failures a healthy server
never shows. Each CLI run is a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason='the real server is `transformers serve`: pip install -e ".[test]"')
pytest.importorskip("uvicorn", reason='the real server is `transformers serve`: pip install -e ".[test]"')

import pexpect  # noqa: E402

from cohere_cli.remote.backend import TextFilter  # noqa: E402
from factory_checkpoint import make_endless_checkpoint  # noqa: E402
from factory_tokenizer import load_reference  # noqa: E402
from openai_server import StubServer, TransformersServe, free_port  # noqa: E402
from test_repl import STATUS, Chat  # noqa: E402

CLI_TIMEOUT = 180  # seconds for one CLI run on a busy machine
CONTEXT = 32768  # the endless checkpoint's context (the REPL reads it from the local config)


def cohere(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def cohere_json(*args: str) -> dict:
    r = cohere(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A model that never says a stop token: answers run to --max-tokens, long enough to interrupt or to kill the
    server under."""
    return make_endless_checkpoint(tmp_path_factory.mktemp("served"), max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    s = TransformersServe(ckpt, tmp_path_factory.mktemp("serve")).start()
    yield s
    s.stop()


# ---- generate ------------------------------------------------------------------------------------------------------
def test_generate_streams_from_the_server(server, ckpt):
    # no MODEL: `transformers serve` lists the model by its folder's path, and that path is the server's word, not the
    # user's: nothing local is read (see test_a_served_id_is_never_a_local_path), so counts come from its usage
    rec = cohere_json("generate", "--endpoint", server.url, "The quick brown fox", "-n", "8")
    assert rec["endpoint"] == server.url and rec["prompt_ids"] is None
    assert rec["completion_tokens"] == 8 and rec["finish_reason"] == "length"
    assert rec["text"] and rec["ttft_s"] > 0 and rec["prompt_tokens"] > 0
    # MODEL lends its tokenizer: the prompt ids are the local ones (BOS + text), text on stdout, stats on stderr
    r = cohere("generate", str(ckpt), "The quick brown fox", "--endpoint", server.url, "-n", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout and "8 generated" in r.stderr and not error_lines(r.stderr)
    local = cohere_json("generate", str(ckpt), "The quick brown fox", "-n", "1")
    rec = cohere_json("generate", str(ckpt), "The quick brown fox", "--endpoint", server.url, "-n", "8")
    assert rec["prompt_ids"] == local["prompt_ids"]


def test_a_served_id_is_never_a_local_path(ckpt):
    """The id a server reports names a store entry at most: a folder at that path (a checkpoint, ~/.ssh, a planted
    template) is never opened as the served model's local copy. Only MODEL, which the user gave, is a path."""
    from cohere_cli.remote.backend import local_folder

    assert (ckpt / "tokenizer.json").is_file()
    assert local_folder(None, str(ckpt)) is None
    assert local_folder(None, f"{ckpt}@main") is None
    assert local_folder(str(ckpt), str(ckpt)) == ckpt  # the user's MODEL counts


# ---- chat ----------------------------------------------------------------------------------------------------------
def test_chat_prompt_over_the_server_answers_like_the_local_model(server, ckpt):
    args = ("--prompt", "Hello there, who are you?", "--system", "Be brief.", "-n", "8")
    local = cohere_json("chat", str(ckpt), *args, "--dtype", "float32")
    remote = cohere_json("chat", "--endpoint", server.url, *args)  # the server applies the template
    assert remote["text"] == local["text"]  # same weights, greedy: the same answer
    assert remote["prompt_tokens"] == local["prompt_tokens"]  # the server rendered the same prompt
    assert remote["completion_tokens"] == 8
    with_tok = cohere_json("chat", str(ckpt), "--endpoint", server.url, *args)
    assert with_tok["prompt_ids"] == local["prompt_ids"] and with_tok["text"] == local["text"]


def test_grounded_chat_renders_rag_here_and_sends_a_raw_completion(server, ckpt, tmp_path):
    doc = tmp_path / "penguins.txt"
    doc.write_text("Emperor penguins are the tallest penguins.\n")
    r = cohere("chat", str(ckpt), "--endpoint", server.url, "--doc", str(doc), "--prompt", "Which penguin is tallest?",
               "--citations", "fast", "-n", "3", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    ref = load_reference(ckpt)
    expected = ref.apply_chat_template(
        [{"role": "user", "content": "Which penguin is tallest?"}], chat_template="rag",
        documents=[{"title": "penguins.txt", "text": "Emperor penguins are the tallest penguins."}],
        citation_mode="fast", tokenize=True, add_generation_prompt=True, return_dict=False)
    assert rec["prompt_ids"] == list(expected)
    assert rec["completion_tokens"] == 3
    # transformers serve takes text only and tokenizes it with its own special tokens: said once, not hidden
    if rec["prompt_tokens"] != len(expected):
        assert "tokenized the prompt itself" in r.stderr
    # without a local tokenizer there is no template to render: one clear line
    r = cohere("chat", "--endpoint", server.url, "--doc", str(doc), "--prompt", "Which penguin?")
    assert r.returncode == 1 and len(error_lines(r.stderr)) == 1
    assert "no local tokenizer" in r.stderr and "MODEL" in r.stderr


def held_answer(chat: Chat, stub: StubServer, text: str) -> None:
    """Send a message and return once its first words are on the screen and the stub holds the rest of the stream
    until told: whatever the test does next happens mid-answer, however busy the machine."""
    chat.p.sendline(text)
    chat.p.expect_exact("\x1b[?2004l")  # the line is accepted (see test_repl.Chat.say)
    chat.p.expect_exact("Once upon")  # the stub's first words
    assert stub.holding.wait(CLI_TIMEOUT)


def test_repl_ctrl_c_mid_answer_closes_the_stream_and_keeps_the_session(tmp_path):
    with StubServer("hold") as stub:
        chat = Chat(["--endpoint", stub.url, "--plain"], tmp_path, timeout=CLI_TIMEOUT)
        held_answer(chat, stub, "tell me everything")
        chat.p.sendintr()  # Ctrl-C mid-answer: closes the connection, keeps the session
        chat.p.expect("interrupted")
        chat.prompt()
        save = tmp_path / "conv.json"
        chat.say(f"/save {save}")
        msgs = json.loads(save.read_text())["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"] == "Once upon"
        stub.release()
        out = chat.say("and now?")  # the session goes on: the next answer is whole
        assert "Once upon a time" in out and not error_lines(out)
        chat.close()


def test_repl_over_the_server_save_context_meter_show_and_stats(server, ckpt, tmp_path):
    chat = Chat(["--endpoint", server.url, str(ckpt), "--plain", "--max-tokens", "5"], tmp_path,
                timeout=CLI_TIMEOUT)
    out = chat.say("tell me everything")
    used, ctx, prefilled = map(int, STATUS.findall(out)[-1])
    assert ctx == CONTEXT and used > 5 and prefilled > 0  # context from the local config, counts from usage
    save = tmp_path / "conv.json"
    chat.say(f"/save {save}")
    msgs = json.loads(save.read_text())["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"]
    out = chat.say("/show")
    assert server.url in out and f"{CONTEXT} tokens" in out
    out = chat.say("/stats")
    assert "answer" in out
    chat.close()


def test_server_gone_mid_stream_leaves_the_repl_alive(tmp_path):
    with StubServer("hold") as stub:
        chat = Chat(["--endpoint", stub.url, "--plain"], tmp_path, timeout=CLI_TIMEOUT)
        held_answer(chat, stub, "tell me a long story")
        stub.kill()  # the stream breaks off mid-answer, and nothing listens any more
        chat.p.expect(r"error:[^\n]*mid-answer")
        chat.prompt()
        save = tmp_path / "cut.json"
        chat.say(f"/save {save}")
        msgs = json.loads(save.read_text())["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"] == "Once upon"  # kept
        out = chat.say("are you there?")  # the server is gone: one line, and the session goes on
        assert "connection refused" in out
        out = chat.say("/show")
        assert "1 exchange (2 messages)" in out and stub.url in out
        chat.p.sendline("/exit")
        chat.p.expect(pexpect.EOF)
        chat.p.close()
        assert chat.p.exitstatus == 0


# ---- failures: one line each ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour,args,expect", [
    ("refused", (), "connection refused"),
    ("auth", (), "--api-key"),
    ("silent", ("--timeout", "1"), "within 1 s"),
    ("html", (), "not an event stream"),
    ("cut", (), "mid-answer"),
])
def test_failures_are_one_line(behaviour, args, expect):
    if behaviour == "refused":
        url = f"http://127.0.0.1:{free_port()}/v1"
        r = cohere("generate", "--endpoint", url, "hello", *args)
    else:
        with StubServer(behaviour) as stub:
            r = cohere("generate", "--endpoint", stub.url, "hello", *args)
    assert r.returncode == 1
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and expect in lines[0], r.stderr
    if behaviour == "cut":
        assert r.stdout == "Once upon"  # what arrived before the cut stays printed


def test_api_key_and_served_model_are_sent_and_a_whole_answer_still_prints():
    with StubServer("auth") as stub:
        r = cohere("generate", "--endpoint", stub.url, "hello", "--api-key", "sesame", "-n", "4")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "Once upon a time\n"  # the answer's line ends, as with a local model
        assert stub.requests[-1]["auth"] == "Bearer sesame"
        assert stub.requests[-1]["body"]["model"] == "stub-model"  # the one /v1/models lists
        r = cohere("generate", "--endpoint", stub.url, "hello", "--api-key", "sesame", "--served-model", "other")
        assert r.returncode == 1 and "does not serve 'other'" in error_lines(r.stderr)[0]
    with StubServer("whole") as stub:  # a server that ignores "stream": true
        r = cohere("generate", "--endpoint", stub.url, "hello")
        assert r.returncode == 0 and r.stdout == "a whole answer\n"
        assert "does not stream" in r.stderr and not error_lines(r.stderr)


def test_text_filter_drops_markers_split_across_chunks():
    f = TextFilter()
    out = "".join(f.feed(c) for c in ["Hel", "lo<|START_", "RESPONSE|> wor", "ld <|END_OF", "_TURN_TOKEN|>junk"])
    assert out + f.flush() == "Hello world " and f.stopped
    f = TextFilter()
    assert f.feed("a < b <") == "a < b " and f.flush() == "<"  # a lone "<" is text
