"""`cohere serve` with our own clients, each a subprocess as a user runs it: `cohere chat --endpoint` (piped, /regen,
the REPL's Ctrl-C mid-answer freeing the server's slot), `cohere bench --endpoint --concurrency 1,4`; and the command
itself: a non-loopback --host without a key is one line, and Ctrl-C stops a running server cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pexpect
import pytest

from factory_checkpoint import make_endless_checkpoint
from serve_harness import Harness
from test_repl import Chat

from cohere_cli.engine.runtime import load_runtime
from cohere_cli.engine.batch import BatchEngine
from cohere_cli.serve.render import Served

CONTEXT = 2048
KEY = "client-key"
TIMEOUT = 180  # one CLI run on a busy machine


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_endless_checkpoint(tmp_path_factory.mktemp("serve-clients") / "tiny", hidden=32, layers=1, heads=2,
                                   kv_heads=1, intermediate=64, max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def server(folder):
    rt = load_runtime(str(folder), "float32")
    h = Harness(Served("tiny", rt.tokenizer, CONTEXT, rt.folder),
                BatchEngine(rt.model, rt.tokenizer, max_batch=4, context=CONTEXT, max_queue=16), api_key=KEY)
    yield h
    h.close()


def cohere(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT, env=dict(os.environ, COHERE_CLI_API_KEY=KEY))


def test_chat_endpoint_piped_with_regen(server):
    r = cohere("chat", "--endpoint", server.url, "--max-tokens", "6", "--plain", stdin="hello there\n/regen\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "error:" not in r.stderr
    assert len(re.findall(r"tok/s", r.stderr)) == 2, r.stderr  # the answer and the /regen answer
    assert r.stdout.strip()
    one = cohere("chat", "--endpoint", server.url, "--max-tokens", "6", "--prompt", "hello there", "--json")
    out = json.loads(one.stdout)
    assert out["completion_tokens"] == 6 and out["finish_reason"] == "length" and out["prompt_tokens"] > 0


def test_repl_ctrl_c_mid_answer_frees_the_servers_slot(server, tmp_path):
    chat = Chat(["--endpoint", server.url, "--api-key", KEY, "--plain", "--max-tokens", "1500"], tmp_path,
                timeout=TIMEOUT)
    chat.p.sendline("tell me everything")
    chat.p.expect_exact("\x1b[?2004l")  # the line is accepted
    assert server.worker.wait_for(lambda: server.worker.active() == 1, TIMEOUT)  # the server is answering it
    assert server.worker.wait_for(lambda: server.worker.steps > 0, TIMEOUT)
    chat.p.sendintr()
    chat.p.expect(r"interrupted|cancelled")
    chat.prompt()
    assert server.worker.wait_idle(30), "the interrupted answer still runs on the server"
    out = chat.say("/regen")  # the session goes on against the same server
    assert "tok/s" in out or "interrupted" not in out
    chat.close()


def test_bench_endpoint_at_concurrency_1_4_and_8(server):
    r = cohere("bench", "--endpoint", server.url, "--concurrency", "1,4,8", "--seq", "32", "--gen", "8", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    results = record["results"]
    assert [x["concurrency"] for x in results] == [1, 4, 8]
    assert all(x["errors"] == 0 and x["requests"] >= 4 and x["aggregate_tokens_per_s"] > 0 for x in results), results


def test_a_non_loopback_host_needs_a_key():
    env = {k: v for k, v in os.environ.items() if k != "COHERE_CLI_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "serve", "--host", "0.0.0.0"], capture_output=True,
                       text=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--api-key" in r.stderr, r.stderr


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])  # [::1] as written in a URL
def test_serve_command_answers_and_ctrl_c_stops_it(folder, host):
    if host == "[::1]" and not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    p = pexpect.spawn(sys.executable, ["-m", "cohere_cli", "serve", str(folder), "--port", "0", "--ctx", "256",
                                       "--host", host],
                      encoding="utf-8", timeout=TIMEOUT, dimensions=(24, 400))  # the start-up line unwrapped
    p.expect_exact("Ctrl-C stops")
    line = re.sub(r"\x1b\[[0-9;]*m", "", p.before)  # a terminal gets rich's colours
    url = re.search(r"serving tiny at (http://" + re.escape(host) + r":\d+)/v1", line).group(1)
    with urllib.request.urlopen(url + "/v1/models", timeout=TIMEOUT) as r:
        model = json.load(r)["data"][0]
    assert model["id"] == "tiny" and model["max_model_len"] == 256
    body = json.dumps({"prompt": "hi", "max_tokens": 3}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        assert json.load(r)["usage"]["completion_tokens"] == 3
    p.kill(signal.SIGINT)
    p.expect("stopped")
    p.expect(pexpect.EOF)
    p.wait()
    assert p.exitstatus == 0 and "Traceback" not in p.before
