"""Issue 16, the chat side: what a model says cannot drive the terminal (class 4); no command, bad input or Ctrl-C
ends the REPL or loses the conversation (class 3); a local input (`--doc`, `/doc`, `/load`, piped stdin) is bounded
and never hangs (classes 5 and 6). The model is the real one with its text replaced (tests/hostile_cli.py)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import re

import pexpect
import pytest

from factory_checkpoint import make_endless_checkpoint

HOSTILE_CLI = Path(__file__).with_name("hostile_cli.py")
# A clipboard write (OSC 52), a window title (OSC 0), a screen clear (CSI 2J), a colour, a NUL, a C1 CSI, a lone CR
HOSTILE = ("Hello \x1b]52;c;aGk=\x07 and \x1b]0;pwned\x07 then\n\n\x1b[2J cleared \x1b[31mred\x00 "
           "\u009b2J c1 \rover é 你好 🦙\n")
RAW = ("\x1b]52", "\x1b]0;", "\x1b[2J", "\x1b[31mred", "\x00", "\u009b")  # none of these may reach a terminal
SHOWN = "␛]52;c;aGk=␇"  # what the terminal shows instead
ANSI = re.compile(r"\x1b\][^\x07]*\x07|\x1b\[[0-9;?]*[ -/]*[@-~]|\r")


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    return make_endless_checkpoint(tmp_path_factory.mktemp("endless"), max_position_embeddings=4096)


@pytest.fixture(scope="module")
def evil(endless, tmp_path_factory):
    """The endless checkpoint with one more chat template, `evil`: the default one, but a message "raise" makes it
    raise_exception with a text full of escape sequences."""
    d = tmp_path_factory.mktemp("evil") / "m"
    shutil.copytree(endless, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    default = next(t["template"] for t in cfg["chat_template"] if t["name"] == "default")
    raising = "{% if messages[-1]['content'] == 'raise' %}{{ raise_exception('no \x1b]0;pwned\x07 \x1b[2J way') }}{% endif %}"
    cfg["chat_template"].append({"name": "evil", "template": raising + default})
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture()
def said(tmp_path):
    f = tmp_path / "said.txt"
    f.write_bytes(HOSTILE.encode("utf-8"))
    return f


def env_for(home: Path) -> dict:
    # no cursor position request: nobody answers it here, and prompt-toolkit would wait for it at every prompt
    return dict(os.environ, COHERE_CLI_HOME=str(home), TERM="xterm-256color", COLUMNS="120", PROMPT_TOOLKIT_NO_CPR="1")


# The memory cases run under an address-space limit: a regression (reading /dev/zero whole) fails in a second with a
# MemoryError instead of eating the machine. A chat with torch and a tiny model needs well under 1 GiB of it; few malloc
# arenas and threads keep that true on a machine with many cores.
MEMORY_LIMIT = 4 << 30


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def limited_env(home: Path) -> dict:
    return dict(env_for(home), MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="2")


def spawn(step: str, args: list[str], home: Path, timeout: float = 60, limited: bool = False) -> pexpect.spawn:
    """`cohere ARGS` in a pseudo-terminal, through tests/hostile_cli.py STEP."""
    return pexpect.spawn(sys.executable, [str(HOSTILE_CLI), step, *args], encoding="utf-8", timeout=timeout,
                         dimensions=(50, 120), env=limited_env(home) if limited else env_for(home),
                         preexec_fn=limit_memory if limited else None)


def command(p: pexpect.spawn, line: str) -> str:
    """A slash command's output until the next prompt, escape sequences removed."""
    p.sendline(line)
    p.expect_exact("\x1b[?2004l")
    p.expect(">>>")
    return ANSI.sub("", p.before)


