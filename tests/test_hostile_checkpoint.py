"""A hostile checkpoint folder or store entry (issue 16, found by an adversarial pass after the first fixes): FIFOs
where files belong, weights symlinked from outside, manifest and config.json fields of the wrong type. Each is one
`error:` line (or the field ignored), never a hang and never a traceback. A hang shows as the subprocess timeout:
the test asserts that the command ended, never how fast."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from factory_checkpoint import make_checkpoint
from limits import run_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "ck", model_type="cohere2", sliding_window=8, layers=2,
                           hidden=32, heads=2, kv_heads=1, intermediate=64, templates="cmd3")


def copy(ckpt, dst):
    shutil.copytree(ckpt, dst)
    return dst


def one_error_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize("fifo", ["config.json", "model.safetensors"])
def test_a_fifo_in_a_checkpoint_is_refused_not_waited_on(ckpt, tmp_path, fifo):
    d = copy(ckpt, tmp_path / "ck")
    (d / fifo).unlink()
    os.mkfifo(d / fifo)  # nobody ever writes: a blocking open would wait forever
    for args in (["chat", str(d), "--prompt", "hi", "--plain"], ["models", "info", str(d)]):
        if fifo != "config.json" and args[0] == "models":
            continue
        line = one_error_line(run_cli(args, home=tmp_path / "home", timeout=120))
        assert "not a regular file" in line or "no *.safetensors" in line


def test_generation_config_fifo_is_skipped(ckpt, tmp_path):
    d = copy(ckpt, tmp_path / "ck")
    (d / "generation_config.json").unlink(missing_ok=True)
    os.mkfifo(d / "generation_config.json")
    r = run_cli(["chat", str(d), "--prompt", "hi", "--plain", "-n", "2"], home=tmp_path / "home", timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_weights_symlinked_from_outside_the_checkpoint_are_refused(ckpt, tmp_path):
    d = copy(ckpt, tmp_path / "ck")
    outside = tmp_path / "elsewhere.safetensors"
    (d / "model.safetensors").rename(outside)
    os.symlink(outside, d / "model.safetensors")
    line = one_error_line(run_cli(["chat", str(d), "--prompt", "hi"], home=tmp_path / "home", timeout=120))
    assert "outside" in line


@pytest.mark.parametrize("manifest", [
    {"name": "m", "parameters": "lots", "source": "x", "quantization": "x", "quality": "x"},
    {"name": ["m"], "quality": {"a": 1}, "files": "x", "precision": 7},
    {"name": "m", "source": {"repo_id": ["x"]}, "files": {"a": "b"}, "parameters": True},
    {"name": "m", "source": None, "quantization": None, "quality": None, "files": None, "parameters": None},
])
def test_manifest_fields_of_the_wrong_type_are_ignored(ckpt, tmp_path, manifest):
    home = tmp_path / "home"
    d = copy(ckpt, home / "models" / "m")
    (d / "manifest.json").write_text(json.dumps(manifest))
    for args in (["models"], ["models", "info", "m"], ["models", "info", "m", "--json"], ["models", "verify", "m"]):
        r = run_cli(args, home=home, timeout=120)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        assert r.returncode in (0, 1), (args, r.stderr)


@pytest.mark.parametrize("patch", [
    {"rope_parameters": "x", "quantization_config": "x", "architectures": {"a": 1}, "logit_scale": "x",
     "torch_dtype": ["a"]},
    {"rope_parameters": [1], "architectures": [1, 2]},
])
def test_config_fields_of_the_wrong_type_in_models_info(ckpt, tmp_path, patch):
    d = copy(ckpt, tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **patch}))
    for args in (["models", "info", str(d)], ["models", "info", str(d), "--json"]):
        r = run_cli(args, home=tmp_path / "home", timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
