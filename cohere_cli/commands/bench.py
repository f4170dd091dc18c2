"""`cohere bench [MODEL]`: prefill, time to first token, decode, memory, and how close decode is to the memory
bandwidth roofline, per precision. A rich table goes to stderr; `--json` prints one record on stdout;
`--compare-to FILE` prints the change against an earlier record (and adds it to the record as `comparison`).
The table splits into as many as the terminal's width needs (figures are never cut to "…"); a figure whose repeats
spread above ±25% (roofline.NOISY_SPREAD) is marked "!", and one warning line says the machine was noisy and to rerun
with more --repeat.

The record (schema "cohere-cli.bench/1"), every figure in base units (bytes, seconds, tokens/s, FLOP/s):

    schema, created_at
    versions   {cohere_cli, torch, bitsandbytes, cuda, python, platform}
    machine    {device, cpu, cpu_count, gpu, threads, memory_bandwidth_bytes_per_s, bandwidth_probe,
                device_peak_bandwidth_bytes_per_s, env {OMP_NUM_THREADS, OMP_WAIT_POLICY, ...: those set}}
    model      {name, path, revision, parent, architecture, model_type, parameters, context, hidden, layers, heads,
                kv_heads, head_dim, intermediate, vocab, sliding_window, tied_embeddings}
    settings   {seq, gen, repeat, warmup, prefill_short, precisions, threads, device, decode_positions,
                decode_mean_context, prefill_chunk}
    results    one per precision:
               {precision, source, compute_dtype, head ("int8" or "float": how the output head ran),
                native_kernels (those of cohere_cli/weights/kernels it ran: "decode", "block_step", "packed_row",
                "coded_row", "gemv_4bit_row", "int8_row"),
                threads, load_s, quantized_linears, model_bytes, kv_cache_bytes,
                weights_read_bytes_per_token, kv_read_bytes_per_token, decode_bytes_per_token,
                prefill_512_tokens_per_s, prefill_seq_tokens_per_s, ttft_s, decode_tokens_per_s   <- each a STAT
                decode_roofline_tokens_per_s, decode_roofline_fraction, decode_device_peak_fraction,
                prefill_512_flops, prefill_seq_flops, prefill_512_flop_per_s, prefill_seq_flop_per_s,
                decode_flops_per_token,
                peak_memory {rss_bytes, rss_with_load_bytes, rss_includes_load, cuda_allocated_bytes,
                             cuda_reserved_bytes}}
               STAT = {median, min, max, spread ((max-min)/median), samples}
    with --endpoint URL (an OpenAI-compatible server, cohere_cli.bench.remote): the same sections, machine about
    this client (+ endpoint), and results one per concurrency level:
               {precision: "remote", concurrency, requests, errors, error_messages, prompt_tokens, generation_tokens,
                ttft_s (a STAT + p90), decode_tokens_per_s (per request, a STAT), aggregate_tokens_per_s, wall_s}
    comparison (with --compare-to) {file, baseline {created_at, model, settings, machine}, differences [text],
                changes [{precision, metric, before, after, change (after/before - 1), better (bool)}]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from cohere_cli.bench import roofline
from cohere_cli.bench import run as bench
from cohere_cli.store import sizes
from cohere_cli.ui.console import err, info, warn, shown
from cohere_cli.errors import UsageError

# (key in a result, label, +1 when higher is better / -1 when lower is better)
COMPARED = (
    ("prefill_512_tokens_per_s", "prefill 512 tok/s", +1),
    ("prefill_seq_tokens_per_s", "prefill seq tok/s", +1),
    ("ttft_s", "time to first token s", -1),
    ("decode_tokens_per_s", "decode tok/s", +1),
    ("decode_roofline_fraction", "decode / roofline", +1),
    ("peak_memory.rss_bytes", "peak RSS bytes", -1),
    ("peak_memory.cuda_allocated_bytes", "peak CUDA allocated bytes", -1),
    ("model_bytes", "model bytes", -1),
    ("kv_cache_bytes", "KV cache bytes", -1),
)


def run_bench_command(model: str, *, seq: int, gen: int, precision: str | None, repeat: int,
                      threads: int | None, device: str, json_out: bool, compare_to: Path | None) -> dict:
    baseline = load_record(compare_to) if compare_to is not None else None
    precisions = bench.parse_precisions(precision)

    def announce(plans):
        info(f"bench {model}: seq {seq}, gen {gen}, {repeat} run(s) after a warm-up, precisions "
             f"{', '.join(p.precision for p in plans)}")
        for p in plans:
            if p.mode == "quantize":
                warn(f"{p.precision} is not in the store: {p.source} (each precision runs in its own process)")

    record = bench.run_bench(model, seq=seq, gen=gen, precisions=precisions, repeat=repeat, threads=threads,
                             device=device, on_plan=announce)
    print_table(record)
    return finish_record(record, baseline, compare_to, json_out)


def finish_record(record: dict, baseline: dict | None, compare_to, json_out: bool) -> dict:
    """The common end of a local or remote run: the change against --compare-to, then --json on stdout."""
    if baseline is not None:
        record["comparison"] = compare_records(baseline, record, str(compare_to))
        print_comparison(record["comparison"])
    if json_out:
        print(json.dumps(record, indent=2))
    return record


# ---- records --------------------------------------------------------------------------------------------------------
def load_record(path: Path) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--compare-to {path}: no such file (write one with `cohere bench --json > FILE`)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--compare-to {path} is not a JSON bench record ({e})") from None
    if not isinstance(rec, dict) or not str(rec.get("schema", "")).startswith("cohere-cli.bench/") \
            or not isinstance(rec.get("results"), list):
        raise UsageError(f"--compare-to {path} is not a `cohere bench --json` record (no cohere-cli.bench schema)")
    return rec


def figure(result: dict, key: str):
    """A result's value for `key` ("a.b" for nested); the median of a STAT; None when absent."""
    v = result
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if isinstance(v, dict):
        v = v.get("median")
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def compare_records(old: dict, new: dict, file: str = "") -> dict:
    """Per precision present in both records, each compared figure: before, after, change = after/before - 1,
    and whether it got better. `differences` names settings, machine, model and versions that changed (a change
    there explains a difference in speed better than the code does)."""
    differences = []

    def diff(section: str, keys):
        a, b = old.get(section) or {}, new.get(section) or {}
        for k in keys:
            if a.get(k) != b.get(k):
                differences.append(f"{section}.{k}: {a.get(k)} -> {b.get(k)}")

    diff("settings", ("seq", "gen", "repeat", "threads", "device", "prefill_short"))
    diff("machine", ("cpu", "gpu", "cpu_count", "env"))
    diff("model", ("name", "revision", "parameters"))
    diff("versions", ("cohere_cli", "torch", "bitsandbytes", "cuda"))
    before = {r.get("precision"): r for r in old.get("results", []) if isinstance(r, dict)}
    changes = []
    for r in new.get("results", []):
        o = before.get(r["precision"])
        if o is None:
            differences.append(f"{r['precision']}: not in the earlier record")
            continue
        for key, label, sign in COMPARED:
            a, b = figure(o, key), figure(r, key)
            if a is None or b is None or a == 0:
                continue
            ch = b / a - 1
            changes.append({"precision": r["precision"], "metric": key, "label": label, "before": a, "after": b,
                            "change": ch, "better": ch * sign > 0})
    for p in before:
        if p not in {r["precision"] for r in new.get("results", [])}:
            differences.append(f"{p}: not in this run")
    return {"file": file,
            "baseline": {k: old.get(k) for k in ("created_at", "model", "settings", "machine")},
            "differences": differences, "changes": changes}


