"""`cohere` with a hostile model, or with the chat template held, for the REPL's security tests
(tests/test_hostile_repl.py):

    python tests/hostile_cli.py say:FILE cohere-args...         every local answer says FILE's text (UTF-8)
    python tests/hostile_cli.py render:N,M:MARKER cohere-args... the N-th and M-th template renders wait for a signal

`say`: the real model runs (its stats, the KV cache, the streaming are real) but the text of its pieces is replaced,
piece by piece, by FILE's text cut into small pieces (so an escape sequence arrives split across pieces, as a model
would send it); the last piece carries whatever is left. Everything from stream_generate on is the real path: the
REPL, Markdown or plain rendering, `generate`'s print loop.

`render`: the N-th call of the chat template (cohere_cli.chat.session.render_text) creates the file MARKER.N and sleeps
until a signal ends it (tests/held_cli.hold): a Ctrl-C always lands while the template renders, however busy the
machine."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from held_cli import hold

PIECE = 5  # characters per piece: OSC 52 and friends are longer, so they always arrive split


def say(text: str) -> None:
    from cohere_cli.engine import generate

    real = generate.stream_generate

    def hostile(*args, **kwargs):
        pieces = [text[i : i + PIECE] for i in range(0, len(text), PIECE)]
        for i, r in enumerate(real(*args, **kwargs)):
            piece = pieces[i] if i < len(pieces) else ""
            if r.finish_reason is not None:
                piece = "".join(pieces[i:])
            yield dataclasses.replace(r, text=piece)

    generate.stream_generate = hostile  # callers import it inside their functions: they all get this one


def hold_render(held_calls: set[int], marker: Path) -> None:
    from cohere_cli.chat import session

    real, calls = session.render_text, [0]

    def held(*args, **kwargs):
        calls[0] += 1
        if calls[0] in held_calls:
            hold(marker.with_name(f"{marker.name}.{calls[0]}"))
        return real(*args, **kwargs)

    session.render_text = held


def main() -> None:
    step, *args = sys.argv[1:]
    kind, _, rest = step.partition(":")
    if kind == "say":
        say(Path(rest).read_bytes().decode("utf-8"))
    elif kind == "render":
        calls, _, marker = rest.partition(":")
        hold_render({int(n) for n in calls.split(",")}, Path(marker))
    else:
        raise SystemExit(f"hostile_cli: unknown step {step!r}")
    from cohere_cli.cli import main as cohere

    sys.argv = ["cohere", *args]
    cohere()


if __name__ == "__main__":
    main()
