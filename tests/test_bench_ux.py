"""Issue 18, `cohere bench` as a user reads it: the table fits the terminal with every figure whole (never "2741…" or
"preci…"), a spread too large to trust is marked and explained once (and never with a single run), and a precision
just quantized into the store is benched from it without a "not in the store" warning. Timing noise is never
relied on: the noise paths get their samples from the test; speed is not asserted."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cohere_cli.bench import roofline
from cohere_cli.bench import run as bench
from cohere_cli.cli import app


def whole(number: str, text: str) -> bool:
    """`number` appears in `text` as a whole figure (not a part of a longer one, not cut)."""
    return re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.…])", text) is not None


def table_lines(stderr: str) -> list[str]:
    """The table's lines: after the line naming the model and machine, before the legend."""
    lines = stderr.splitlines()
    start = next(i for i, l in enumerate(lines) if "memory bandwidth" in l) + 1
    end = next(i for i, l in enumerate(lines) if l.startswith("medians of"))
    return lines[start:end]


# ---- the statistics: when a spread is noise -------------------------------------------------------------------------
def test_noisy_spread_is_flagged_and_a_single_run_never_is():
    calm = roofline.summarize([40.0, 42.0, 41.0])
    loud = roofline.summarize([3.0, 42.8, 220.0])  # the "42.8 ±506%": (220 - 3) / 42.8 / 2 = 254%
    assert round(loud["spread"] * 50) == 254 and roofline.noisy(loud) and not roofline.noisy(calm)
    assert not roofline.noisy(roofline.summarize([42.8]))  # one run: no spread, nothing to say
    assert not roofline.noisy(roofline.summarize([])) and not roofline.noisy(None)
    edge = roofline.summarize([75.0, 100.0, 125.0])  # ±25% exactly: still a figure
    assert not roofline.noisy(edge) and roofline.noisy(roofline.summarize([74.0, 100.0, 125.0]))
    rec = {"results": [{"precision": "bf16", "decode_tokens_per_s": loud, "ttft_s": calm},
                       {"precision": "nf4", "decode_tokens_per_s": calm, "prefill_seq_tokens_per_s": loud}]}
    assert bench.noisy_figures(rec) == [("bf16", "decode_tokens_per_s"), ("nf4", "prefill_seq_tokens_per_s")]


# ---- the table, through the real command (the measurements handed in) -----------------------------------------------
def stat(*samples: float) -> dict:
    return roofline.summarize(list(samples))


def fake_record(repeat: int) -> dict:
    """A record as run_bench returns it, with figures as wide as a real 8192-token run's."""
    def result(p, prefill, ttft, decode, *, noisy_decode=False):
        decode = (3.0, decode, 220.0) if noisy_decode else (decode * 0.97, decode, decode * 1.02)
        pre = (prefill * 0.95, prefill, prefill * 1.04)
        tt = (ttft * 0.96, ttft, ttft * 1.05)
        if repeat == 1:
            pre, tt, decode = pre[1:2], tt[1:2], decode[1:2]
        return {"precision": p, "source": "checkpoint", "model_bytes": 16_200_000_000,
                "kv_cache_bytes": 1_073_741_824, "prefill_512_tokens_per_s": stat(*pre),
                "prefill_seq_tokens_per_s": stat(*(x * 0.9 for x in pre)), "ttft_s": stat(*tt),
                "decode_tokens_per_s": stat(*decode), "decode_roofline_tokens_per_s": 3210.57,
                "decode_roofline_fraction": decode[len(decode) // 2] / 3210.57, "prefill_seq_flop_per_s": 1.234e12,
                "peak_memory": {"rss_bytes": 17_500_000_000, "cuda_allocated_bytes": None}}

    return {
        "machine": {"memory_bandwidth_bytes_per_s": 26.4e9, "gpu": None, "cpu": "AMD EPYC 9654 96-Core Processor",
                    "device_peak_bandwidth_bytes_per_s": None, "threads": 96},
        "model": {"name": "command-r7b-12-2024", "model_type": "cohere2", "parameters": 8_030_000_000,
                  "context": 131072},
        "settings": {"seq": 8192, "gen": 128, "prefill_short": 512, "repeat": repeat, "decode_positions": [8064, 8190]},
        "results": [result("bf16", 12345.6, 0.0413, 2741.3), result("int8", 9876.4, 0.0529, 42.8, noisy_decode=True),
                    result("nf4", 11111.1, 0.0461, 1999.9)],
    }


def bench_cli(monkeypatch, columns: int, repeat: int = 3):
    monkeypatch.setattr(bench, "run_bench", lambda model, *, repeat, on_plan=None, **kw: fake_record(repeat))
    r = CliRunner().invoke(app, ["bench", "--repeat", str(repeat)], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stdout == ""  # the table is for humans: stderr
    return r.stderr


@pytest.mark.parametrize("columns", [80, 60])
def test_table_fits_the_terminal_with_every_figure_whole(monkeypatch, columns):
    err = bench_cli(monkeypatch, columns)
    assert "…" not in err
    table = table_lines(err)
    assert table and all(len(line) <= columns for line in table), "\n".join(table)
    text = "\n".join(table)
    # headers whole, units in them (once), not in every cell
    for header in ("precision", "decode@8192", "roofline", "TTFT", "prefill 512", "prefill 8192", "KV@8192"):
        assert header in text, header
    assert "tok/s" in text and text.count("tok/s") < 10
    # each figure whole: medians, spreads, the roofline, sizes
    for figure in ("12346", "11111", "9876", "8889", "10000", "41.3", "52.9", "46.1", "2741", "42.8", "2000", "3211",
                   "85%", "1.23 TFLOP/s", "16.2 GB", "1.07 GB", "17.5 GB", "±254%!"):
        assert whole(figure, text), (figure, text)
    assert all(text.count(p) >= 1 for p in ("bf16", "int8", "nf4"))


def test_a_noisy_figure_is_marked_and_explained_once(monkeypatch):
    err = bench_cli(monkeypatch, 80, repeat=3)
    assert whole("42.8", err) and "±254%!" in err  # the mark is on int8's decode only
    assert sum("!" in line for line in table_lines(err)) == 1
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert "int8 decode@8192" in warnings[0] and "busy or noisy" in warnings[0] and "--repeat 10" in warnings[0]


def test_a_single_run_has_no_spread_and_no_noise_warning(monkeypatch):
    err = bench_cli(monkeypatch, 80, repeat=1)
    assert "±" not in "\n".join(table_lines(err)) and "!" not in err and "warning:" not in err
    assert whole("42.8", err) and whole("2741", err)
