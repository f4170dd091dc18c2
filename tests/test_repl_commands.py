"""The REPL's own commands, as a user runs them (issue 18): /show's context is the conversation's as it is now (after
/undo, /edit, /reset, /load, an interrupted answer), one vocabulary (an exchange is a message and its answer), /set
alone lists the settings, a seed left to chance reads `random`, and /copy says where the text went (tmux included).
Three processes: a terminal session (pexpect), and two piped ones (no terminal needed)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from factory_checkpoint import make_endless_checkpoint
from test_repl import STATUS, Chat, status, wait_for

CONTEXT = re.compile(r"context\s+(\d+|\?)/(\d+) tokens used")
TIMEOUT = 180  # seconds for one CLI run on a busy machine


@pytest.fixture(scope="module")
def endless(tmp_path_factory):
    return make_endless_checkpoint(tmp_path_factory.mktemp("endless"), max_position_embeddings=8192)


def context(out: str) -> int:
    m = CONTEXT.findall(out)
    assert len(m) == 1, out
    return int(m[0][0])


def stats_rows(out: str) -> list[list[str]]:
    """The /stats table's rows: its cells, split on the box's vertical lines."""
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]
        if cells and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_show_set_undo_edit_reset_load_and_an_interrupted_answer(endless, tmp_path, tmp_path_factory):
    marker = tmp_path_factory.mktemp("held") / "marker"
    # answers of 3 tokens stream 4 pieces; the one of 50 waits after its 5th piece for the Ctrl-C (tests/held_cli.py)
    chat = Chat([str(endless), "--plain", "--max-tokens", "3"], tmp_path, timeout=TIMEOUT, held=("answer:5", marker))

    out = chat.say("/set")  # every settable value, as ollama's /show parameters
    for name, value in (("temperature", "0.0"), ("top_k", "0"), ("top_p", "1.0"), ("min_p", "0.0"),
                        ("repetition_penalty", "1.0"), ("max_tokens", "3"), ("seed", "random")):
        assert re.search(rf"{name}\s+{re.escape(value)}\b", out), (name, out)
    out = chat.say("/show")
    assert context(out) == 0 and "seed random" in out and "None" not in out
    assert "0 exchanges (0 messages)" in out

    used1 = status(chat.say("first question"))[0]
    out = chat.say("/show")
    assert context(out) == used1 and "1 exchange (2 messages)" in out  # what the status line said
    used2 = status(chat.say("second question"))[0]
    assert used2 > used1 and context(chat.say("/show")) == used2

    chat.p.sendline("/edit")  # the last message comes back to the prompt, its exchange leaves the conversation
    chat.p.expect_exact("second question")
    chat.p.send("\x15")  # Ctrl-U: clear the line
    assert context(chat.say("/show")) == used1
    assert status(chat.say("second question, edited"))[0] > used1
    assert "1 exchange left" in chat.say("/undo")
    assert context(chat.say("/show")) == used1  # the issue: it said the undone exchange's count

    save = tmp_path / "one.json"
    assert f"saved 1 exchange (2 messages) to {save}" in chat.say(f"/save {save}")
    chat.say("/reset")
    out = chat.say("/show")
    assert context(out) == 0 and "0 exchanges" in out
    assert "loaded 1 exchange (2 messages)" in chat.say(f"/load {save}")
    assert context(chat.say("/show")) == used1  # the same conversation costs the same, reloaded

    assert "seed = 7" in chat.say("/set seed 7")
    assert "seed 7" in chat.say("/show")
    assert "seed = random" in chat.say("/set seed random")
    chat.say("/set max_tokens 50")
    chat.p.sendline("and now a long answer")
    chat.p.expect_exact("\x1b[?2004l")  # the line is accepted (see test_repl.Chat.say)
    wait_for(marker, chat)  # 5 pieces streamed, and the answer waits
    chat.p.sendintr()
    chat.p.expect("interrupted")
    chat.prompt()
    out = chat.say("/stats")
    rows = stats_rows(out)
    assert len(rows) == 4 and "answer" in out, out  # the undone and edited answers were answers too
    assert [r[-1] for r in rows] == ["", "", "", "interrupted"], rows
    prompt, generated, used = int(rows[-1][1]), int(rows[-1][3]), int(rows[-1][4])
    assert generated == 5 and used == prompt + generated and prompt > used1
    out = chat.say("/show")
    assert context(out) == used and "2 exchanges (4 messages)" in out  # the partial answer counts
    chat.close()


def fake_tmux(folder, mode: str):
    """A `tmux` that keeps what load-buffer reads in folder/buffer and answers set-clipboard with `mode`."""
    folder.mkdir()
    tmux = folder / "tmux"
    tmux.write_text(f"""#!{sys.executable}
