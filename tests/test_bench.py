"""`cohere bench`: the roofline/FLOP arithmetic by hand, the precision planner, --compare-to, argument errors, and
one end-to-end run on a tiny model whose --json record must hold every documented field. Speed is not asserted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from cohere_cli.bench import run as bench
from cohere_cli.bench import child as bench_child
from cohere_cli.weights import kernels
from cohere_cli.weights.kernels.coded import coded_row
from cohere_cli.weights import qlinear
from cohere_cli.bench import roofline
from cohere_cli.store import sizes
from cohere_cli.commands.bench import compare_records, figure, load_record
from cohere_cli.errors import UsageError

# the reference shape: hidden 1024, 16 layers, 16 heads / 4 KV heads, intermediate 2816, vocab 32000
CFG_213M = {"model_type": "cohere", "hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
            "num_key_value_heads": 4, "intermediate_size": 2816, "vocab_size": 32000,
            "max_position_embeddings": 8192}
D = sizes.Dims.from_config(CFG_213M)
LINEAR = 16 * (1024 * 1024 + 2 * 1024 * 256 + 1024 * 1024 + 3 * 1024 * 2816)  # 180,355,072
OTHER = 32000 * 1024 + 16 * 1024 + 1024  # tied embedding + per-layer norm + final norm


# ---- arithmetic -----------------------------------------------------------------------------------------------------
def test_weights_read_per_token_by_hand():
    assert LINEAR + OTHER == 213_140_480
    assert roofline.weights_read_per_token(D, "bf16") == 2 * (LINEAR + OTHER)
    assert roofline.weights_read_per_token(D, "fp32") == 4 * (LINEAR + OTHER)
    rows = 16 * (1024 + 256 + 256 + 1024 + 2816 + 2816 + 1024)  # one fp32 scale per output row
    assert roofline.weights_read_per_token(D, "int8") == LINEAR + 4 * rows + 2 * OTHER
    assert roofline.weights_read_per_token(D, "nf4") == int(LINEAR * (0.5 + 4 / 64)) + 2 * OTHER
    # untied: the input embedding contributes one row, the lm_head the whole table
    untied = sizes.Dims.from_config({**CFG_213M, "tie_word_embeddings": False})
    assert roofline.weights_read_per_token(untied, "bf16") == 2 * (LINEAR + OTHER) + 2 * 1024
    # the int8 head of quantized checkpoints on CPU: the 32000 x 1024 table at 1 byte + a float32 scale per row
    head = 32000 * 1024
    assert roofline.weights_read_per_token(D, "nf4", int8_head=True) == (
        int(LINEAR * (0.5 + 4 / 64)) + 2 * (OTHER - head) + head + 4 * 32000)
    assert roofline.weights_read_per_token(untied, "int8", int8_head=True) == (
        LINEAR + 4 * rows + 2 * (OTHER - head) + 2 * 1024 + head + 4 * 32000)


# North-shaped cohere2_moe: 32 experts of 512, top-4, a shared expert, one dense prefix layer of 2048, RMSNorm
CFG_MOE = {"model_type": "cohere2_moe", "hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 16,
           "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 512, "vocab_size": 32000,
           "num_experts": 32, "num_experts_per_tok": 4, "num_shared_experts": 1, "first_k_dense_replace": 1,
           "prefix_dense_intermediate_size": 2048, "rms_norm_eps": 1e-5, "sliding_window": 4096}


def test_moe_reads_only_its_chosen_experts_by_hand():
    """A MoE token reads attention, its 4 chosen experts and the shared one (and the router, kept in float), not
    all 32: the roofline and the FLOPs count those; memory and downloads count everything."""
    d = sizes.Dims.from_config(CFG_MOE)
    attn = 1024 * 1024 * 2 + 2 * 1024 * 256  # q and o (16 x 64 = 1024 wide), k and v (4 x 64)
    expert = 3 * 1024 * 512
    dense_layer, sparse_all = attn + 3 * 1024 * 2048, attn + 32 * expert + expert
    other = 32000 * 1024 + 4 * 1024 + 1024 + 3 * 32 * 1024  # embedding, norms, 3 routers
    c = sizes.param_counts(d)
    assert c.linear == dense_layer + 3 * sparse_all and c.other == other
    active = dense_layer + 3 * (attn + 4 * expert + expert)
    assert c.active().linear == active
    assert roofline.weights_read_per_token(d, "bf16") == 2 * (active + other)
    assert sizes.weights_bytes(d, "bf16") == 2 * (c.linear + other)
    assert roofline.prefill_flops(d, 1, logits_positions=0) == 2 * active + 4 * 1024 * 4


def test_moe_param_count_is_the_checkpoint_s(tmp_path):
    """The sizing of a cohere2_moe config, and of a cohere2_vision wrapper around it (the text model only), equals
    the tensors transformers writes."""
    from safetensors import safe_open

    from factory_checkpoint import make_checkpoint

    for vision in (False, True):
        folder = make_checkpoint(tmp_path / str(vision), tokenizer=False, vocab=256, model_type="cohere2_moe",
                                 vision=vision, moe=dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=2,
                                                         first_k_dense_replace=1, prefix_dense_intermediate_size=96))
        d = sizes.Dims.from_config(json.loads((folder / "config.json").read_text()))
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                    if "vision" not in k and "projector" not in k)
        assert sizes.param_counts(d).total == n
        info = subprocess.run([sys.executable, "-m", "cohere_cli", "models", "info", str(folder), "--json"],
                              capture_output=True, text=True)
        assert info.returncode == 0, info.stderr
        rec = json.loads(info.stdout)
        assert rec["parameters"] >= n and rec["config"]["experts"] == 4  # the file counts the tower too
        mem = rec["memory"]
        assert mem["weights_bytes"]["bf16"] == 2 * n
        assert mem["weights_read_per_token_bytes"]["bf16"] == roofline.weights_read_per_token(d, "bf16") < 2 * n


def test_kv_read_and_roofline_by_hand():
    per_position = 16 * 2 * 4 * 64 * 2  # layers x (K, V) x kv heads x head dim x bf16 bytes = 16 KiB
    assert roofline.kv_read_per_token(D, 8192) == per_position * 8192 == 134_217_728
    per_tok = roofline.decode_bytes_per_token(D, "bf16", 512)
    assert per_tok == 2 * (LINEAR + OTHER) + per_position * 512
    assert roofline.roofline_tokens_per_s(per_tok, 26e9) == pytest.approx(26e9 / 434_669_568)
    assert roofline.roofline_tokens_per_s(per_tok, 26e9) == pytest.approx(59.8, abs=0.05)
    # 29.7 tok/s (transformers bf16 on the dev machine) is half of that roofline
    assert roofline.roofline_fraction(29.7, per_tok, 26e9) == pytest.approx(29.7 * 434_669_568 / 26e9)
    assert roofline.roofline_fraction(roofline.roofline_tokens_per_s(per_tok, 26e9), per_tok, 26e9) == pytest.approx(1)
    with pytest.raises(ValueError):
        roofline.roofline_tokens_per_s(0, 26e9)


def test_sliding_layers_read_at_most_their_window():
    cfg = {**CFG_213M, "model_type": "cohere2", "num_hidden_layers": 4, "sliding_window": 100,
           "sliding_window_pattern": 4}  # layers 0-2 slide, layer 3 is global
    d = sizes.Dims.from_config(cfg)
    per_layer_position = 2 * 4 * 64 * 2
    assert roofline.kv_read_per_token(d, 1000) == per_layer_position * (3 * 100 + 1000)


def test_prefill_flops_by_hand():
    T = 512
    attn = 16 * 4 * 1024 * (T * (T + 1) // 2)  # layers x 4 x (heads x head_dim) x causal keys
    assert roofline.prefill_flops(D, T) == 2 * LINEAR * T + attn + 2 * 32000 * 1024
    # a chunk at positions 512..1023 attends to more keys than the first chunk
    later = 16 * 4 * 1024 * sum(p + 1 for p in range(512, 1024))
    assert roofline.prefill_flops(D, T, start=512) == 2 * LINEAR * T + later + 2 * 32000 * 1024
    # chunking does not change the total, except for the logits each chunk computes
    assert roofline.prefill_flops(D, 1024) == roofline.prefill_flops(D, 512) + roofline.prefill_flops(D, 512, 512) \
        - 2 * 32000 * 1024
    # a decode step at context c: the linears once, attention over c keys, one position's logits
    assert roofline.decode_flops(D, 100) == 2 * LINEAR + 16 * 4 * 1024 * 100 + 2 * 32000 * 1024


def test_prefill_flops_respect_windows():
    d = sizes.Dims.from_config({**CFG_213M, "model_type": "cohere2", "num_hidden_layers": 2, "sliding_window": 3,
                                "layer_types": ["sliding_attention", "full_attention"]})
    lin = sizes.param_counts(d).linear
    keys_sliding = 1 + 2 + 3 + 3 + 3  # positions 0..4, window 3
    keys_full = 1 + 2 + 3 + 4 + 5
    assert roofline.prefill_flops(d, 5) == 2 * lin * 5 + 4 * 1024 * (keys_sliding + keys_full) + 2 * 32000 * 1024
    assert roofline._causal_keys(5, 3) == keys_sliding and roofline._causal_keys(5, None) == keys_full


def test_summarize():
    s = roofline.summarize([10.0, 12.0, 11.0])
    assert s == {"median": 11.0, "min": 10.0, "max": 12.0, "spread": pytest.approx(2 / 11),
                 "samples": [10.0, 12.0, 11.0]}
    assert roofline.summarize([5.0])["spread"] == 0.0


def test_parse_precisions():
    assert bench.parse_precisions("bf16, INT8,nf4,bf16") == ["bf16", "int8", "nf4"]
    assert bench.parse_precisions("bfloat16,float32") == ["bf16", "fp32"]
    assert bench.parse_precisions(None) is None
    with pytest.raises(UsageError, match="q4_0"):
        bench.parse_precisions("bf16,q4_0")
    with pytest.raises(UsageError):
        bench.parse_precisions(" , ")


# ---- where each precision comes from --------------------------------------------------------------------------------
def _entry(root, name, config, **manifest):
    folder = root / "models" / name.replace("/", "--")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "name": name, **manifest}))
    return folder


def test_plan_precisions(tmp_path, monkeypatch):
    monkeypatch.setenv("COHERE_CLI_HOME", str(tmp_path))
    parent = _entry(tmp_path, "org/m", CFG_213M, precision="bf16", parent=None)
    q_cfg = {**CFG_213M, "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}
    int8 = _entry(tmp_path, "m-int8", q_cfg, precision="int8", parent="org/m")
    plans = {p.precision: p for p in bench.plan_precisions(parent, CFG_213M, None)}
    assert list(plans) == ["bf16", "int8", "nf4"]
    assert plans["bf16"].mode == "load" and plans["bf16"].folder == str(parent)
    assert plans["int8"].mode == "load" and plans["int8"].folder == str(int8)  # the store has it
    assert plans["nf4"].mode == "quantize" and "in memory" in plans["nf4"].source
    # a quantized checkpoint: its own precision by default, float ones from its parent in the store
    own = bench.plan_precisions(int8, q_cfg, None)
    assert [(p.precision, p.mode) for p in own] == [("int8", "load")]
    back = {p.precision: p for p in bench.plan_precisions(int8, q_cfg, ["bf16", "nf4"])}
    assert back["bf16"].folder == str(parent) and back["nf4"].folder == str(parent)
    assert back["nf4"].mode == "quantize"
    orphan = _entry(tmp_path, "orphan-nf4", {**CFG_213M, "quantization_config": {"load_in_4bit": True}},
                    precision="nf4", parent="gone/away")
    with pytest.raises(UsageError, match="gone/away"):
        bench.plan_precisions(orphan, json.loads((orphan / "config.json").read_text()), ["bf16"])


# ---- --compare-to ---------------------------------------------------------------------------------------------------
def _stat(x):
    return {"median": x, "min": x, "max": x, "spread": 0.0, "samples": [x]}


def _record(decode, rss, seq=8192, precisions=("bf16",)):
    return {"schema": bench.SCHEMA, "created_at": "2025-01-01T00:00:00Z", "versions": {"torch": "2.13.0"},
            "machine": {"cpu": "X"}, "model": {"name": "demo"}, "settings": {"seq": seq, "gen": 128},
            "results": [{"precision": p, "decode_tokens_per_s": _stat(decode), "ttft_s": _stat(2.0),
                         "peak_memory": {"rss_bytes": rss}} for p in precisions]}


def test_compare_records():
    old, new = _record(40.0, 1000, precisions=("bf16", "fp32")), _record(50.0, 900, seq=4096)
    c = compare_records(old, new, "old.json")
    by = {ch["metric"]: ch for ch in c["changes"]}
    assert by["decode_tokens_per_s"]["change"] == pytest.approx(0.25) and by["decode_tokens_per_s"]["better"]
    assert by["peak_memory.rss_bytes"]["change"] == pytest.approx(-0.1) and by["peak_memory.rss_bytes"]["better"]
    assert by["ttft_s"]["change"] == 0 and not by["ttft_s"]["better"]
    assert "prefill_512_tokens_per_s" not in by  # absent on both sides: skipped, not an error
    assert "settings.seq: 8192 -> 4096" in c["differences"] and "fp32: not in this run" in c["differences"]
    assert figure(new["results"][0], "peak_memory.rss_bytes") == 900 and figure({}, "a.b") is None


def test_load_record_rejects_other_json(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_record(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text('{"prompt_tokens": []}')
    with pytest.raises(UsageError, match="not a `cohere bench --json` record"):
        load_record(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(UsageError, match="not a JSON bench record"):
        load_record(tmp_path / "y.json")


# ---- the command ----------------------------------------------------------------------------------------------------
def cohere(*args, env=None):
    env = {**os.environ, "COHERE_BENCH_PROBE_BYTES": str(64 << 20), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from factory_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("bench-tiny"), dtype="bfloat16", max_position_embeddings=256)


def test_seq_beyond_context_is_a_clear_error(tiny):
    r = cohere("bench", str(tiny), "--seq", "1024")
    assert r.returncode == 2 and r.stdout == ""
    assert "--seq 1024 is larger than" in r.stderr and "context (256 tokens)" in r.stderr
    assert "Traceback" not in r.stderr
    r = cohere("bench", str(tiny), "--seq", "64", "--gen", "64")
    assert r.returncode == 2 and "--gen 64 must be smaller than --seq 64" in r.stderr


def test_model_defaults_to_the_demo():
    r = cohere("bench", "--seq", "10000000")  # either too long for the demo's context, or no demo yet
    assert r.returncode != 0 and "demo" in r.stderr and "Traceback" not in r.stderr


STAT_KEYS = {"median", "min", "max", "spread", "samples"}
RESULT_KEYS = {
    "precision", "source", "compute_dtype", "head", "native_kernels", "threads", "load_s", "quantized_linears", "model_bytes",
    "kv_cache_bytes", "weights_read_bytes_per_token", "kv_read_bytes_per_token", "decode_bytes_per_token", "prefill_512_tokens_per_s",
    "prefill_seq_tokens_per_s", "ttft_s", "decode_tokens_per_s", "decode_roofline_tokens_per_s",
    "decode_roofline_fraction", "decode_device_peak_fraction", "prefill_512_flops", "prefill_seq_flops",
    "prefill_512_flop_per_s", "prefill_seq_flop_per_s", "decode_flops_per_token", "peak_memory",
}


@pytest.mark.slow
def test_bench_json_record_has_every_field(tiny, tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(_record(1.0, 10**9, seq=96, precisions=("bf16", "fp32"))))
    r = cohere("bench", str(tiny), "--seq", "96", "--gen", "6", "--repeat", "2", "--threads", "1",
               "--precision", "bf16,nf4", "--json", "--compare-to", str(earlier))  # int8: in-process test below
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert set(rec) == {"schema", "created_at", "versions", "machine", "model", "settings", "results", "comparison"}
    assert rec["schema"] == "cohere-cli.bench/1"
    assert set(rec["versions"]) == {"cohere_cli", "torch", "bitsandbytes", "cuda", "python", "platform"}
    assert rec["versions"]["torch"] and rec["versions"]["bitsandbytes"]
    m = rec["machine"]
    assert set(m) == {"device", "cpu", "cpu_count", "gpu", "threads", "memory_bandwidth_bytes_per_s",
                      "bandwidth_probe", "device_peak_bandwidth_bytes_per_s", "env"}
    assert m["device"] == "cpu" and m["threads"] == 1 and m["memory_bandwidth_bytes_per_s"] > 1e8 and m["cpu"]
    assert rec["model"]["path"] == str(tiny) and rec["model"]["context"] == 256
    assert {"name", "revision", "parameters", "model_type", "hidden", "layers", "vocab"} <= set(rec["model"])
    s = rec["settings"]
    assert (s["seq"], s["gen"], s["repeat"], s["prefill_short"], s["threads"]) == (96, 6, 2, 96, 1)
    assert s["precisions"] == ["bf16", "nf4"] and s["decode_positions"] == [90, 94]

    res = {x["precision"]: x for x in rec["results"]}
    assert list(res) == ["bf16", "nf4"]
    d = sizes.Dims.from_config(json.loads((tiny / "config.json").read_text()))
    for p, x in res.items():
        assert set(x) == RESULT_KEYS, p
        for k in ("prefill_512_tokens_per_s", "prefill_seq_tokens_per_s", "ttft_s", "decode_tokens_per_s"):
            assert set(x[k]) == STAT_KEYS and len(x[k]["samples"]) == 2 and x[k]["median"] > 0, (p, k)
        assert x["threads"] == 1 and x["model_bytes"] > 0 and x["load_s"] > 0
        # the session's cache holds --seq positions in the compute dtype (nf4 computes in float32 on a CPU without
        # native bf16, bfloat16 where it has it)
        elem = {"bfloat16": 2, "float16": 2, "float32": 4}[x["compute_dtype"]]
        assert x["kv_cache_bytes"] == sizes.kv_cache_bytes(d, 96, bytes_per_element=elem)
        assert x["head"] == ("int8" if p == "nf4" else "float")  # quantized on CPU: the int8 head
        ops = kernels.decode_ops()
        want = ["decode"] if ops is not None else []  # bf16 on CPU, both precisions
        want += ["block_step"] if ops is not None and ops.block is not None else []  # each block in one call
        want += ["model_step"] if ops is not None and ops.block is not None else []  # and all of them in one
        if p == "bf16" and kernels.packed_row() is not None:  # its packed bf16 linears (the layout checked here),
            want += ["coded_row"] if coded_row() is not None else ["packed_row"]  # coded in 12 bits where it can
        saved = "coded_row" in want  # the coded weights spare a decode step their 16-bit size less their own
        if saved:
            assert x["weights_read_bytes_per_token"] < roofline.weights_read_per_token(d, p)
        if p == "nf4":  # its 4-bit linears and its int8 head
            want += ["gemv_4bit_row"] if kernels.gemv_4bit_row() and qlinear.cpu_has_bnb_kernel() else []
            want += ["int8_row"] if kernels.int8_row() is not None and qlinear.cpu_has_int8_mm() else []
        assert x["native_kernels"] == want, p
        assert x["decode_bytes_per_token"] == x["weights_read_bytes_per_token"] + roofline.kv_read_per_token(d, 93)
        if not saved:
            assert x["weights_read_bytes_per_token"] == roofline.weights_read_per_token(d, p, int8_head=p == "nf4")
        assert x["decode_roofline_fraction"] == pytest.approx(
            x["decode_tokens_per_s"]["median"] * x["decode_bytes_per_token"] / m["memory_bandwidth_bytes_per_s"])
        assert x["prefill_seq_flop_per_s"] == pytest.approx(
            roofline.prefill_flops(d, 96) * x["prefill_seq_tokens_per_s"]["median"] / 96)
        pm = x["peak_memory"]
        assert pm["rss_bytes"] > x["model_bytes"] and pm["rss_with_load_bytes"] >= pm["rss_bytes"]
        assert pm["cuda_allocated_bytes"] is None
    assert res["bf16"]["source"] == "checkpoint" and res["bf16"]["quantized_linears"] == 0
    # not in the store: quantized in memory, and said so
    assert "quantized in memory" in res["nf4"]["source"] and res["nf4"]["quantized_linears"] == 4 * 7
    assert "nf4 is not in the store" in r.stderr
    assert res["nf4"]["model_bytes"] < res["bf16"]["model_bytes"]

    comp = rec["comparison"]
    assert comp["file"] == str(earlier)
    bf16 = {c["metric"]: c for c in comp["changes"] if c["precision"] == "bf16"}
    assert bf16["decode_tokens_per_s"]["before"] == 1.0
    assert bf16["decode_tokens_per_s"]["after"] == res["bf16"]["decode_tokens_per_s"]["median"]
    assert "fp32: not in this run" in comp["differences"] and "nf4: not in the earlier record" in comp["differences"]
    # the human side: a table and the comparison on stderr
    assert "decode@96" in r.stderr and "change against" in r.stderr


def test_quantize_in_memory_replaces_the_linears_forward_uses(tiny):
    """quantize_in_memory takes the checkpoint's own layout, quantizes every linear, then fuses the quantized ones
    as load_model does for a quantized checkpoint: forward runs only quantized modules; a fused model is refused."""
    import pytest
    import torch

    from cohere_cli.weights.checkpoint import load_model
    from cohere_cli.weights.qlinear import QuantLinear4bit, QuantLinear8bit, quantized_modules

    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    ref = load_model(tiny, dtype="bfloat16").model
    with torch.inference_mode():
        want = ref(ids)
    with pytest.raises(ValueError, match="inference=False"):
        bench_child.quantize_in_memory(ref, "int8")
    for precision in ("int8", "nf4"):
        m = load_model(tiny, dtype="bfloat16", inference=False).model
        assert bench_child.quantize_in_memory(m, precision) == 4 * 7 == len(quantized_modules(m))
        # + in_proj (q, k, v, gate, up) per layer, + the int8 head a quantized checkpoint runs on CPU
        assert len(quantized_modules(m, fused=True)) == 4 * 8 + 1
        kind = QuantLinear8bit if precision == "int8" else QuantLinear4bit
        for layer in m.model.layers:  # forward's fused modules are quantized too
            assert type(layer.in_proj) is kind and layer.in_proj.out_features == 2 * 160 + 4 * 16 * 2
        assert type(m.lm_head) is QuantLinear8bit and m.lm_head.out_features == m.config.vocab_size
        with torch.inference_mode():
            got = m(ids)
        err = ((got - want).norm() / want.norm()).item()
        assert 0 < err < 0.6, (precision, err)  # quantized (not identical), still the same model (unrelated: ~1.4)
        assert bench_child.module_bytes(m) < bench_child.module_bytes(ref)
