"""The CLI shell: fast --help without torch, fresh completion scripts, the one-line error boundary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cohere_cli.completion import render_all

ROOT = Path(__file__).resolve().parent.parent


def cohere(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True, **kw)


def test_help_does_not_import_torch():
    probe = (
        "import sys\n"
        "from cohere_cli.cli import main\n"
        "for argv in (['cohere', '--help'], ['cohere', 'generate', '--help'], ['cohere', 'chat', '--help']):\n"
        "    sys.argv = argv\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.stderr.strip().splitlines()[-1] == "NO-TORCH", r.stderr
    assert "generate" in r.stdout and "chat" in r.stdout


def test_endpoint_paths_do_not_import_torch():
    """chat, generate and bench against a server never load a model: no torch (~1 s of start-up). Port 9 refuses
    the connection, so each command ends at its one-line error."""
    probe = (
        "import sys\n"
        "from cohere_cli.cli import main\n"
        "url = 'http://127.0.0.1:9/v1'\n"
        "for argv in (['cohere', 'generate', '--endpoint', url, 'hi'],\n"
        "             ['cohere', 'chat', '--endpoint', url, '--prompt', 'hi'],\n"
        "             ['cohere', 'bench', '--endpoint', url, '--seq', '16', '--gen', '4', '--concurrency', '1']):\n"
        "    sys.argv = argv\n"
        "    try:\n        main()\n    except SystemExit as e:\n        print('exit', e.code, file=sys.stderr)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == "NO-TORCH", r.stderr
    assert lines.count("exit 1") == 3 and r.stderr.count("connection refused") == 3, r.stderr


def test_completion_scripts_are_fresh():
    for name, text in render_all().items():
        on_disk = (ROOT / "completions" / name).read_text()
        assert on_disk == text, f"completions/{name} is stale: run `python -m cohere_cli.completion`"


def test_bash_completion_completes_commands_and_choices():
    script = (
        f"source {ROOT / 'completions' / 'cohere.bash'}\n"
        "COMP_WORDS=(cohere gen); COMP_CWORD=1; _cohere_complete; echo \"${COMPREPLY[*]}\"\n"
        "COMP_WORDS=(cohere generate --dtype b); COMP_CWORD=3; _cohere_complete; echo \"${COMPREPLY[*]}\"\n"
    )
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines() == ["generate", "bfloat16"]


def test_version_and_module_entry_point():
    r = cohere("--version")
    assert r.returncode == 0 and r.stdout.startswith("cohere-cli ")


def test_missing_model_is_one_line_error(tmp_path):
    r = cohere("generate", str(tmp_path / "nope"), "hi")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
