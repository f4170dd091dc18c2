"""Property tests of the two guards every untrusted input passes (cohere_cli/untrusted.py): path confinement and
the terminal sanitiser, on inputs hypothesis makes up (and shrinks to a minimal case when one fails)."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cohere_cli.errors import UnsafeInput
from cohere_cli.untrusted import confine, inert, parse_json, read_bounded

# Names built from the pieces attacks are made of, and arbitrary text.
PIECES = st.sampled_from(["..", ".", "", "a", "b.safetensors", "/", "\\", "\0", "C:", "~", "link", "link/..",
                          "x" * 300, "é", "\x1b"])
NAMES = st.one_of(st.lists(PIECES, min_size=1, max_size=6).map("/".join), st.text(max_size=40),
                  st.lists(PIECES, min_size=1, max_size=6).map("".join))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/ with a folder, a file, a symlink to a folder outside root and one to a folder inside it."""
    base = tmp_path_factory.mktemp("confine")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "f").write_text("in")
    (outside / "victim").write_text("out")
    os.symlink(outside, root / "link")
    os.symlink(root / "sub", root / "inner")
    return root, outside


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_confine_returns_a_path_inside_root_or_refuses(tree, name):
    root, outside = tree
    try:
        p = confine(root, name)
    except UnsafeInput as e:
        assert "\n" not in str(e) and "\x1b" not in str(e)  # one inert line
        return
    real_root = os.path.realpath(root)
    real = os.path.realpath(p)
    assert real.startswith(real_root + os.sep), (name, real)
    assert not real.startswith(os.path.realpath(outside))
    assert p == root / name and ".." not in Path(name).parts and not Path(name).is_absolute()


@pytest.mark.parametrize("name", ["../outside/victim", "../../../etc/passwd", "/tmp/x", "link/victim", "a/../../x",
                                  "sub/../../outside/victim", "a\0b", "", ".", "sub/", "C:\\x", "a\\..\\b",
                                  "x\ud800.safetensors", "x\ndownloaded Org/evil OK.safetensors", "a\x1b]0;t\x07b",
                                  "x" * 1100])
def test_confine_refuses_each_reported_shape(tree, name):
    with pytest.raises(UnsafeInput):
        confine(tree[0], name)


@pytest.mark.parametrize("name", ["model.safetensors", "sub/f", "inner/f", "a/b/c.json", "tokenizer.json",
                                  "名前.txt", "..hidden", "a..b"])
def test_confine_keeps_ordinary_names(tree, name):
    assert confine(tree[0], name) == tree[0] / name


CONTROL = ({chr(c) for c in range(0x20) if c not in (9, 10)} | {"\x7f"} | {chr(c) for c in range(0x80, 0xA0)}
           | {chr(c) for c in range(0xD800, 0xE000)})  # lone surrogates: not characters, unprintable


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None), max_size=200))
def test_inert_leaves_nothing_a_terminal_acts_on(text):
    out = inert(text)
    assert not (set(out) & CONTROL)
    assert inert(out) == out  # idempotent: showing twice changes nothing
    assert len(out) <= len(text)
    # every character that is not a control survives, in order; each control became one visible mark (or a CR
    # vanished)
    marks = {chr(c) for c in range(0x2400, 0x2422)} | {"\ufffd"}
    assume(not (set(text) & marks))
    assert [c for c in text if c not in CONTROL] == [c for c in out if c not in marks]
    assert sum(c in marks for c in out) == sum(c in CONTROL and c != "\r" for c in text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=200))
def test_inert_does_not_touch_ordinary_unicode(text):
    assert inert(text) == text


@pytest.mark.parametrize("attack, shown", [
    ("\x1b]52;c;aGk=\x07", "␛]52;c;aGk=␇"),  # OSC 52: write the clipboard
    ("\x1b]0;pwned\x07", "␛]0;pwned␇"),  # OSC 0: window title
    ("\x1b[2J\x1b[H", "␛[2J␛[H"),  # CSI: clear the screen
    ("\x9b2J", "\ufffd2J"),  # the 8-bit CSI
    ("ok\rFAKE", "okFAKE"),  # a lone CR would overwrite what was shown
    ("a\r\nb\tc", "a\nb\tc"),
])
def test_inert_on_the_reported_sequences(attack, shown):
    assert inert(attack) == shown
    assert unicodedata.normalize("NFC", inert("Grüße, 世界 🌍 مرحبا")) == "Grüße, 世界 🌍 مرحبا"
    assert inert("Evil\ud800") == "Evil\ufffd"  # a lone surrogate (JSON "\ud800") cannot even be printed


def test_read_bounded_refuses_fifos_devices_and_big_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes: a blocking open or read would hang
    with pytest.raises(UnsafeInput, match="not a regular file"):
        read_bounded(fifo, 100)
    with pytest.raises(UnsafeInput, match="not a regular file"):
        read_bounded(Path("/dev/zero"), 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(UnsafeInput, match="over the 100 bytes"):
        read_bounded(tmp_path / "big", 100)
    assert read_bounded(tmp_path / "big", 101) == b"x" * 101


@pytest.mark.parametrize("data, says", [(b"[" * 100_000, "nests too deep"), (b"\xff", "not UTF-8"),
                                        ("{", "not valid JSON")])
def test_parse_json_failures_are_value_errors(data, says):
    with pytest.raises(ValueError, match=says):
        parse_json(data)
