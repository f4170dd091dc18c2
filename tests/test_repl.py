"""The interactive `cohere chat`, driven end to end in a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from factory_checkpoint import make_checkpoint, make_endless_checkpoint
from factory_tokenizer import load_reference

ANSI = re.compile(r"\x1b\][^\x07]*\x07|\x1b\[[0-9;?]*[ -/]*[@-~]|\r")
HELD_CLI = Path(__file__).with_name("held_cli.py")
STATUS = re.compile(r"(\d+)/(\d+) tokens · (\d+) prefilled")


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    return make_endless_checkpoint(tmp_path_factory.mktemp("endless"), max_position_embeddings=8192)


class Chat:
    def __init__(self, args: list[str], home, timeout=60, held: tuple[str, Path] | None = None):
        """`cohere chat ARGS` in a terminal; `held=(STEP, MARKER)` runs it through tests/held_cli.py, which makes
        that step wait for the test (see there)."""
        # PROMPT_TOOLKIT_NO_CPR: pexpect never answers prompt-toolkit's cursor position request, which waited 2 s
        # for it once per session and then went on without it (a warning line); OMP_NUM_THREADS: on a shared 2-core
        # machine kept busy, two threads wait on each other at every op (a turn took 2-3 s instead of 0.2-1 s)
        env = dict(os.environ, COHERE_CLI_HOME=str(home), TERM="xterm-256color", COLUMNS="120",
                   PROMPT_TOOLKIT_NO_CPR="1", OMP_NUM_THREADS="1")
        pre = [str(HELD_CLI), held[0], str(held[1])] if held else ["-m", "cohere_cli"]
        self.p = pexpect.spawn(sys.executable, [*pre, "chat", *args], env=env, encoding="utf-8",
                               timeout=timeout, dimensions=(50, 120))
        self.prompt()

    def prompt(self) -> str:
        self.p.expect(">>>")
        return ANSI.sub("", self.p.before)

    def say(self, text: str) -> str:
        """Send a line; return what was printed until the next prompt (ANSI codes removed). A message waits for
        the status line first: model text may itself contain the prompt's characters."""
        self.p.sendline(text)
        # prompt-toolkit redraws ">>> text" while the line is typed; it turns bracketed paste off when the line is
        # accepted, so everything after that is the command's own output
        self.p.expect_exact("\x1b[?2004l")
        if text.startswith("/") and text.split()[0] not in ("/regen",):
            return self.prompt()
        self.p.expect(r"tok/s|error:|interrupted")
        head = ANSI.sub("", self.p.before + self.p.after)
        return head + self.prompt()

    def close(self):
        self.p.sendeof()
        self.p.expect(pexpect.EOF)


def status(out: str) -> tuple[int, int, int]:
    m = STATUS.findall(out)
    assert m, out
    return tuple(map(int, m[-1]))