# ---- printing -------------------------------------------------------------------------------------------------------
NOISE_MARK = "!"  # after a figure whose repeats spread more than roofline.NOISY_SPREAD


def _num(x: float) -> str:
    """At least 3 significant digits, every digit of the integer part: 2741, 42.8, 3.14, 0.052."""
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3g}"


def _stat(s: dict | None, scale: float = 1.0, noisy: bool = False) -> str:
    """A STAT's median (its unit goes in the column's header), ± half the range relative to the median when there
    were several samples, and the noise mark."""
    if not s or s.get("median") is None:
        return "-"
    text = _num(s["median"] * scale)
    if len(s.get("samples", [])) > 1:
        text += f" [dim]±{s['spread'] * 50:.0f}%[/dim]"
    if noisy:
        text += f"[bold yellow]{NOISE_MARK}[/bold yellow]"
    return text


def _flops(x: float | None) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= div:
            return f"{x / div:.3g} {unit}FLOP/s"
    return f"{x:.3g} FLOP/s"


def _console():
    """stderr: the terminal's width; not a terminal (a log file, a CI job), $COLUMNS when set, else as wide as any
    table needs."""
    from rich.console import Console

    if err.is_terminal:
        return err
    cols = os.environ.get("COLUMNS", "")
    return Console(stderr=True, highlight=False, width=int(cols) if cols.isdigit() and int(cols) > 0 else 180)


