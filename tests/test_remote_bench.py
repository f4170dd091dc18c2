"""`cohere bench --endpoint URL`: a load generator against a real `transformers serve` (see openai_server.py), the
aggregation arithmetic, and a refused connection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cohere_cli.bench.remote import Sample, aggregate, parse_concurrency, percentile, requests_for
from openai_server import free_port

CLI_TIMEOUT = 180


def cohere(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cohere_cli", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)


def test_aggregation_arithmetic():
    samples = [Sample(start=0.0, end=2.0, ttft_s=0.5, decode_tokens_per_s=10.0, prompt_tokens=32, generation_tokens=16),
               Sample(start=0.5, end=3.0, ttft_s=1.0, decode_tokens_per_s=20.0, prompt_tokens=32, generation_tokens=16),
               Sample(start=1.0, end=4.0, ttft_s=1.5, decode_tokens_per_s=30.0, prompt_tokens=32, generation_tokens=8),
               Sample(start=1.0, end=1.5, error="boom")]
    r = aggregate(samples, 2)
    assert r["precision"] == "remote" and r["concurrency"] == 2
    assert r["requests"] == 4 and r["errors"] == 1 and r["error_messages"] == ["boom"]
    assert r["generation_tokens"] == 40 and r["wall_s"] == 4.0
    assert r["aggregate_tokens_per_s"] == pytest.approx(10.0)  # 40 tokens over 0 s .. 4 s
    assert r["ttft_s"]["median"] == 1.0 and r["ttft_s"]["min"] == 0.5 and r["ttft_s"]["max"] == 1.5
    assert r["ttft_s"]["p90"] == pytest.approx(1.4)
    assert r["decode_tokens_per_s"]["median"] == 20.0 and r["decode_tokens_per_s"]["spread"] == 1.0
    assert r["prompt_tokens"] == 32
    assert percentile([], 0.9) is None and percentile([3.0], 0.9) == 3.0
    assert requests_for(1) == 4 and requests_for(16) == 32
    assert parse_concurrency("1, 4,16,4") == [1, 4, 16]
    empty = aggregate([], 1)
    assert empty["aggregate_tokens_per_s"] == 0.0 and empty["ttft_s"]["median"] is None


def test_refused_connection_is_one_error_line():
    r = cohere("bench", "--endpoint", f"http://127.0.0.1:{free_port()}/v1", "--concurrency", "1", "--json")
    assert r.returncode != 0 and r.stdout == ""
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "connection refused" in errors[0], r.stderr


def test_bad_concurrency_is_a_usage_error():
    r = cohere("bench", "--endpoint", "http://127.0.0.1:1/v1", "--concurrency", "0,x")
    assert r.returncode != 0 and "--concurrency" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi", reason='the real server is `transformers serve`: pip install -e ".[test]"')
    pytest.importorskip("uvicorn", reason='the real server is `transformers serve`: pip install -e ".[test]"')
    from factory_checkpoint import make_checkpoint
    from openai_server import TransformersServe

    ckpt = make_checkpoint(tmp_path_factory.mktemp("served"))
    s = TransformersServe(ckpt, tmp_path_factory.mktemp("serve")).start()
    yield s
    s.stop()


@pytest.mark.slow
def test_bench_against_a_real_server(server):
    r = cohere("bench", "--endpoint", server.url, "--concurrency", "1,2", "--seq", "32", "--gen", "8", "--json")
    assert r.returncode == 0, r.stderr + server.log_tail()
    rec = json.loads(r.stdout)
    assert rec["schema"] == "cohere-cli.bench/1" and rec["created_at"]
    for section in ("versions", "machine", "model", "settings"):
        assert isinstance(rec[section], dict), section
    assert rec["versions"]["cohere_cli"] and rec["machine"]["endpoint"] == server.url
    assert rec["settings"]["seq"] == 32 and rec["settings"]["gen"] == 8 and rec["settings"]["concurrency"] == [1, 2]
    assert [x["concurrency"] for x in rec["results"]] == [1, 2]
    for res in rec["results"]:
        assert res["precision"] == "remote"
        assert res["requests"] == requests_for(res["concurrency"]) and res["errors"] == 0, res
        assert res["aggregate_tokens_per_s"] > 0
        assert res["generation_tokens"] == 8 * res["requests"]
        assert 24 <= res["prompt_tokens"] <= 40  # about --seq, as the server counted it
        for key in ("ttft_s", "decode_tokens_per_s"):
            stat = res[key]
            assert set(stat) >= {"median", "min", "max", "spread", "samples"}
            assert stat["median"] > 0 and len(stat["samples"]) == res["requests"]
        assert res["ttft_s"]["p90"] >= res["ttft_s"]["median"]
    assert "concurrency" in r.stderr and "aggregate" in r.stderr  # the table
