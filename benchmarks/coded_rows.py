"""Coded bf16 weights (weights/coded.py) against the packed 16-bit ones they replace, per row count, side by side:
oneDNN on the packed weight (what an uncoded bf16 model runs for several rows), packed_row.c at one row, and the
coded kernels (gemm_coded_bf16: each row its one-row bits; decode into a packed buffer + oneDNN, what CPUs with AMX
run for many rows). Weights cycled through enough copies (~6 x the shape) to come from memory, the median of 5.

    python benchmarks/coded_rows.py [--threads 2] [--rows 1,2,4,8,16,64,128,512] [--shape 2048x8192]

Prints ms per product, and coded / packed ratios (below 1: coded faster). The row thresholds in weights/coded.py
cite these figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,8,16,64,128,512")
    ap.add_argument("--shape", default="2048x8192", help="N x K (outputs x inputs): the 1.25B model's down_proj")
    ap.add_argument("--copies", type=int, default=6)
    a = ap.parse_args()

    import torch

    from cohere_cli.model import Linear, linear
    from cohere_cli.weights import coded
    from cohere_cli.weights.packed import RowKernelLinear, pack_linear

    torch.set_num_threads(a.threads)
    n, k = (int(v) for v in a.shape.split("x"))
    if coded.coded_row() is None:
        raise SystemExit("the coded kernel is not available here (it needs AVX512-BF16, VBMI, VBMI2 and a C compiler)")

    def make(code: bool):
        out = []
        for i in range(a.copies):
            w = (torch.randn(n, k, generator=torch.Generator().manual_seed(i)) * 0.02).bfloat16()
            lin = Linear(k, n, bias=False)
            lin.weight = torch.nn.Parameter(w, requires_grad=False)
            pack_linear(lin)
            if type(lin) is not RowKernelLinear or (code and not coded.code_linear(lin)):
                raise SystemExit("this shape is not packed for the row kernel here")
            out.append(lin)
        return out

    packed, codes = make(False), make(True)
    scratch = coded.Scratch(make(False)[0].weight)

    def via_scratch(lin, x):
        coded_row = lin.kernel
        coded_row.decode_into(lin.coded, scratch.raw)
        return linear(x, scratch.weight)

    def ms(f, mods, x) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for m in mods:
                f(m, x)
            times.append((time.perf_counter() - t) / len(mods))
        return statistics.median(times) * 1e3

    print(f"{n} x {k} bf16, {a.threads} threads, {a.copies} copies of each ({n * k * 2 * a.copies >> 20} MB packed)")
    print("| rows | packed: oneDNN | packed: packed_row.c | coded: gemm_coded_bf16 | coded: decode + oneDNN | "
          "gemm / oneDNN |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for rows in (int(r) for r in a.rows.split(",")):
            x = torch.randn(rows, k).bfloat16()
            one = ms(lambda m, x: linear(x, m.weight), packed, x)
            row = ms(lambda m, x: m(x), packed, x) if rows == 1 else None
            gemm = ms(lambda m, x: m(x), codes, x)
            dec = ms(via_scratch, codes, x)
            print(f"| {rows} | {one:.2f} ms | {f'{row:.2f} ms' if row else '-'} | {gemm:.2f} ms | {dec:.2f} ms | "
                  f"{gemm / one:.2f} |")


if __name__ == "__main__":
    main()
