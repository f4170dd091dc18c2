"""The checkpoint store (cohere_cli.store), the memory arithmetic (cohere_cli.store.sizes) and `cohere models`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohere_cli import store
from cohere_cli.store import sizes
from cohere_cli.cli import app
from cohere_cli.errors import ModelNotFound, StoreError, UsageError
from hub_server import make_tiny_cohere, write_safetensors

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_cohere(tmp_path_factory.mktemp("ck") / "tiny", hidden=128, intermediate=256, vocab=256,
                            extras=False)


def add_entry(name: str, src: Path, **fields) -> store.Entry:
    with store.entry_tmpdir(name) as tmp:
        for p in src.iterdir():
            if p.is_file():
                (tmp / p.name).write_bytes(p.read_bytes())
        store.write_manifest(tmp, store.make_manifest(tmp, name=name, **fields))
    entry = store.get_entry(name)
    assert entry is not None
    return entry


# ---- layout and publishing -----------------------------------------------------------------------------------------
def test_store_root_from_env_or_default(monkeypatch, home):
    assert store.store_root() == home
    monkeypatch.delenv("COHERE_CLI_HOME")
    assert store.store_root() == Path.home() / ".cache" / "cohere-cli"


def test_names_map_to_folders():
    assert store.folder_name("CohereForAI/c4ai-command-r7b-12-2024") == "CohereForAI--c4ai-command-r7b-12-2024"
    assert store.entry_path("c4ai-command-r7b-12-2024-nf4").name == "c4ai-command-r7b-12-2024-nf4"
    for bad in ("", "..", "a/b/c", ".hidden", "a\\b"):
        with pytest.raises(StoreError):
            store.folder_name(bad)


def test_entry_appears_only_when_complete(tiny):
    with store.entry_tmpdir("Org/model") as tmp:
        (tmp / "config.json").write_bytes((tiny / "config.json").read_bytes())
        assert store.list_entries() == []  # still being built: invisible
        assert not store.entry_path("Org/model").exists()
    [e] = store.list_entries()
    assert e.name == "Org/model" and e.path == store.models_dir() / "Org--model"
    # no manifest was written by the caller: one is made with checksums
    assert e.files["config.json"]["sha256"] == hashlib.sha256((tiny / "config.json").read_bytes()).hexdigest()
    assert not any((store.store_root() / ".tmp").iterdir())


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_entry_tmpdir_removed_on_failure(exc):
    with pytest.raises(exc):
        with store.entry_tmpdir("Org/broken") as tmp:
            (tmp / "config.json").write_text("{}")
            raise exc()
    assert store.list_entries() == []
    assert not store.entry_path("Org/broken").exists()
    assert list((store.store_root() / ".tmp").iterdir()) == []


def test_entry_tmpdir_replace(tiny):
    add_entry("Org/m", tiny)
    with pytest.raises(StoreError, match="already has 'Org/m'.*cohere models rm"):
        with store.entry_tmpdir("Org/m"):
            pass
    with store.entry_tmpdir("Org/m", replace=True) as tmp:
        (tmp / "new.txt").write_text("x")
    assert set(store.get_entry("Org/m").files) == {"new.txt"}


def test_stale_tmp_of_dead_process_is_cleaned(tiny):
    stale = store.store_root() / ".tmp" / "Org--x.abc_1234.999999999.tmp"  # publish_folder names it so
    stale.mkdir(parents=True)
    with store.entry_tmpdir("Org/y"):
        pass
    assert not stale.exists()


def test_manifest_fields(tiny):
    e = add_entry("CohereForAI/tiny", tiny, source={"repo_id": "CohereForAI/tiny", "revision": "main",
                                                   "commit": "a" * 40})
    m = e.manifest
    expected = sum(int(__import__("math").prod(t["shape"])) for f in sizes.checkpoint_files(tiny)
                   for t in sizes.read_safetensors_header(f).values())
    assert m["format"] == 1 and m["name"] == "CohereForAI/tiny"
    assert m["architecture"] == "CohereForCausalLM" and m["model_type"] == "cohere"
    assert m["parameters"] == expected
    assert m["storage_dtype"] == "bfloat16" and m["precision"] == "bf16"
    assert m["parent"] is None and m["created_at"].endswith("Z")
    assert m["source"]["commit"] == "a" * 40
    for rel, rec in m["files"].items():
        assert rec["size"] == (tiny / rel).stat().st_size
    assert e.commit == "a" * 40
    assert e.size_on_disk() >= sum(r["size"] for r in m["files"].values())


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    data = bytes(range(256)) * 50_000
    p.write_bytes(data)
    seen = []
    assert store.sha256_file(p, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


# ---- resolving MODEL -----------------------------------------------------------------------------------------------
@pytest.fixture
def populated(tiny):
    for name in ("CohereForAI/c4ai-command-r7b-12-2024", "c4ai-command-r7b-12-2024-nf4",
                 "CohereForAI/aya-expanse-8b", "CohereForAI/aya-expanse-32b"):
        add_entry(name, tiny, parent="CohereForAI/c4ai-command-r7b-12-2024" if name.endswith("nf4") else None)


def test_resolve_by_name_and_short_forms(populated):
    r7b = store.models_dir() / "CohereForAI--c4ai-command-r7b-12-2024"
    nf4 = store.models_dir() / "c4ai-command-r7b-12-2024-nf4"
    assert store.resolve_model("CohereForAI/c4ai-command-r7b-12-2024") == r7b
    assert store.resolve_model("cohereforai--c4ai-command-r7b-12-2024") == r7b  # folder name, any case
    assert store.resolve_model("c4ai-command-r7b-12-2024") == r7b  # repo part
    assert store.resolve_model("command-r7b-12-2024") == r7b  # trailing words: not the -nf4 one
    assert store.resolve_model("c4ai-command-r7b-12-2024-nf4") == nf4
    assert store.resolve_model("r7b-12-2024-nf4") == nf4
    assert store.resolve_model("expanse-8b") == store.models_dir() / "CohereForAI--aya-expanse-8b"


def test_resolve_ambiguous_lists_candidates(populated):
    with pytest.raises(ModelNotFound, match="aya-expanse-32b.*aya-expanse-8b|aya-expanse-8b.*aya-expanse-32b"):
        store.resolve_model("aya-expanse")


def test_resolve_not_found_says_what_to_do(populated, tmp_path):
    with pytest.raises(ModelNotFound) as e:
        store.resolve_model("c4ai-command-r7b-12-2025")
    msg = str(e.value)
    assert "did you mean" in msg and "c4ai-command-r7b-12-2024" in msg
    assert "`cohere models`" in msg and "cohere download" in msg and "\n" not in msg
    with pytest.raises(ModelNotFound, match="cohere download CohereForAI/c4ai-command-a-03-2025"):
        store.resolve_model("CohereForAI/c4ai-command-a-03-2025")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ModelNotFound, match="is a file"):
        store.resolve_model(str(f))


def test_resolve_folder_path_wins(populated, tmp_path):
    d = tmp_path / "c4ai-command-r7b-12-2024"
    d.mkdir()
    assert store.resolve_model(str(d)) == d


def test_last_used_roundtrip(populated):
    assert store.last_used() is None
    store.remember_last_used("CohereForAI/aya-expanse-8b")
    assert store.last_used() == "CohereForAI/aya-expanse-8b"
    store.remove_entry("CohereForAI/aya-expanse-8b")
    assert store.last_used() is None
    assert store.get_entry("CohereForAI/aya-expanse-8b") is None


# ---- sizes ---------------------------------------------------------------------------------------------------------
R7B = {  # c4ai-command-r7b-12-2024 config.json (spec section 2)
    "architectures": ["Cohere2ForCausalLM"], "model_type": "cohere2", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096, "sliding_window_pattern": 4,
    "head_dim": 128, "logit_scale": 0.25, "rope_theta": 50000, "torch_dtype": "bfloat16",
}
V01 = {  # c4ai-command-r-v01
    "model_type": "cohere", "hidden_size": 8192, "intermediate_size": 22528, "num_hidden_layers": 40,
    "num_attention_heads": 64, "num_key_value_heads": 64, "vocab_size": 256000, "max_position_embeddings": 8192,
}
RPLUS = {  # c4ai-command-r-plus: qk-norm
    "model_type": "cohere", "hidden_size": 12288, "intermediate_size": 33792, "num_hidden_layers": 64,
    "num_attention_heads": 96, "num_key_value_heads": 8, "vocab_size": 256000, "use_qk_norm": True,
}


def test_parameter_counts_match_the_released_models():
    assert round(sizes.param_counts(sizes.Dims.from_config(R7B)).total / 1e9, 3) == 8.028
    assert round(sizes.param_counts(sizes.Dims.from_config(V01)).total / 1e9, 3) == 34.981
    assert round(sizes.param_counts(sizes.Dims.from_config(RPLUS)).total / 1e9, 3) == 103.811
    d = sizes.Dims.from_config(R7B)
    assert round(sizes.weights_bytes(d, "bf16") / 1e9, 2) == 16.06  # the spec's bf16 size
    c = sizes.param_counts(d)
    assert sizes.weights_bytes(d, "int8") == c.linear + 4 * c.linear_rows + 2 * c.other
    assert sizes.weights_bytes(d, "nf4") == int(c.linear * (0.5 + 4 / 64)) + 2 * c.other
    assert sizes.weights_bytes(d, "nf4") < sizes.weights_bytes(d, "int8") < sizes.weights_bytes(d, "bf16")


def test_kv_cache_sliding_layers_hold_the_window():
    d = sizes.Dims.from_config(R7B)
    assert d.sliding == [(i + 1) % 4 != 0 for i in range(32)] and sum(d.sliding) == 24
    per_pos = 2 * 8 * 128 * 2
    assert sizes.kv_cache_bytes(d, 8192) == per_pos * (24 * 4096 + 8 * 8192) == 671_088_640
    assert sizes.kv_cache_bytes(d, 1000) == per_pos * 32 * 1000  # below the window every layer holds all
    # layer_types wins over the pattern; command-r has no sliding layers
    lt = {**R7B, "layer_types": ["full_attention"] * 31 + ["sliding_attention"]}
    assert sum(sizes.Dims.from_config(lt).sliding) == 1
    assert sizes.kv_cache_bytes(sizes.Dims.from_config(V01), 8192) == 2 * 40 * 64 * 128 * 8192 * 2
    # head_dim defaults to hidden / heads, kv heads to heads
    d2 = sizes.Dims.from_config({k: v for k, v in V01.items() if k != "num_key_value_heads"})
    assert d2.head_dim == 128 and d2.kv_heads == 64


def test_tensor_stats_from_headers(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {
        "model.embed_tokens.weight": ("BF16", [20, 4], b"\0" * 160),
        "model.layers.0.mlp.up_proj.weight": ("U8", [8, 1], b"\0" * 8),  # nf4-packed [4, 4]
        "model.layers.0.mlp.up_proj.weight.absmax": ("F32", [1], b"\0" * 4),
        "model.layers.0.mlp.up_proj.weight.quant_map": ("F32", [16], b"\0" * 64),
        "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4": ("U8", [3], b"{} "),
        "model.layers.0.mlp.down_proj.weight": ("I8", [4, 4], b"\0" * 16),
        "model.layers.0.mlp.down_proj.SCB": ("F32", [4], b"\0" * 16),
    })
    st = sizes.tensor_stats([tmp_path / "a.safetensors"])
    assert st.parameters == 80 + 16 + 16
    assert st.storage_dtype == "bfloat16"
    assert sizes.precision_of({"quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}},
                              "bfloat16") == "nf4"
    assert sizes.precision_of({"quantization_config": {"load_in_8bit": True}}, "bfloat16") == "int8"
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError):
        sizes.read_safetensors_header(tmp_path / "bad.safetensors")


def test_human_units():
    assert sizes.human_bytes(999) == "999 B"
    assert sizes.human_bytes(16_056_066_048) == "16.1 GB"
    assert sizes.human_bytes(671_088_640) == "671 MB"
    assert sizes.human_params(8_028_033_024) == "8.03B"


# ---- `cohere models` -----------------------------------------------------------------------------------------------
def test_models_list_json_and_table(populated):
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    names = [m["name"] for m in data["models"] if not m["builtin"]]
    assert names == sorted(names, key=str.lower) and len(names) == 4
    assert data["models"][0]["name"] == "demo" and data["models"][0]["builtin"]  # the built-in, listed first
    nf4 = next(m for m in data["models"] if m["name"] == "c4ai-command-r7b-12-2024-nf4")
    assert nf4["parent"] == "CohereForAI/c4ai-command-r7b-12-2024" and nf4["size_bytes"] > 0
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    header = r.stdout.splitlines()[0].split()
    assert header == ["NAME", "ARCHITECTURE", "PARAMS", "PRECISION", "SIZE", "REVISION"]
    assert "from CohereForAI/c4ai-command-r7b-12-2024" in r.stdout


def test_models_empty_store_says_how_to_fill_it():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "built-in" in r.stdout and len(r.stdout.splitlines()) == 2  # header, demo
    assert "cohere download" in r.stderr


def test_models_info(populated):
    r = runner.invoke(app, ["models", "info", "aya-expanse-8b", "--seq", "100", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["config"]["hidden_size"] == 128 and info["config"]["num_key_value_heads"] == 2
    d = sizes.Dims.from_config(json.loads((store.resolve_model("aya-expanse-8b") / "config.json").read_text()))
    assert info["memory"]["kv_cache"]["bytes"] == sizes.kv_cache_bytes(d, 100)
    assert info["memory"]["weights_bytes"]["bf16"] == sizes.weights_bytes(d, "bf16")
    assert info["parameters"] == info["manifest"]["parameters"]
    r = runner.invoke(app, ["models", "info", "aya-expanse-8b"])
    assert r.exit_code == 0 and "KV cache" in r.stdout and "nf4" in r.stdout


def test_models_info_on_a_plain_folder(tiny):
    r = runner.invoke(app, ["models", "info", str(tiny), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["manifest"] is None


def test_models_verify_detects_tampering(populated):
    r = runner.invoke(app, ["models", "verify", "c4ai-command-r7b-12-2024"])
    assert r.exit_code == 0 and "ok" in r.stderr
    shard = store.resolve_model("c4ai-command-r7b-12-2024") / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    r = runner.invoke(app, ["models", "verify", "c4ai-command-r7b-12-2024"])
    assert isinstance(r.exception, StoreError)
    assert "model-00002-of-00002.safetensors has sha256" in str(r.exception)
    assert "cohere models rm" in str(r.exception)


def test_models_rm(populated):
    r = runner.invoke(app, ["models", "rm", "aya-expanse-32b"])  # not a terminal and no --yes: refuse
    assert isinstance(r.exception, UsageError) and "--yes" in str(r.exception)
    r = runner.invoke(app, ["models", "rm", "aya-expanse-32b", "--yes"])
    assert r.exit_code == 0 and "removed CohereForAI/aya-expanse-32b" in r.stderr
    assert store.get_entry("CohereForAI/aya-expanse-32b") is None
    r = runner.invoke(app, ["models", "rm", "no-such-model", "--yes"])
    assert isinstance(r.exception, ModelNotFound)