def held(p: pexpect.spawn, marker: Path, timeout: float = 60) -> None:
    """Until the held render (tests/hostile_cli.py) is reached, reading the terminal meanwhile so it never blocks."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert p.isalive(), p.before
        assert time.monotonic() < deadline, "the template render was never reached"
        try:
            p.expect(r"[\s\S]+", timeout=0.05)
        except pexpect.TIMEOUT:
            pass


def answer_raw(p: pexpect.spawn, line: str) -> str:
    """Everything the terminal received while `line` was answered, escape sequences included."""
    p.sendline(line)
    p.expect_exact("\x1b[?2004l")  # the line is accepted (tests/test_repl.py, Chat.say)
    p.expect("tok/s")
    raw = p.before
    p.expect(">>>")
    return raw


# ---- class 4: terminal escape sequences ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["markdown", "plain"])
def test_model_escape_sequences_never_reach_the_terminal_in_the_repl(evil, said, tmp_path, mode):
    p = spawn(f"say:{said}", ["chat", str(evil), "--max-tokens", "40", "--template", "evil",
                              *(["--plain"] if mode == "plain" else [])], tmp_path)
    p.expect(">>>")
    raw = answer_raw(p, "hi")
    for seq in RAW:
        assert seq not in raw, (seq, raw)
    assert SHOWN in raw and "é 你好 🦙" in raw  # shown visibly; ordinary Unicode kept
    # a template's raise_exception text is the checkpoint's: shown inert too, and the session goes on
    p.sendline("raise")
    p.expect_exact("\x1b[?2004l")
    p.expect("error:")
    p.expect(">>>")
    assert "\x1b]0;" not in p.before and "\x1b[2J" not in p.before and "␛]0;pwned␇" in p.before
    p.sendeof()
    p.expect(pexpect.EOF)


def test_markdown_links_and_images_show_their_url_and_are_no_terminal_hyperlinks(endless, tmp_path):
    """A link's target is the model's word: rendered as an OSC 8 hyperlink, "the docs" would open a page the user
    never saw. Markdown mode shows it as text with the URL beside it, images likewise."""
    said = tmp_path / "links.txt"
    said.write_text("See [the docs](https://evil.example/phish) and ![img](https://evil.example/t.png) here.\n\n"
                    "Also <https://auto.example/x> and [![alt](https://e.example/a.png)](https://wrap.example/y)\n")
    p = spawn(f"say:{said}", ["chat", str(endless), "--max-tokens", "40"], tmp_path)
    p.expect(">>>")
    raw = answer_raw(p, "hi")
    assert "\x1b]8;" not in raw, raw
    shown = ANSI.sub("", raw)
    for text in ("the docs (https://evil.example/phish)", "🌆 img (https://evil.example/t.png) here.",
                 "(https://auto.example/x)", "🌆 alt (https://e.example/a.png) (https://wrap.example/y)"):
        assert text in shown, (text, shown)
    p.sendeof()
    p.expect(pexpect.EOF)


def test_generate_on_a_terminal_is_inert_and_piped_is_byte_for_byte(endless, said, tmp_path):
    args = ["generate", str(endless), "hi", "--max-tokens", "40"]
    p = spawn(f"say:{said}", args, tmp_path)
    p.expect(pexpect.EOF)
    for seq in RAW:
        assert seq not in p.before, (seq, p.before)
    assert SHOWN in p.before

    piped = subprocess.run([sys.executable, str(HOSTILE_CLI), f"say:{said}", *args], capture_output=True,
                           env=env_for(tmp_path), timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == HOSTILE.encode("utf-8")  # the model's text as it was, NUL and ESC included


def test_piped_chat_keeps_the_model_text_byte_for_byte(endless, said, tmp_path):
    base = [sys.executable, str(HOSTILE_CLI), f"say:{said}", "chat", str(endless), "--max-tokens", "40"]
    repl = subprocess.run(base, input=b"hi\n", capture_output=True, env=env_for(tmp_path), timeout=120)
    assert repl.returncode == 0, repl.stderr
    assert repl.stdout == HOSTILE.encode("utf-8")
    one = subprocess.run([*base, "--prompt", "hi"], capture_output=True, env=env_for(tmp_path), timeout=120)
    assert one.returncode == 0, one.stderr
    assert one.stdout == HOSTILE.encode("utf-8")


def test_piped_chat_shows_hostile_document_names_inert(endless, tmp_path):
    doc = tmp_path / "a\x1b]0;pwned\x07\x1b[2J.txt"
    doc.write_text("Penguins are birds.\n")
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "chat", str(endless), "--max-tokens", "2"],
                       input=f"/doc add {doc}\n/doc list\n".encode(), capture_output=True, env=env_for(tmp_path),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"\x1b" not in r.stderr and r.stderr.count("a␛]0;pwned␇␛[2J.txt".encode()) == 2


# ---- class 3: nothing ends the session or loses the conversation ----------------------------------------------

def test_bad_commands_and_ctrl_c_while_the_template_renders_keep_the_session(endless, tmp_path):
    """/save where it cannot, a seed torch refuses, Ctrl-C while the template renders (a /regen's and a new
    message's), and the bounded local inputs of /load and /doc (classes 5 and 6): each one error line, the REPL
    alive, the conversation as it was. Under an address-space limit (a regression must not eat the machine)."""
    marker = tmp_path / "held"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.txt"  # 1 GiB of text, sparse: no disk used
    with open(huge, "wb") as f:
        f.truncate(1 << 30)
    many = tmp_path / "many.json"  # 10^6 messages: over the size bound
    many.write_text(json.dumps({"messages": [{"role": "user", "content": ""}] * 10**6}))
    several = tmp_path / "several.json"  # under the size bound, over the message count
    several.write_text(json.dumps({"messages": [{"role": "user", "content": ""}] * 10_001}))
    p = spawn(f"render:3,4:{marker}", ["chat", str(endless), "--plain", "--max-tokens", "4"], tmp_path,
              limited=True)
    p.expect(">>>")
    answer_raw(p, "first")  # render 1
    cases = {
        f"/save {tmp_path}": "is a folder",
        "/save /proc/x.json": "cannot save to /proc/x.json",
        f"/save {a_file}/x.json": "is a file, not a folder",
        f"/save {tmp_path}/nowhere/deeper/x.json": "does not exist",
        "/set seed 1180591620717411303424": "seed must be between",
        "/set seed -9223372036854775809": "seed must be between",
        "/load /dev/zero": "not a regular file",
        f"/load {fifo}": "not a regular file",
        f"/load {many}": "over the 8 MiB",
        f"/load {several}": "10001 messages, over the 10000",
        f"/load {a_file}": "is not valid JSON",
        "/doc add /dev/zero": "not a regular file",
        f"/doc add {fifo}": "not a regular file",
        f"/doc add {huge}": "over the 4 MiB",
    }
    for line, said in cases.items():
        out = command(p, line)
        assert "error:" in out and said in out and "Traceback" not in out, (line, out)
    assert not (tmp_path / "nowhere").exists()  # /save never creates folders
    assert "18446744073709551615" in command(p, "/set seed 18446744073709551615")  # torch's largest seed
    answer_raw(p, "second")  # render 2: the seed is used, the answer comes

    p.sendline("/regen")  # render 3 waits for the Ctrl-C
    held(p, marker.with_name("held.3"))
    p.sendintr()
    p.expect_exact("[interrupted]")
    p.expect(">>>")
    p.sendline("third")  # render 4 waits too
    held(p, marker.with_name("held.4"))
    p.sendintr()
    p.expect_exact("[interrupted]")
    p.expect(">>>")
    save = tmp_path / "kept.json"
    assert "saved 2 exchanges (4 messages)" in command(p, f"/save {save}")
    msgs = json.loads(save.read_text())["messages"]
    assert [(m["role"], m["content"]) for m in msgs][::2] == [("user", "first"), ("user", "second")]
    assert all(m["role"] == "assistant" and m["content"] for m in msgs[1::2])  # /regen's old answer is kept
    p.sendeof()
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0


# ---- classes 5 and 6: local inputs are bounded and never hang --------------------------------------------------

def run_limited(args: list[str], home: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`cohere ARGS` under the address-space limit; a hang fails at the timeout instead of blocking the suite."""
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], input=stdin, capture_output=True,
                          env=limited_env(home), preexec_fn=limit_memory, timeout=120)