import sys
args = sys.argv[1:]
if args[:1] == ["load-buffer"]:
    open({str(folder / "buffer")!r}, "wb").write(sys.stdin.buffer.read())
    open({str(folder / "calls")!r}, "a").write(" ".join(args) + "\\n")
elif args == ["show-options", "-gv", "set-clipboard"]:
    print({mode!r})
else:
    sys.exit("fake tmux: unexpected " + " ".join(args))
""")
    tmux.chmod(tmux.stat().st_mode | stat.S_IXUSR)
    return folder


def piped_chat(args: list[str], lines: list[str], home, **env) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "cohere_cli", "chat", *args], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, COHERE_CLI_HOME=str(home), **env))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return r


def test_copy_inside_tmux_and_save_load_round_trip(endless, tmp_path):
    """Inside tmux with its default-off set-clipboard for applications, /copy goes through `tmux load-buffer -w`
    and says what it takes to reach the system clipboard; /save, /load, /save writes the same file."""
    bin_dir = fake_tmux(tmp_path / "bin", "off")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    r = piped_chat([str(endless), "--max-tokens", "4", "--system", "Be brief."],
                   ["hello", "again", "/copy", f"/save {a}", f"/load {a}", f"/save {b}"], tmp_path,
                   PATH=str(bin_dir), TMUX="/tmp/tmux-0/default,1,0")
    assert (bin_dir / "calls").read_text() == "load-buffer -w -\n"
    answer = json.loads(a.read_text())["messages"][-1]
    assert answer["role"] == "assistant" and (bin_dir / "buffer").read_text() == answer["content"]
    assert "tmux's paste buffer" in r.stderr and "set-clipboard is off" in r.stderr
    assert "set -g set-clipboard on" in r.stderr
    assert a.read_bytes() == b.read_bytes()
    assert r.stderr.count("2 exchanges (4 messages), a preamble") == 3  # saved, loaded, saved


def test_endpoint_counts_like_local_and_copy_without_any_clipboard(endless, tmp_path):
    """The remote backend tells the context the same way (here with the local tokenizer of MODEL: counts of the
    rendered prompt), and /copy with no clipboard command, no tmux and no terminal says it copied nothing."""
    from openai_server import StubServer

    empty = tmp_path / "nothing"
    empty.mkdir()
    with StubServer("stream") as stub:
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        r = subprocess.run(
            [sys.executable, "-m", "cohere_cli", "chat", str(endless), "--endpoint", stub.url, "--max-tokens", "4"],
            input="\n".join(["first", "second", "/show", "/undo", "/show", "/copy", "/reset", "/show", "/stats"])
            + "\n", capture_output=True, text=True, timeout=TIMEOUT,
            env=dict(env, COHERE_CLI_HOME=str(tmp_path), PATH=str(empty)))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    used = [int(m[0]) for m in STATUS.findall(r.stderr)]
    shown = [int(m[0]) for m in CONTEXT.findall(r.stderr)]
    assert len(used) == 2 and used[1] > used[0]
    assert shown == [used[1], used[0], 0], r.stderr
    assert "not copied: no clipboard command" in r.stderr and "copied to" not in r.stderr
    assert len(stats_rows(r.stderr)) == 2
