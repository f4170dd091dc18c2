"""Every matmul path the model core can take, per layer shape of the 213M benchmark model, at 1 row (decode) and a
few rows, with weights cycled through enough copies (~300 MB) that they come from memory, not cache.

    python benchmarks/gemv_paths.py [--threads 2] [--rows 1,8,512] [--model 213m|1.2b]

(--model 1.2b: the fused shapes of benchmarks/vs_llamacpp.py's 1.25B Cohere2, its head as one 128 MiB chunk.)

Paths: plain F.linear (bf16, fp32); the same weights packed for oneDNN (weights/packed.pack_weight) and, at one row,
our kernel on that packed buffer (kernels.packed_row, what RowKernelLinear runs for decode); int8 weight-only
(torch._weight_int8pack_mm, what QuantLinear8bit runs for decode); bitsandbytes LLM.int8() (threshold 6, what it
runs for more rows); bitsandbytes' fused nf4 kernel through its registered op and called directly
(qlinear.gemv_4bit_cpu). Prints ms per call and GB/s of weight bytes read. The choices in model.py and quant.py cite
these figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"qkv": (1536, 1024), "o": (1024, 1024), "gate_up": (5632, 1024), "down": (1024, 2816),
          "lm_head": (32000, 1024)}
SHAPES_1B = {"in_proj": (19456, 2048), "o": (2048, 2048), "down": (2048, 8192), "lm_head": (32768, 2048)}


def bench(f, n: int) -> float:
    for _ in range(3):
        f()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,8,512")
    ap.add_argument("--model", default="213m", choices=["213m", "1.2b"])
    ap.add_argument("--mb", type=int, default=300, help="bytes of copies per path, so weights come from memory")
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from cohere_cli.weights import qlinear
    from cohere_cli.weights import quant
    from cohere_cli.model import linear
    from cohere_cli.weights import kernels
    from cohere_cli.weights.packed import pack_weight

    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads; ms per call (GB/s of weight bytes)")
    for rows in [int(r) for r in a.rows.split(",")]:
        for name, (n, k) in (SHAPES if a.model == "213m" else SHAPES_1B).items():
            copies = max(2, a.mb * 10**6 // (n * k * 2))
            ws = [torch.randn(n, k).bfloat16() for _ in range(copies)]
            x = torch.randn(rows, k).bfloat16()
            reps = 20 if rows == 1 else 3
            it = iter(range(10**9))
            res = {}

            def run(label, f, nbytes):
                ms = bench(f, reps)
                res[label] = f"{ms:.3f} ({nbytes / ms / 1e6:.0f})"

            run("bf16 F.linear", lambda: F.linear(x, ws[next(it) % copies]), n * k * 2)
            packed = [pack_weight(w) for w in ws]
            run("bf16 packed", lambda: linear(x, packed[next(it) % copies]), n * k * 2)
            kp = kernels.packed_row_layout(ws[0], packed[0]) if rows == 1 else None
            if kp is not None:
                row = kernels.packed_row()
                ptrs = [row.data_ptr(p) for p in packed]
                run("bf16 row kernel", lambda: row(x, ptrs[next(it) % copies], n, k, kp), n * k * 2)
            packed = None
            if rows <= 8:
                w32 = [w.float() for w in ws[: max(2, copies // 2)]]
                c32 = len(w32)
                run("fp32 F.linear", lambda: F.linear(x.float(), w32[next(it) % c32]), n * k * 4)
                p32 = [pack_weight(w) for w in w32]
                run("fp32 packed", lambda: linear(x.float(), p32[next(it) % c32]), n * k * 4)
                w32 = p32 = None
            if name != "lm_head":  # the head is never quantized (transformers' bitsandbytes integration)
                i8 = [qlinear.QuantLinear8bit.from_stored(quant.quantize_weight(w, quant.QuantSpec(bits=8)), k, n)
                      for w in ws[: max(2, copies // 2)]]
                c8 = len(i8)
                for path in ("woq", "kernel"):
                    for m in i8:
                        qlinear.force_path(m, path)
                    label = "int8 weight-only" if path == "woq" else "bnb int8 t=6"
                    with torch.no_grad():
                        run(label, lambda: i8[next(it) % c8](x), n * k)
                i8 = None
                q4 = [qlinear.QuantLinear4bit.from_stored(quant.quantize_weight(w, quant.QuantSpec(bits=4)), k, n)
                      for w in ws]
                if q4[0].cpu_kernel and rows <= 8:
                    run("nf4 bnb op", lambda: (lambda m: torch.ops.bitsandbytes.gemv_4bit.default(
                        x, m.packed, [n, k], m.absmax_t, m.code, m.blocksize))(q4[next(it) % copies]), n * k // 2)
                    run("nf4 direct", lambda: (lambda m: qlinear.gemv_4bit_cpu(
                        x, m.packed, m.absmax_t, m.code, "nf4", m.blocksize, n))(q4[next(it) % copies]), n * k // 2)
                q4 = None
            print(f"rows {rows:4d} {name:8s} " + "  ".join(f"{k_}: {v}" for k_, v in res.items()), flush=True)
            ws = None


if __name__ == "__main__":
    main()