def wait_for(marker: Path, chat: "Chat", timeout: float = 120) -> None:
    """Until the held step is reached (tests/held_cli.py), reading the terminal meanwhile so it never blocks."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert chat.p.isalive(), chat.p.before
        assert time.monotonic() < deadline, "the answer never reached the held step"
        try:
            chat.p.expect(r"[\s\S]+", timeout=0.05)
        except pexpect.TIMEOUT:
            pass


@pytest.mark.slow
def test_answer_streams_and_ctrl_c_stops_it_but_keeps_the_session(endless, tmp_path, tmp_path_factory):
    marker = tmp_path_factory.mktemp("held") / "marker"
    # the answer waits after its 20th piece until the Ctrl-C comes: it cannot end first, however busy the machine
    chat = Chat([str(endless), "--plain", "--max-tokens", "6000"], tmp_path, held=("answer:20", marker))
    chat.p.sendline("tell me everything")
    chat.p.expect_exact("\x1b[?2004l")  # the line is accepted (see Chat.say)
    wait_for(marker, chat)  # and 20 pieces of the answer have streamed
    chat.p.sendintr()  # Ctrl-C mid-answer
    chat.p.expect("interrupted")
    chat.prompt()
    # the session is alive, the partial answer is in the transcript
    save = tmp_path / "conv.json"
    chat.say(f"/save {save}")
    msgs = json.loads(save.read_text())["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert 0 < len(msgs[1]["content"]) < 6000 * 8
    out = chat.say("/set max_tokens 5")
    out = chat.say("/set top_p 2")  # the bounds the CLI's --top-p has (engine.sampling.BOUNDS)
    assert "top_p must be between 0.0 and 1.0" in out
    out = chat.say("and now?")
    assert status(out)[0] > 0
    chat.close()


def test_ctrl_c_on_empty_prompt_asks_once_more(endless, tmp_path):
    chat = Chat([str(endless), "--plain"], tmp_path)
    chat.p.sendintr()
    chat.p.expect("Ctrl-C again")
    chat.p.expect(">>>")
    chat.p.sendintr()
    chat.p.expect(pexpect.EOF)


@pytest.mark.slow
def test_save_load_undo_regen_and_prefix_reuse(endless, tmp_path):
    chat = Chat([str(endless), "--plain", "--max-tokens", "8", "--system", "Be brief."], tmp_path)
    out1 = chat.say("first question")
    used1, ctx, pre1 = status(out1)
    prompt1 = pre1  # turn 1 prefills its whole prompt
    out2 = chat.say("second question")
    used2, _, pre2 = status(out2)
    prompt2 = used2 - 8
    assert prompt2 > prompt1
    # turn 2 reuses the cached conversation: only the tail after turn 1's prompt is prefilled at most
    assert pre2 <= prompt2 - prompt1, (pre2, prompt1, prompt2)

    # /regen: same (greedy) answer again, same number of turns
    save_a, save_b = tmp_path / "a.json", tmp_path / "b.json"
    chat.say(f"/save {save_a}")
    out = chat.say("/regen")
    assert status(out)[2] < prompt2  # regenerating reuses the cache up to the answer
    chat.say(f"/save {save_b}")
    assert json.loads(save_a.read_text()) == json.loads(save_b.read_text())

    # /undo drops the last exchange; /load brings the saved conversation back
    chat.say("/undo")
    undone = tmp_path / "c.json"
    chat.say(f"/save {undone}")
    msgs = json.loads(undone.read_text())["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"] == "first question"
    chat.say("/reset")
    out = chat.say(f"/load {save_a}")
    assert "loaded 2 exchanges (4 messages)" in out
    out = chat.say("/show")
    assert "2 exchanges (4 messages)" in out
    chat.close()


@pytest.mark.slow
def test_overflow_drops_oldest_turns_or_refuses(endless, tmp_path):
    chat = Chat([str(endless), "--plain", "--max-tokens", "8", "--ctx", "96"], tmp_path)
    seen_drop = False
    for i in range(8):
        out = chat.say(f"message number {i} with a few words")
        if "dropped the" in out:
            seen_drop = True
            used, ctx, _ = status(out)
            assert used <= ctx == 96
    assert seen_drop
    chat.close()

    chat = Chat([str(endless), "--plain", "--max-tokens", "8", "--ctx", "96", "--on-overflow", "error"], tmp_path)
    for i in range(8):
        out = chat.say(f"message number {i} with a few words")
        if "error:" in out:
            assert "context of 96" in out
            break
    else:
        pytest.fail("the context never overflowed")
    out = chat.say("/reset")
    out = chat.say("hi")
    assert status(out)[0] > 0  # the session survived the refusal
    chat.close()


def test_markdown_rendering_in_a_terminal(endless, tmp_path):
    chat = Chat([str(endless), "--max-tokens", "12"], tmp_path)
    out = chat.say("hello")
    assert status(out)[0] > 0
    chat.close()


@pytest.mark.slow
def test_edit_reopens_last_message(endless, tmp_path):
    chat = Chat([str(endless), "--plain", "--max-tokens", "4"], tmp_path)
    chat.say("helo wrld")
    chat.p.sendline("/edit")
    chat.p.expect(">>>")
    chat.p.expect("helo wrld")  # the prompt opens with the last message
    chat.p.send("\x15")  # Ctrl-U: clear the line
    chat.say("hello world")
    save = tmp_path / "e.json"
    chat.say(f"/save {save}")
    msgs = json.loads(save.read_text())["messages"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == ["hello world"]
    chat.close()


def test_piped_input_works_without_a_terminal(endless, tmp_path):
    import subprocess

    env = dict(os.environ, COHERE_CLI_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "chat", str(endless), "--max-tokens", "4"],
                       input='hello\n"""two\nlines"""\n/stats\n', capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # answers on stdout
    assert len(STATUS.findall(r.stderr)) == 2 and "answer" in r.stderr  # two answers, then the /stats table


def test_grounded_prompt_matches_transformers_rag_template(tmp_path):
    """--doc renders the Command R `rag` template exactly as transformers does."""
    ckpt = make_checkpoint(tmp_path / "m", max_position_embeddings=4096)
    doc = tmp_path / "penguins.txt"
    doc.write_text("Emperor penguins are the tallest penguins.\n")
    import subprocess

    r = subprocess.run([sys.executable, "-m", "cohere_cli", "chat", str(ckpt), "--doc", str(doc), "--prompt",
                        "Which penguin is tallest?", "--citations", "fast", "--max-tokens", "2", "--json"],
                       capture_output=True, text=True, env=dict(os.environ, COHERE_CLI_HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    ref = load_reference(ckpt)
    expected = ref.apply_chat_template(
        [{"role": "user", "content": "Which penguin is tallest?"}], chat_template="rag",
        documents=[{"title": "penguins.txt", "text": "Emperor penguins are the tallest penguins."}],
        citation_mode="fast", tokenize=True, add_generation_prompt=True, return_dict=False)
    assert json.loads(r.stdout)["prompt_ids"] == list(expected)


def test_ctrl_c_before_the_answer_streams_keeps_the_session(monkeypatch, capsys):
    """A Ctrl-C while the prompt is fitted or the request opens (before any text): the new message is dropped, the
    session goes on; during /regen the question and its previous answer stay, as before the /regen."""
    from io import StringIO

    from cohere_cli.chat.conversation import Conversation
    from cohere_cli.engine.response import Response
    from cohere_cli.ui.repl import Repl

    class Engine:
        name, context, history, interrupt = "fake", 100, [], {1, 3}

        def __init__(self):
            self.calls = 0

        def fit(self, conv):
            self.calls += 1
            if self.calls in self.interrupt:
                raise KeyboardInterrupt
            return [1, 2], 0

        def stream(self, conv, ids):
            yield Response(text="fine", token=None, prompt_tokens=2, generation_tokens=1, prefill_tokens_per_s=0.0,
                           decode_tokens_per_s=0.0, ttft_s=0.001, peak_memory_bytes=0, finish_reason="stop")

    conv = Conversation()
    monkeypatch.setattr("sys.stdin", StringIO("first\nsecond\n/regen\n"))
    Repl(Engine(), conv, plain=True, history_file=None).run()
    assert [(t["role"], t["content"]) for t in conv.turns] == [("user", "second"), ("assistant", "fine")]
    err = capsys.readouterr().err
    assert err.count("[interrupted]") == 2 and "Traceback" not in err
