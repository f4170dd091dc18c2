"""The architecture, enforced: the import-linter contracts in pyproject.toml (layers from cli down to errors, no
circles, nothing below ui/ printing, store/ and remote/ free of torch, transformers test-only), and the size of a
module that is doing one thing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 420  # "no module over ~400 lines": past this a module is probably two things


def test_import_contracts_hold():
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                        "sys.exit(lint_imports_command())", "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_a_broken_contract_is_caught(tmp_path):
    """The check can fail: a store module that imports torch breaks a contract."""
    pkg = tmp_path / "cohere_cli"
    subprocess.run(["cp", "-r", str(ROOT / "cohere_cli"), str(pkg)], check=True)
    (pkg / "store" / "leak.py").write_text("import torch\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); from importlinter.cli import "
                        "lint_imports_command; sys.exit(lint_imports_command())", "--no-cache"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "cohere_cli.store.leak -> torch" in r.stdout, r.stdout[-3000:]


def test_no_module_is_two_things():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "cohere_cli").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