def test_doc_and_history_files_are_bounded_regular_files(endless, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB of text, sparse
    cases = [
        (["--doc", "/dev/zero"], b"not a regular file"),
        (["--doc", str(fifo)], b"not a regular file"),  # used to block in open() forever
        (["--doc", str(huge)], b"over the 4 MiB"),
        (["--history", "/dev/zero"], b"not a regular file"),
        (["--history", str(fifo)], b"not a regular file"),
    ]
    for args, said in cases:
        r = run_limited(["chat", str(endless), *args, "--prompt", "hi"], tmp_path)
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and said.decode() in lines[0], (args, r.stderr)


def test_piped_input_is_bounded_and_ends_inside_an_unclosed_block(endless, tmp_path):
    """An over-long line is one error and the session goes on; the input ending inside a \"\"\" block ends the
    session cleanly (it used to spin forever reading empty lines)."""
    stdin = b"x" * (5 << 20) + b"\nhi\n/stats\n\"\"\"never closed\nmore\n"
    r = run_limited(["chat", str(endless), "--max-tokens", "2"], tmp_path, stdin)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "over 4 MiB" in err and "tok/s" in err and "answer" in err  # refused, then answered, then /stats
    assert 'ended inside a """ block' in err and "Traceback" not in err
    # the same unclosed block right at the start, and a block over the bound: still one line each, exit 0
    stdin = b'"""' + b"y\n" * (3 << 20) + b'"""\n"""open\n'
    r = run_limited(["chat", str(endless), "--max-tokens", "2"], tmp_path, stdin)
    err = r.stderr.decode()
    assert r.returncode == 0 and "over 4 MiB" in err and 'ended inside a """ block' in err, err


def test_an_unexpected_error_in_a_turn_is_one_line_and_the_conversation_stays(monkeypatch, capsys, tmp_path):
    """The last resort: a bug in one turn (here the backend raises ValueError, then a non-memory RuntimeError) is one
    error line; the session goes on and the conversation is as before that turn. Also a saved conversation whose
    documents hold a number is refused in one line."""
    from io import StringIO

    from cohere_cli.chat.conversation import Conversation
    from cohere_cli.engine.response import Response
    from cohere_cli.ui.repl import Repl

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [], "documents": [{"title": "t", "text": 5}]}))

    class Engine:
        name, context, history = "fake", 100, []

        def __init__(self):
            self.calls, self.resets = 0, 0

        def fit(self, conv):
            self.calls += 1
            if self.calls == 2:
                raise ValueError("a bug")
            if self.calls == 3:
                raise RuntimeError("another bug")
            return [1, 2], 0

        def stream(self, conv, ids):
            yield Response(text="fine", token=None, prompt_tokens=2, generation_tokens=1, prefill_tokens_per_s=0.0,
                           decode_tokens_per_s=0.0, ttft_s=0.001, peak_memory_bytes=0, finish_reason="stop")

        def reset(self):
            self.resets += 1

    conv, engine = Conversation(), Engine()
    monkeypatch.setattr("sys.stdin", StringIO(f"first\nsecond\n/regen\n/load {bad}\nthird\n"))
    repl = Repl(engine, conv, plain=True, history_file=None)
    repl.run()
    assert [(t["role"], t["content"]) for t in repl.conv.turns] == [
        ("user", "first"), ("assistant", "fine"), ("user", "third"), ("assistant", "fine")]
    err = capsys.readouterr().err
    assert "unexpected ValueError: a bug" in err and "unexpected RuntimeError: another bug" in err
    assert "documents must be a list of objects with string values" in err and "Traceback" not in err
    assert engine.resets == 2
