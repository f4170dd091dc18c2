"""`--endpoint` against a hostile server (the threat model: an endpoint and everything it sends is untrusted): the
suite's stub (openai_server.StubServer) made hostile on demand. Each case is a CLI run in a child process under an
address-space limit, so a regression that reads without bound fails fast (MemoryError, a traceback) instead of
eating the machine. No test waits on timing luck: endless servers write until the client hangs up, and the time
bound is tested with --timeout 1 against a server that provably never makes progress (asserting that it ends)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest

from cohere_cli.remote.http import MAX_BODY
from limits import run_cli
from openai_server import StubServer

MEMORY_LIMIT = 800 << 20  # address space of the CLI child: it runs in ~300 MiB; a 3 GiB answer does not fit
CLI_TIMEOUT = 120  # a run that should end in about a second; generous for a busy machine
ESC = "\x1b"
HOSTILE = "\x1b]52;c;cHduZWQ=\x07\x1b]0;owned\x07\x1b[2J[link=file:///etc/passwd]x[/link]"  # clipboard, title, clear


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cohere(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, preexec_fn=_limit)


def one_error(r: subprocess.CompletedProcess, expect: str) -> str:
    """The run failed with exactly one inert error line containing `expect`, and no traceback."""
    assert r.returncode == 1, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and ESC not in r.stderr, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], r.stderr[-2000:]
    return lines[0]


def generate(stub: StubServer, *args: str) -> subprocess.CompletedProcess:
    return cohere("generate", "--endpoint", stub.url, "hello", *args)


def clean_json(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return json.loads(r.stdout)


# ---- memory ---------------------------------------------------------------------------------------------------------
def test_an_endless_whole_answer_stops_at_the_body_bound():
    with StubServer("endless_json") as stub:  # the reported "3 GiB non-streaming answer", made endless
        one_error(generate(stub), "more than 32 MiB in one body")
    body = b'{"choices": [{"index": 0, "text": "' + b"y" * (33 << 20) + b'", "finish_reason": "stop"}]}'
    with StubServer("raw", body=body) as stub:  # variant: one with a Content-Length just past the bound
        one_error(generate(stub), "more than 32 MiB")


def test_an_endless_event_line_stops_at_the_line_bound():
    with StubServer("endless_line") as stub:
        one_error(generate(stub), "event line over 1 MiB")
    # variant: short lines, but an event that never ends (no blank line)
    with StubServer("chunks", events=[b"data: " + b"z" * 1000 + b"\n"] * 2000) as stub:
        one_error(generate(stub), "event line over 1 MiB")


def test_an_endless_models_listing_stops_at_the_body_bound():
    with StubServer("stream", models="endless") as stub:
        one_error(generate(stub), "more than 32 MiB to /v1/models")
    # variant: a listing nested 100,000 deep is no listing (ignored), the answer still comes
    with StubServer("stream", models=b"[" * 100_000) as stub:
        r = generate(stub)
        assert r.returncode == 0 and r.stdout == "Once upon a time\n", r.stderr[-2000:]


# ---- hangs ----------------------------------------------------------------------------------------------------------
def test_keepalive_comments_do_not_reset_the_timeout():
    """--timeout is the longest time without progress (a chunk with text): `: ping` forever is no progress."""
    with StubServer("pings") as stub:
        one_error(generate(stub, "--timeout", "1"), "no answer for 1 s")
    with StubServer("empty_events") as stub:  # variant: chat, and events that carry no text instead of comments
        one_error(cohere("chat", "--endpoint", stub.url, "--prompt", "hi", "--timeout", "1"), "no answer for 1 s")


def test_an_endless_stream_stops_at_max_tokens():
    with StubServer("endless_tokens") as stub:  # a server that ignores max_tokens
        rec = clean_json(generate(stub, "-n", "5", "--json"))
        assert rec["text"] == " tok" * 5 and rec["completion_tokens"] == 5 and rec["finish_reason"] == "length"
        r = cohere("chat", "--endpoint", stub.url, "--prompt", "hi", "-n", "3", "--plain")  # variant: chat
        assert r.returncode == 0 and r.stdout == " tok" * 3 + "\n", r.stderr[-2000:]


def test_an_endless_stream_of_big_chunks_stops_at_the_answer_bound():
    """The reported case: chunks of 1,000,000 characters. --max-tokens counts one token per LONGEST_TOKEN characters
    of a chunk, not one per chunk; whatever it says, the whole answer stops at MAX_BODY with one error line."""
    big = "y" * 1_000_000
    with StubServer("endless_big") as stub:
        r = run_cli(["chat", "--endpoint", stub.url, "--prompt", "hi"], address_space=MEMORY_LIMIT,
                    timeout=CLI_TIMEOUT)  # the default --max-tokens: one chunk is thousands of tokens
        assert r.returncode == 0 and "finish: length" in r.stderr, r.stderr[-2000:]
        assert r.stdout == big * (len(r.stdout) // len(big)) + "\n" and len(r.stdout) <= 8 * len(big)
        r = run_cli(["chat", "--endpoint", stub.url, "--prompt", "hi", "--max-tokens", "3000"],
                    address_space=MEMORY_LIMIT, timeout=CLI_TIMEOUT)
        assert r.returncode == 0 and r.stdout == big + "\n" and "finish: length" in r.stderr, r.stderr[-2000:]
        # a --max-tokens no bound at all: the answer bound ends it, what arrived printed, the connection closed
        r = run_cli(["chat", "--endpoint", stub.url, "--prompt", "hi", "--max-tokens", "1000000000"],
                    address_space=MEMORY_LIMIT, timeout=CLI_TIMEOUT)
        one_error(r, "more than 32 MiB of answer text")
        assert r.stdout == big * (MAX_BODY // len(big)), len(r.stdout)  # piped: kept as it came, no line end added


def test_the_repl_survives_an_answer_past_the_bound():
    """Variant: the chat REPL on a piped stdin. The turn ends with one error line, what arrived is kept, the session
    goes on (/stats answers) and ends normally."""
    with StubServer("endless_big") as stub:
        r = run_cli(["chat", "--endpoint", stub.url, "--max-tokens", "1000000000"], address_space=MEMORY_LIMIT,
                    input="hi\n/stats\n", timeout=CLI_TIMEOUT)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "more than 32 MiB of answer text" in errors[0], r.stderr[-2000:]
    stats = r.stderr.split(errors[0])[1]  # /stats, after the error: the stopped answer is in it, whole
    assert "this session's answers" in stats and "interrupted" in stats and "…" not in stats, stats
    assert len(r.stdout) == (MAX_BODY // 1_000_000) * 1_000_000 + 1


# ---- tracebacks where one line belongs --------------------------------------------------------------------------------
@pytest.mark.parametrize("usage", [
    {"prompt_tokens": "x", "completion_tokens": "y"},  # the reported case
    None, [], "usage", {"prompt_tokens": -5, "completion_tokens": [1]}, {"prompt_tokens": True},
    {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": "x"}}, {"prompt_tokens_details": []},
])
def test_usage_of_the_wrong_type_is_ignored(usage):
    with StubServer("usage", usage=usage) as stub:
        rec = clean_json(generate(stub, "--json"))
        assert rec["text"] == "Once upon a time" and rec["completion_tokens"] == 4  # counted here instead


def test_malformed_choices_and_deltas_are_ignored():
    events = [{"choices": {"0": {"text": "a"}}}, {"choices": 5}, {"choices": "text"}, {"choices": [5, None]},
              {"choices": [{"text": ["x"]}]}, {"choices": [{"delta": {"content": 5}}]}, {"choices": [{"delta": 7}]},
              {"choices": [{"index": [], "text": "z"}]}, {"choices": [{"text": "ok", "finish_reason": ["stop"]}]},
              {"choices": [{"text": "!", "finish_reason": {"a": 1}}]}, [1, 2], "str", 7,
              {"choices": [{"text": "", "finish_reason": "stop"}]}, b"data: [DONE]\n\n"]
    with StubServer("chunks", events=events) as stub:
        rec = clean_json(generate(stub, "--json"))
        assert rec["text"] == "ok!" and rec["finish_reason"] == "stop"
    deep = [b"data: " + b"[" * 100_000 + b"\n\n"]  # variant: an event nested 100,000 deep
    with StubServer("chunks", events=deep) as stub:
        one_error(generate(stub), "not JSON")


@pytest.mark.parametrize("status,body,ctype", [
    (500, HOSTILE.encode() + b"\n<html>oops</html>", "text/html"),  # not JSON, escape sequences
    (500, json.dumps({"error": {"message": HOSTILE}}).encode(), "application/json"),
    (400, b"[" * 100_000, "application/json"),  # nested past any parser
    (503, json.dumps({"error": {"message": ["not", "a", "string"]}}).encode(), "application/json"),
    (500, b"\xff\xfe not utf-8", "text/plain"),
])
def test_error_bodies_are_one_inert_line(status, body, ctype):
    with StubServer("raw", status=status, body=body, ctype=ctype) as stub:
        one_error(generate(stub), f"answered {status}")


def test_a_mid_answer_error_event_is_one_inert_line():
    with StubServer("chunks", events=[{"choices": [{"text": "Hi"}]}, {"error": {"message": HOSTILE}}]) as stub:
        r = generate(stub)
        one_error(r, "failed mid-answer")
        assert r.stdout.startswith("Hi")


# ---- the terminal -------------------------------------------------------------------------------------------------------
def test_served_model_ids_are_sent_verbatim_and_shown_inert():
    hostile_id = "cmd" + HOSTILE
    listing = json.dumps({"data": [{"id": hostile_id, "max_model_len": "4096"}]}).encode()  # context of a bad type
    with StubServer("stream", models=listing) as stub:
        r = cohere("chat", "--endpoint", stub.url, "--prompt", "hi", "--plain")
        assert r.returncode == 0 and ESC not in r.stderr, r.stderr[-2000:]
        assert stub.requests[-1]["body"]["model"] == hostile_id  # the server's own word, back to it
        r = cohere("bench", "--endpoint", stub.url, "--seq", "8", "--gen", "2", "--concurrency", "1")
        assert r.returncode == 0 and ESC not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    two = json.dumps({"data": [{"id": hostile_id}, {"id": HOSTILE * 1000}, 5, {"id": {"x": 1}}]}).encode()
    with StubServer("stream", models=two) as stub:  # variant: several, one of them huge: one short line
        line = one_error(generate(stub), "pick one with --served-model")
        assert len(line) < 1000


def test_the_repl_survives_bad_answers_and_shows_the_served_id_inert(tmp_path):
    from test_repl import Chat  # pexpect: a real terminal

    hostile_id = "cmd" + HOSTILE
    events = [{"choices": [{"text": "fine"}], "usage": {"prompt_tokens": "x"}}, {"choices": 5},
              b"data: {not json\n\n"]
    with StubServer("chunks", events=events, models=json.dumps({"data": [{"id": hostile_id}]}).encode()) as stub:
        chat = Chat(["--endpoint", stub.url, "--plain"], tmp_path, timeout=CLI_TIMEOUT)
        out = chat.say("hello")
        assert "fine" in out and "not JSON" in out and "Traceback" not in out
        out = chat.say("again")  # the session goes on
        assert "not JSON" in out and "Traceback" not in out
        out = chat.say("/show")
        assert "cmd␛]52;c;cHduZWQ=␇" in out  # shown, inert
        chat.close()
