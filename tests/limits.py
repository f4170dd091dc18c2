"""Run `cohere` in a child process under an address-space limit, for the memory cases of the threat model: a
hostile input that would allocate gigabytes makes the child fail fast (MemoryError, one line or a crash the test
sees) instead of eating the machine the suite runs on."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

# Enough for Python + torch + the demo model (VmPeak ~0.7 GiB on import, ~1.5 GiB chatting), far below any of the
# bombs (a billion-entry list is 8 GiB, 'x' * 10**10 is 10 GiB).
DEFAULT_LIMIT = 3 << 30


def limited(address_space: int | None = DEFAULT_LIMIT):
    """A preexec_fn for subprocess/pexpect: caps the child's address space."""
    def apply() -> None:
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return apply


def run_cli(args: list[str], *, address_space: int | None = DEFAULT_LIMIT, home: Path | None = None,
            input: str | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m cohere_cli ARGS` under the limit; `timeout` only stops a hang from stalling the suite (a test
    asserts what came out, never how fast)."""
    e = {**os.environ, **(env or {})}
    if home is not None:
        e["COHERE_CLI_HOME"] = str(home)
    e.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True, env=e,
                          input=input, timeout=timeout, preexec_fn=limited(address_space),
                          stdin=None if input is not None else subprocess.DEVNULL)
