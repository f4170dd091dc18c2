"""Native CPU kernels that torch and bitsandbytes do not have, compiled on first use.

`int8_row()` is LLM.int8() for one activation row (a decode step) on AVX512-VNNI, int8_row.c: the same arithmetic
as bitsandbytes' CPU path bit for bit, but one C call instead of ~9 torch ops (~30 us of overhead per call on the
benchmark model's shapes, 3 calls per layer plus the head). Built once per machine with the system C compiler into
the store's `kernels/` folder (~1 s: one small C file, no torch headers) and loaded with ctypes; its OpenMP is
torch's (libgomp.so.1 is already loaded when it is), so torch.set_num_threads applies. Where it cannot be built
or run (no compiler, no AVX512-VNNI, COHERE_CLI_NATIVE=0) the callers keep their torch path: same results, slower.
"""

from __future__ import annotations

import ctypes as ct
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("int8_row.c")
FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]  # no FMA contraction: bitsandbytes' roundings
ENV = "COHERE_CLI_NATIVE"  # 0: never build or load native kernels


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@functools.cache
def int8_row():
    """The C function llm_int8_row_bf16 (see int8_row.c), or None where it is not available here."""
    if os.environ.get(ENV, "1") == "0" or not {"avx512_vnni", "avx512bw"} <= cpu_flags():
        return None
    lib = _load(SOURCE)
    if lib is None:
        return None
    fn = lib.llm_int8_row_bf16
    fn.restype = ct.c_int
    fn.argtypes = [ct.c_void_p, ct.c_int64, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p,
                   ct.c_int64, ct.c_float]
    return fn


def _load(src: Path):
    """ctypes.CDLL of `src` compiled, building it first if this machine has no copy yet; None on any failure."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    text = src.read_bytes()
    key = hashlib.sha256(text + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    try:
        from cohere_cli.store import store_root

        folder = store_root() / "kernels"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    so = folder / f"{src.stem}-{key}.so"
    if not so.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{src.stem}-", suffix=".so")
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(src), "-o", tmp], capture_output=True, timeout=120)
            if done.returncode != 0:
                return None
            os.replace(tmp, so)  # whole or not at all: another process may be loading the same name
        except (OSError, subprocess.SubprocessError):
            return None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        return ct.CDLL(str(so))
    except OSError:
        return None
