"""`cohere quantize` end to end: store entries and folders, manifest, errors that leave nothing behind (Ctrl-C
included), and the memory bound of the streaming quantizer on a multi-shard checkpoint far larger than it."""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cohere_cli.weights import quantize
from factory_checkpoint import make_checkpoint


def cohere(*args: str, home: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "COHERE_CLI_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True, env=env, **kw)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("error:"), r.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def leftovers(*roots: Path) -> list[str]:
    """Files and folders under the roots, ignoring empty store skeleton folders."""
    out = []
    for root in roots:
        if root.exists():
            out += [str(p) for p in root.rglob("*") if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    return out


def write_synthetic(folder: Path, *, hidden: int, intermediate: int, layers: int, vocab: int = 2048,
                    heads: int = 8, shard_bytes: int = 160 << 20) -> Path:
    """A Cohere checkpoint written straight with safetensors (no transformers), several shards, bf16. The values are
    a tiled random vector: realistic for quantization, quick to make."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["CohereForCausalLM"], "model_type": "cohere", "hidden_size": hidden,
           "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 512, "layer_norm_eps": 1e-5,
           "logit_scale": 0.0625, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "bos_token_id": 5,
           "eos_token_id": 6, "pad_token_id": 0}
    (folder / "config.json").write_text(json.dumps(cfg))
    base = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02

    def mat(n, k):
        return base.repeat(-(-n * k // base.numel()))[: n * k].view(n, k).bfloat16()

    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (hidden,))]
        shapes += [(p + f"self_attn.{x}_proj.weight", (hidden, hidden)) for x in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (intermediate, hidden)), (p + "mlp.up_proj.weight", (intermediate, hidden)),
                   (p + "mlp.down_proj.weight", (hidden, intermediate))]
    shapes += [("model.norm.weight", (hidden,))]
    shards, cur, size = [], {}, 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.tensor(shape).prod())
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = torch.ones(shape, dtype=torch.bfloat16) if len(shape) == 1 else mat(*shape)
        size += nbytes
    shards.append(cur)
    weight_map = {}
    for i, sd in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sd, folder / fn, metadata={"format": "pt"})
        weight_map.update({k: fn for k in sd})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), dtype="bfloat16", hidden=128, heads=4, kv_heads=2,
                           intermediate=256, layers=2)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """1.1 GB in 8 shards; its largest tensor is 33.5 MB (8192 x 2048 bf16)."""
    return write_synthetic(tmp_path_factory.mktemp("big") / "big", hidden=2048, intermediate=8192, layers=8)


# ---- the command ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_quantize_to_store_entry_with_quality_report(parent, tmp_path):
    home = tmp_path / "home"
    r = cohere("quantize", str(parent), home=home)
    assert r.returncode == 0, r.stderr
    entry = home / "models" / f"{parent.name}-nf4"
    m = json.loads((entry / "manifest.json").read_text())
    assert m["name"] == f"{parent.name}-nf4" and m["parent"] == str(parent) and m["precision"] == "nf4"
    q = m["quantization"]
    assert (q["method"], q["bits"], q["quant_type"], q["blocksize"], q["double_quant"], q["compute_dtype"]) == \
        ("bitsandbytes", 4, "nf4", 64, True, "bfloat16")
    assert q["unquantized"] == ["model.embed_tokens", "model.layers.*.input_layernorm", "model.norm"]
    assert q["kept"] == [] and q["parent"] == str(parent) and q["parent_dtype"] == "bfloat16"
    rep = m["quality"]
    for k in ("parent_perplexity", "perplexity", "kl_mean", "kl_p99", "top1_agreement", "tokens"):
        assert isinstance(rep[k], (int, float)) and rep[k] >= 0, k
    assert rep["tokens"] > 2000
    assert "quality vs parent" in r.stdout and "top-1 agreement" in r.stdout and "perplexity" in r.stdout
    assert set(m["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not leftovers(home / ".tmp")
    # the entry is a model like any other: by name, through the same commands
    g = cohere("generate", f"{parent.name}-nf4", "The quick brown fox", "-n", "6", "--json", home=home)
    assert g.returncode == 0, g.stderr
    assert len(json.loads(g.stdout)["token_ids"]) == 6
    # and a second quantize of the same parent needs --force
    again = cohere("quantize", str(parent), "--no-eval", home=home)
    assert again.returncode == 1 and "--force" in one_line_error(again)
    forced = cohere("quantize", str(parent), "--no-eval", "--force", home=home)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((entry / "manifest.json").read_text())["quality"] is None
    assert not leftovers(home / ".tmp")


def test_int8_to_folder_with_keep(parent, tmp_path):
    out = tmp_path / "out" / "tiny-int8"
    out.parent.mkdir()
    r = cohere("quantize", str(parent), "--bits", "8", "--keep", "*.o_proj", "--output", str(out), "--no-eval",
               home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "int8" and m["quantization"]["bits"] == 8
    assert m["quantization"]["kept"] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["load_in_8bit"] and cfg["llm_int8_skip_modules"] == ["lm_head", *m["quantization"]["kept"]]
    assert [p.name for p in out.parent.iterdir()] == ["tiny-int8"]  # no temporary folder beside it
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


def test_store_entry_parent_gets_derived_name(parent, tmp_path, monkeypatch):
    import shutil

    from cohere_cli import store

    home = tmp_path / "home"
    monkeypatch.setenv("COHERE_CLI_HOME", str(home))
    with store.entry_tmpdir("Org/tiny-model") as tmp:
        for p in parent.iterdir():
            shutil.copyfile(p, tmp / p.name)
    r = cohere("quantize", "tiny-model", "--bits", "8", "--no-eval", home=home)
    assert r.returncode == 0, r.stderr
    m = json.loads((home / "models" / "tiny-model-int8" / "manifest.json").read_text())
    assert m["name"] == "tiny-model-int8" and m["parent"] == "Org/tiny-model"
    assert m["quantization"]["parent"] == "Org/tiny-model"
    listing = cohere("models", home=home)
    assert listing.returncode == 0 and "tiny-model-int8" in listing.stdout and "int8" in listing.stdout


@pytest.mark.parametrize("args,code,needle", [
    (["--bits", "3"], 2, "--bits must be 4 or 8"),
    (["--quant-type", "int4"], 2, "--quant-type must be nf4 or fp4"),
    (["--blocksize", "48"], 2, "--blocksize must be one of"),
])
def test_bad_options_are_one_line_errors(parent, tmp_path, args, code, needle):
    r = cohere("quantize", str(parent), *args, home=tmp_path / "home")
    assert r.returncode == code
    assert needle in one_line_error(r)
    assert not leftovers(tmp_path / "home")


@pytest.mark.slow
def test_already_quantized_and_existing_output(parent, tmp_path):
    home = tmp_path / "home"
    out = tmp_path / "q"
    assert cohere("quantize", str(parent), "-o", str(out), "--no-eval", home=home).returncode == 0
    r = cohere("quantize", str(out), "--no-eval", home=home)
    assert r.returncode == 1 and "already quantized (nf4)" in one_line_error(r)
    r = cohere("quantize", str(parent), "-o", str(out), "--no-eval", home=home)
    assert r.returncode == 1 and "already exists" in one_line_error(r) and "--force" in r.stderr
    before = (out / "manifest.json").read_text()
    r = cohere("quantize", str(parent), "-o", str(out), "--bits", "8", "--no-eval", "--force", home=home)
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").read_text() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "q"] or sorted(
        p.name for p in tmp_path.iterdir()) == ["q"]


def test_not_enough_disk_space_leaves_nothing(parent, tmp_path, monkeypatch):
    from cohere_cli.commands.quantize import run_quantize
    from cohere_cli.errors import QuantizeError

    home = tmp_path / "home"
    monkeypatch.setenv("COHERE_CLI_HOME", str(home))
    monkeypatch.setattr(quantize, "free_bytes", lambda path: (1000, path))
    opts = dict(bits=4, quant_type="nf4", blocksize=64, double_quant=True, keep=[], force=False, no_eval=True)
    with pytest.raises(QuantizeError, match=r"not enough disk space in .*needs about .* is free"):
        run_quantize(str(parent), output=None, **opts)
    with pytest.raises(QuantizeError, match="not enough disk space"):
        run_quantize(str(parent), output=str(tmp_path / "elsewhere"), **opts)
    assert not leftovers(home) and not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (["home"], [])
    # the disk fills up half way through anyway (another process took the space): one clear error, nothing left
    import errno

    monkeypatch.setattr(quantize, "free_bytes", lambda path: (1 << 50, path))
    calls = []

    def full(self, buf):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_write(self, buf)

    real_write = quantize.ShardWriter.write
    monkeypatch.setattr(quantize.ShardWriter, "write", full)
    with pytest.raises(QuantizeError, match="No space left on device"):
        run_quantize(str(parent), output=None, **opts)
    assert not leftovers(home)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["store", "folder"])
def test_ctrl_c_leaves_nothing_behind(big, tmp_path, tmp_path_factory, where):
    home = tmp_path / "home"
    out = tmp_path / "out"
    held = tmp_path_factory.mktemp("held") / "marker"  # outside tmp_path: the test checks tmp_path is left empty
    # quantize waits after its first shard bytes (tests/held_cli.py): the Ctrl-C always lands mid-write
    args = [sys.executable, str(Path(__file__).with_name("held_cli.py")), "shard", str(held),
            "quantize", str(big), "--no-eval"]
    if where == "folder":
        args += ["--output", str(out)]
    env = {**os.environ, "COHERE_CLI_HOME": str(home)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300  # loading torch and the checkpoint on a busy machine
        while not held.exists():
            if proc.poll() is not None:
                pytest.fail(f"quantize ended before its first shard write: {proc.communicate()}")
            assert time.monotonic() < deadline, "quantize never reached its first shard write"
            time.sleep(0.05)
        building = (home / ".tmp") if where == "store" else tmp_path
        assert any(p.stat().st_size > 0 for p in building.rglob("*.safetensors"))  # mid-way: a shard is on disk
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr  # KeyboardInterrupt: a quiet exit 130
    assert "Traceback" not in stderr
    assert not leftovers(home) and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == []


# ---- memory ---------------------------------------------------------------------------------------------------------
PROBE = r"""
import json, sys
from pathlib import Path
from cohere_cli.weights import qlinear
from cohere_cli.weights import quant
from cohere_cli.weights import quantize

qlinear.bnb()
import torch

# bitsandbytes' ops import torch._dynamo on their first call: one small weight first, then imports are done and the
# quantization alone is measured
quant.quantize_weight(torch.ones(64, 64, dtype=torch.bfloat16), quant.QuantSpec(bits=int(sys.argv[3])))


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set (VmHWM) to the current one
base = status("VmRSS")
r = quantize.quantize_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), quant.QuantSpec(bits=int(sys.argv[3])))
print(json.dumps({"base": base, "peak": status("VmHWM"), "parent": r.parent_bytes, "out": r.out_bytes,
                  "largest": max(it.src.nbytes for it in r.plan.items), "seconds": r.seconds, "shards": len(r.files)}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
@pytest.mark.parametrize("bits", [4, 8])
def test_peak_memory_is_a_few_chunks_not_the_model(big, tmp_path, bits):
    out = tmp_path / "q"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", PROBE, str(big), str(out), str(bits)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    grew = m["peak"] - m["base"]
    n_in = len(list(big.glob("*.safetensors")))
    print(f"\n{bits}-bit: parent {m['parent'] / 1e6:.0f} MB in {n_in} shards -> {m['out'] / 1e6:.0f} MB in "
          f"{m['shards']} shards, {m['seconds']:.1f} s; largest tensor {m['largest'] / 1e6:.1f} MB; "
          f"peak RSS {m['peak'] / 1e6:.0f} MB = {m['base'] / 1e6:.0f} MB before + {grew / 1e6:.0f} MB")
    assert m["parent"] > 1e9 and n_in > 1
    assert grew < 6 * m["largest"], "peak memory is not a small multiple of the largest tensor"
    assert grew < m["parent"] / 5, "peak memory grows with the model"


def test_force_never_replaces_a_folder_that_is_not_ours(tmp_path):
    """`quantize -o DIR --force` replaces an empty folder or a checkpoint we wrote (manifest.json), nothing else."""
    from cohere_cli.errors import QuantizeError

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    (tmp_path / "link").symlink_to(mine)
    for dest in (mine, tmp_path / "link"):  # the reported case, and the same folder through a symlink
        with pytest.raises(QuantizeError, match="not a checkpoint cohere-cli wrote"):
            with quantize.folder_tmpdir(dest, replace=True):
                pass
    assert (mine / "chapter1.tex").read_text() == "years of work"
    # a manifest.json alone proves nothing (a browser extension has one); nor does ours beside a file of the user's
    ext = tmp_path / "extension"
    ext.mkdir()
    (ext / "manifest.json").write_text('{"manifest_version": 3, "name": "My extension", "version": "1.0"}')
    (ext / "background.js").write_text("chrome.runtime.onInstalled.addListener(() => {});")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text("{}")
    written = {k: None for k in ("source", "parent", "architecture", "model_type", "parameters", "storage_dtype",
                                 "precision")}
    (ours / "manifest.json").write_text(json.dumps({
        "format": 1, "name": "ours", **written, "created_at": "2025-01-31T12:00:00Z",
        "files": {"config.json": {"size": 2, "sha256": "0" * 64}}}))
    mixed = tmp_path / "mixed"
    shutil.copytree(ours, mixed)
    (mixed / "thesis.tex").write_text("years of work")
    forged = tmp_path / "forged"  # our fields, but a listed file is missing
    shutil.copytree(ours, forged)
    (forged / "config.json").unlink()
    (forged / "readme.json").write_text("{}")
    for dest in (ext, mixed, forged):
        with pytest.raises(QuantizeError, match="not a checkpoint cohere-cli wrote"):
            with quantize.folder_tmpdir(dest, replace=True):
                pass
    assert (ext / "background.js").is_file() and (mixed / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()
    for dest in (ours, tmp_path / "empty"):
        with quantize.folder_tmpdir(dest, replace=True) as tmp:
            (tmp / "config.json").write_text("{}")
        assert sorted(p.name for p in dest.iterdir()) == ["config.json"]


@pytest.fixture(scope="module")
def moe_parent(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("moe") / "moe", dtype="bfloat16", model_type="cohere2_moe",
                           sliding_window=8, layers=3, templates="cmd3", moe=dict(
                               num_experts=4, num_experts_per_tok=2, num_shared_experts=1, first_k_dense_replace=1,
                               prefix_dense_intermediate_size=96))


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["8"])  # the 4-bit format of a linear is the dense tests'; int8 met a kernel bug
def test_moe_experts_are_quantized_and_the_router_stays_in_float(moe_parent, tmp_path, bits):
    """cohere2_moe: every expert's, the shared experts' and the dense prefix's projections quantized; the router
    (`mlp.gate`, E x H) stored exactly as the parent's; the result generates (int8: a prompt long enough that an
    expert runs 4+ rows, where torch's int8 kernel once segfaulted on a misaligned expert weight)."""
    from safetensors import safe_open

    parent = moe_parent
    out = tmp_path / "moe-q"
    r = cohere("quantize", str(parent), "--bits", bits, "-o", str(out), "--no-eval", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert q["quantized"] == 7 + 2 * (4 + 4 * 3 + 3)  # dense layer 7; sparse: attention, 4 experts, shared
    assert "model.layers.*.mlp.gate" in q["unquantized"]
    marker = "weight.quant_state.bitsandbytes__nf4" if bits == "4" else "SCB"
    with safe_open(str(out / "model.safetensors"), "pt") as f, \
            safe_open(str(parent / "model.safetensors"), "pt") as p:
        keys = set(f.keys())
        for i in (1, 2):
            for e in [f"experts.{n}" for n in range(4)] + ["shared_experts"]:
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    name = f"model.layers.{i}.mlp.{e}.{proj}."
                    assert any(k.startswith(name) and k.endswith(marker) for k in keys), name
            router = f"model.layers.{i}.mlp.gate.weight"
            assert torch.equal(f.get_tensor(router), p.get_tensor(router))
    g = cohere("generate", str(out), "The quick brown fox jumps over the lazy dog " * 3, "-n", "6", "--json",
               home=tmp_path / "home")
    assert g.returncode == 0, g.stderr
    assert len(json.loads(g.stdout)["token_ids"]) == 6