def _print_fitted(headers: list[str], rows: list[list[str]], left: int = 1) -> None:
    """Print a table as several, each as wide as the console allows, repeating the first column (what a row is):
    every figure whole, never cut to "…". Columns keep their order; the first `left` are left-aligned. A column
    wider than the console alone wraps (at spaces first) rather than being cut."""
    from rich.table import Table
    from rich.text import Text

    console = _console()

    def width(i: int) -> int:
        cells = [Text.from_markup(r[i]).cell_len for r in rows]
        return max([*(len(line) for line in headers[i].split("\n")), *cells])

    groups, used = [[]], width(0)
    for i in range(1, len(headers)):
        w = width(i) + 2  # two spaces between columns
        if groups[-1] and used + w > console.width:
            groups.append([])
            used = width(0)
        groups[-1].append(i)
        used += w
    for n, group in enumerate(groups):
        t = Table(box=None, pad_edge=False, header_style="bold")
        for i in (0, *group):
            t.add_column(headers[i], justify="left" if i < left else "right", overflow="fold")
        for r in rows:
            t.add_row(*(r[i] for i in (0, *group)))
        if n:
            console.print()
        console.print(t)


def print_table(record: dict) -> None:
    m, s, mod = record["machine"], record["settings"], record["model"]
    bw = m["memory_bandwidth_bytes_per_s"]
    where = m["gpu"] or m["cpu"]
    peak = m.get("device_peak_bandwidth_bytes_per_s")
    peak_txt = f", device peak {peak / 1e9:.0f} GB/s" if peak else ""
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    err.print(f"[bold]{shown(mod['name'])}[/bold] ({mod['model_type']}, {sizes.human_params(mod['parameters'])} "
              f"parameters, context {mod['context']}) on {shown(str(where))}, {threads}; "
              f"memory bandwidth {bw / 1e9:.1f} GB/s measured{peak_txt}", soft_wrap=True)
    seq, short = s["seq"], s["prefill_short"]
    noisy_list = bench.noisy_figures(record)
    noisy = set(noisy_list)
    both = short != seq  # at --seq 512 or less the two prefills are one measurement
    headers = ["precision", *([f"prefill {short}\ntok/s"] if both else []), f"prefill {seq}\ntok/s", "TTFT\nms",
               f"decode@{seq}\ntok/s", "roofline\ntok/s", "of\nroofline", f"prefill {seq}\ncompute", "model",
               f"KV@{seq}", "peak\nmemory"]
    rows = []
    for r in record["results"]:
        pm, p = r["peak_memory"], r["precision"]
        if pm.get("cuda_allocated_bytes") is not None:
            mem = f"{sizes.human_bytes(pm['cuda_allocated_bytes'])} / {sizes.human_bytes(pm['cuda_reserved_bytes'])}"
        else:
            mem = sizes.human_bytes(pm["rss_bytes"])

        def stat(key, scale=1.0):
            return _stat(r[key], scale, (p, key) in noisy)

        rows.append([
            shown(p), *([stat("prefill_512_tokens_per_s")] if both else []), stat("prefill_seq_tokens_per_s"),
            stat("ttft_s", 1000), stat("decode_tokens_per_s"), _num(r["decode_roofline_tokens_per_s"]),
            f"{r['decode_roofline_fraction'] * 100:.0f}%", _flops(r["prefill_seq_flop_per_s"]),
            sizes.human_bytes(r["model_bytes"]), sizes.human_bytes(r["kv_cache_bytes"]), mem,
        ])
    _print_fitted(headers, rows)
    mem_kind = "CUDA allocated / reserved" if record["results"] and \
        record["results"][0]["peak_memory"].get("cuda_allocated_bytes") is not None else "peak RSS while running"
    info(f"medians of {s['repeat']} run(s) after a warm-up, ± half the range; decode at positions "
         f"{s['decode_positions'][0]}..{s['decode_positions'][1]}; roofline = bandwidth / (weights + KV read per "
         f"token); peak memory: {mem_kind} (each precision in its own process)")
    for r in record["results"]:
        if r["source"] != "checkpoint":
            info(f"{r['precision']}: {r['source']}")
    if noisy:
        label = {"prefill_512_tokens_per_s": f"prefill {short}", "prefill_seq_tokens_per_s": f"prefill {seq}",
                 "ttft_s": "TTFT", "decode_tokens_per_s": f"decode@{seq}"}
        warn(noise_warning(list(dict.fromkeys(f"{p} {label[k]}" for p, k in noisy_list)), s["repeat"]))


