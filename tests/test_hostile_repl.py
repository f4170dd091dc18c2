"""Issue 16, the chat side: what a model says cannot drive the terminal (class 4); no command, bad input or Ctrl-C
ends the REPL or loses the conversation (class 3); a local input (`--doc`, `/doc`, `/load`, piped stdin) is bounded
and never hangs (classes 5 and 6). The model is the real one with its text replaced (tests/hostile_cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from factory_checkpoint import make_endless_checkpoint

HOSTILE_CLI = Path(__file__).with_name("hostile_cli.py")
# A clipboard write (OSC 52), a window title (OSC 0), a screen clear (CSI 2J), a colour, a NUL, a C1 CSI, a lone CR
HOSTILE = ("Hello \x1b]52;c;aGk=\x07 and \x1b]0;pwned\x07 then\n\n\x1b[2J cleared \x1b[31mred\x00 "
           "\u009b2J c1 \rover é 你好 🦙\n")
RAW = ("\x1b]52", "\x1b]0;", "\x1b[2J", "\x1b[31mred", "\x00", "\u009b")  # none of these may reach a terminal
SHOWN = "␛]52;c;aGk=␇"  # what the terminal shows instead


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    return make_endless_checkpoint(tmp_path_factory.mktemp("endless"), max_position_embeddings=4096)


@pytest.fixture()
def said(tmp_path):
    f = tmp_path / "said.txt"
    f.write_bytes(HOSTILE.encode("utf-8"))
    return f


def env_for(home: Path) -> dict:
    return dict(os.environ, COHERE_CLI_HOME=str(home), TERM="xterm-256color", COLUMNS="120")


def spawn(step: str, args: list[str], home: Path, timeout: float = 60) -> pexpect.spawn:
    """`cohere ARGS` in a pseudo-terminal, through tests/hostile_cli.py STEP."""
    return pexpect.spawn(sys.executable, [str(HOSTILE_CLI), step, *args], env=env_for(home), encoding="utf-8",
                         timeout=timeout, dimensions=(50, 120))


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
def test_model_escape_sequences_never_reach_the_terminal_in_the_repl(endless, said, tmp_path, mode):
    p = spawn(f"say:{said}", ["chat", str(endless), "--max-tokens", "40", *(["--plain"] if mode == "plain" else [])],
              tmp_path)
    p.expect(">>>")
    raw = answer_raw(p, "hi")
    for seq in RAW:
        assert seq not in raw, (seq, raw)
    assert SHOWN in raw and "é 你好 🦙" in raw  # shown visibly; ordinary Unicode kept
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
