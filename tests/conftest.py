import os
import signal
import sys
from pathlib import Path

# Factories (factory_checkpoint, factory_tokenizer) are imported by name from this folder.
sys.path.insert(0, str(Path(__file__).parent))

# The Ctrl-C tests need commands that Ctrl-C can stop. A suite started in the background of a non-interactive shell
# (`.ci/run &`, nohup) inherits SIGINT *ignored*, and every command it starts would inherit that too (Python then
# never raises KeyboardInterrupt). A handler is not inherited across exec: the commands start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests must never touch the user's store or reach the real Hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A throwaway store for the whole run (subprocesses inherit it); tests that need their own set it themselves.
if "COHERE_CLI_HOME" not in os.environ or not os.environ.get("COHERE_CLI_TEST_KEEP_HOME"):
    import tempfile

    os.environ["COHERE_CLI_HOME"] = tempfile.mkdtemp(prefix="cohere-cli-test-home-")


# The native kernels (cohere_cli/weights/kernels) are compiled into each store's kernels/ folder on first use, and
# almost every test has a store of its own: one compiler for the run that keeps what it built (keyed by its
# arguments and the sources' bytes, headers included) compiles each kernel once and copies it for the others. The
# CLI still runs its own build step (a compiler process, the .so written and loaded) in every store.
def _caching_cc(folder: Path) -> str | None:
    import shutil as _sh

    real = os.environ.get("CC") or _sh.which("cc") or _sh.which("gcc")
    if real is None:
        return None
    cc = folder / "cc"
    cc.write_text(f"""#!/bin/sh
out=""; prev=""; key=""
for a in "$@"; do
    if [ "$prev" = "-o" ]; then out="$a"; else key="$key $a"; fi
    if [ -f "$a" ] && [ "$prev" != "-o" ]; then key="$key $(cat "$a" "$(dirname "$a")"/*.h 2>/dev/null | cksum)"; fi
    prev="$a"
done
hit="{folder}/$(printf %s "$key" | sha256sum | cut -c1-32).so"
if [ -n "$out" ] && [ -f "$hit" ]; then cp "$hit" "$out"; exit 0; fi
{real} "$@" || exit $?
if [ -n "$out" ]; then cp "$out" "$hit.$$" && mv -f "$hit.$$" "$hit"; fi
""")
    cc.chmod(0o755)
    return str(cc)


if "COHERE_CLI_TEST_CC" not in os.environ:
    import tempfile

    _cc = _caching_cc(Path(tempfile.mkdtemp(prefix="cohere-cli-test-cc-")))
    if _cc:
        os.environ["CC"] = os.environ["COHERE_CLI_TEST_CC"] = _cc


# ---- the built-in demo, quantized once per run ---------------------------------------------------------------------
import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def quantized_demo(tmp_path_factory):
    """copy(home, *names) puts store entries of the demo quantized by `cohere quantize demo` (demo-nf4: --bits 4,
    with its quality report; demo-int8: --bits 8 --no-eval) into the store at `home` and returns `home`; `report`
    is what the nf4 quantize printed. Each entry is quantized once per run (in-process, on the real app) into a
    template store and copied from there: a test may change or remove its copy. For tests that are not about
    quantize itself."""
    from typer.testing import CliRunner

    from cohere_cli.cli import app

    template = tmp_path_factory.mktemp("quantized-demo")
    args = {"demo-nf4": ["--bits", "4"], "demo-int8": ["--bits", "8", "--no-eval"]}
    printed = {}

    def build(name):
        if not (template / "models" / name).is_dir():
            r = CliRunner().invoke(app, ["quantize", "demo", *args[name]], env={"COHERE_CLI_HOME": str(template)})
            assert r.exit_code == 0, (r.output, r.exception)
            printed[name] = r.stdout

    class Quantized:
        @staticmethod
        def copy(home, *names):
            for name in names or args:
                build(name)
                shutil.copytree(template / "models" / name, home / "models" / name)
            return home

        @property
        def report(self):
            build("demo-nf4")
            return printed["demo-nf4"]

    return Quantized()


@pytest.fixture
def uncoded(monkeypatch):
    """bf16 weights loaded in this test stay packed 16-bit (weights/coded.py switched off): tests of the packed
    path itself, and the reference the coded path is held to."""
    from cohere_cli.weights import coded

    monkeypatch.setattr(coded, "coded_row", lambda: None)