def noise_warning(figures: list[str], repeat: int) -> str:
    """The one line under a table with noise marks: which figures, why, and what to do."""
    return (f"{NOISE_MARK} marks a spread above ±{roofline.NOISY_SPREAD * 50:.0f}% ({', '.join(figures)}): the "
            f"machine was busy or noisy while it ran, so those medians are rough; rerun on an idle machine with "
            f"--repeat {max(10, 2 * repeat)}")


def print_comparison(comp: dict) -> None:
    err.print(f"[bold]change against {shown(comp['file'])}[/bold] "
              f"({shown(str((comp['baseline'] or {}).get('created_at')))})", soft_wrap=True)
    for d in comp["differences"]:
        warn(f"differs: {d}")
    rows = []
    for c in comp["changes"]:
        big = abs(c["change"]) >= 0.05
        color = ("green" if c["better"] else "red") if big else "dim"
        fmt = _human if "bytes" in c["metric"] else _num
        rows.append([shown(c["precision"]), c["label"], fmt(c["before"]), fmt(c["after"]),
                     f"[{color}]{c['change'] * 100:+.1f}%[/{color}]"])
    _print_fitted(["precision", "figure", "before", "after", "change"], rows, left=2)


def _human(x: float) -> str:
    return sizes.human_bytes(x)


# ---- --endpoint: an OpenAI-compatible server (cohere_cli.bench.remote) ----------------------------------------------
def run_remote_bench_command(model: str | None, *, endpoint, seq: int, gen: int, concurrency: str, json_out: bool,
                             compare_to: Path | None) -> dict:
    from cohere_cli.bench import remote as remote_bench

    levels = remote_bench.parse_concurrency(concurrency)
    baseline = load_record(compare_to) if compare_to is not None else None
    info(f"bench {endpoint.url}: prompt ~{seq} tokens, {gen} generated per request, concurrency "
         f"{', '.join(map(str, levels))}")
    record = remote_bench.run_remote_bench(
        endpoint, model, seq=seq, gen=gen, concurrency=levels,
        on_level=lambda c, n: info(f"concurrency {c}: {n} requests"))
    print_remote_table(record)
    return finish_record(record, baseline, compare_to, json_out)


def print_remote_table(record: dict) -> None:
    s, mod = record["settings"], record["model"]
    err.print(f"[bold]{shown(str(mod['name']))}[/bold] at {shown(s['endpoint'])}: prompt ~{s['seq']} tokens, "
              f"{s['gen']} generated per request", soft_wrap=True)
    rows = []
    for r in record["results"]:
        tt = r["ttft_s"]
        rows.append([str(r["concurrency"]), str(r["requests"]), str(r["errors"]),
                     "-" if r["prompt_tokens"] is None else f"{r['prompt_tokens']:.0f}", _stat(tt, 1000),
                     "-" if tt.get("p90") is None else _num(tt["p90"] * 1000), _stat(r["decode_tokens_per_s"]),
                     _num(r["aggregate_tokens_per_s"])])
    _print_fitted(["concurrency", "requests", "errors", "prompt\ntokens", "TTFT\nmedian ms", "TTFT\np90 ms",
                   "decode/request\ntok/s", "aggregate\ntok/s"], rows, left=0)
    info("TTFT and decode: medians over the requests, ± half the range; aggregate = all generated tokens / wall time "
         "of the level")
    for r in record["results"]:
        for m in r["error_messages"]:
            warn(f"concurrency {r['concurrency']}: {m}")
