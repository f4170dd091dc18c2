"""`cohere` with one step made to wait for the test, so that an interrupt always lands mid-way, however busy the
machine (no sleep-and-hope):

    python tests/held_cli.py STEP MARKER cohere-args...

STEP is where the command stops and waits:
  answer:N  after the N-th piece of a local answer (cohere_cli.engine.generate.stream_generate): the answer is streaming;
  shard     after the first bytes of the first output shard of `cohere quantize`: the shards are being written.

Once there it creates the file MARKER and sleeps until a signal ends it (Ctrl-C raises KeyboardInterrupt in the
sleep, as it would in the model's forward or the shard's write; nothing else ends it before HOLD_LIMIT seconds).
Everything else is the real command, in the real process."""

from __future__ import annotations

import sys
import time
from pathlib import Path

HOLD_LIMIT = 600  # seconds: a test that never sends its signal has failed long before this


def hold(marker: Path) -> None:
    marker.write_text("held\n")
    deadline = time.monotonic() + HOLD_LIMIT
    while time.monotonic() < deadline:
        time.sleep(1)
    raise SystemExit(f"held_cli: nothing interrupted the command within {HOLD_LIMIT} s")


def hold_answer(marker: Path, after: int) -> None:
    from cohere_cli.engine import generate

    real = generate.stream_generate

    def held(*args, **kwargs):
        for i, r in enumerate(real(*args, **kwargs), 1):
            yield r
            if i == after:
                hold(marker)

    generate.stream_generate = held  # callers import it inside their functions: they all get this one


def hold_shard(marker: Path) -> None:
    from cohere_cli.weights import quantize

    real = quantize.ShardWriter.write

    def held(self, buf):
        real(self, buf)
        self.f.flush()
        hold(marker)

    quantize.ShardWriter.write = held


def main() -> None:
    step, marker, *args = sys.argv[1:]
    marker = Path(marker)
    if step.startswith("answer:"):
        hold_answer(marker, int(step.split(":", 1)[1]))
    elif step == "shard":
        hold_shard(marker)
    else:
        raise SystemExit(f"held_cli: unknown step {step!r}")
    from cohere_cli.cli import main as cohere

    sys.argv = ["cohere", *args]
    cohere()


if __name__ == "__main__":
    main()
