"""CPU matmul cost of a quantized linear layer per path and row count: what cohere_cli/weights/quant.py's per-shape choice
(qlinear.kernel_max_rows) rests on.

    python benchmarks/quant_paths.py [--shape 4096x4096] [--rows 1,2,4,8,16,32,64,512] [--threads 2] [--reps 7]
                                     [--runs 1]

Paths (all through cohere_cli.weights.quant's modules, i.e. the code the model runs):
  bf16 / fp32      F.linear on the float weight (the unquantized baseline)
  nf4 kernel       bitsandbytes' fused CPU kernel (gemv_4bit, AVX512-BF16, weight repacked for it)
  nf4 deq+gemm     repack to the standard layout, bitsandbytes' dequantize_4bit to bf16, one bf16 GEMM
  int8 kernel      bitsandbytes LLM.int8(): activations to int8 per row, torch._int_mm, rescale (threshold 0 / 6)
  int8 deq+gemm    int8_vectorwise_dequant to bf16, one bf16 GEMM
Times are the best of --reps runs (ms) after two warm-ups, each run on the next of several weight copies (>= 256 MB of
bf16 in all) so that weights come from memory as in a real model, not from the last-level cache. Input activations are bf16 (what the model core computes in on this CPU).

Results on the development machine (AMD EPYC, AVX-512 + AVX512-BF16, no AMX, 2 threads, shared with other jobs;
4096x4096 weight) are in the closing note of issue #5 and in the module docstring of cohere_cli/weights/quant.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cohere_cli.weights import qlinear, qpath
from cohere_cli.weights import quant  # noqa: E402


def timed(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1000  # best of: other processes on a shared machine only ever add time


def build(w: torch.Tensor):
    n, k = w.shape
    s4 = quant.quantize_weight(w, quant.QuantSpec(bits=4, quant_type="nf4", double_quant=True))
    q4 = qlinear.QuantLinear4bit.from_stored(s4, k, n)
    s8 = quant.quantize_weight(w, quant.QuantSpec(bits=8))
    q8_0 = qlinear.QuantLinear8bit.from_stored(s8, k, n, threshold=0.0)
    q8_6 = qlinear.QuantLinear8bit.from_stored(s8, k, n, threshold=6.0)
    return q4, q8_0, q8_6


class Cycle:
    """Calls f on the next of several copies of the weights each time, so that (like in a model, where each layer
    has its own) the weights come from memory rather than from the last-level cache."""

    def __init__(self, fns):
        self.fns, self.i = fns, 0

    def __call__(self, x):
        self.i = (self.i + 1) % len(self.fns)
        return self.fns[self.i](x)


def forced(mod, kernel: bool):
    mod = copy_module(mod)
    mod.kernel_max_rows = qlinear.UNLIMITED if kernel else 0
    return mod


def copy_module(mod):
    import copy

    return copy.deepcopy(mod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="4096x4096", help="OUTxIN of the weight")
    ap.add_argument("--rows", default="1,2,4,8,16,32,64,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--copies", type=int, default=0, help="weight copies cycled through (default: 256 MB of bf16)")
    ap.add_argument("--runs", type=int, default=1, help="repeat the table, keep each cell's best (noisy machines)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n, k = (int(v) for v in a.shape.lower().split("x"))
    torch.manual_seed(0)
    w32 = torch.randn(n, k) * 0.02
    w16 = w32.bfloat16()
    q4, q8_0, q8_6 = build(w16)
    copies = a.copies or max(1, -(-(256 << 20) // (n * k * 2)))  # >= 256 MB of bf16 weights: 8x this L3
    print(f"# {n}x{k} weight ({copies} copies cycled), {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"cpu {torch.backends.cpu.get_cpu_capability()}, AMX: {qpath.cpu_has_amx()}, "
          f"bnb cpu kernel: {qlinear.cpu_has_bnb_kernel()}")
    with torch.inference_mode():
        unpack = min(timed(lambda: qlinear.unpack_from_cpu(q4.packed), a.reps) for _ in range(a.runs))
        dq4 = min(timed(lambda: q4.dequantize(torch.bfloat16), a.reps) for _ in range(a.runs))
        dq8 = min(timed(lambda: q8_0.dequantize(torch.bfloat16), a.reps) for _ in range(a.runs))
        print(f"# dequantize the whole weight to bf16: nf4 {dq4:.2f} ms (of which {unpack:.2f} ms byte shuffle from "
              f"the kernel layout), int8 {dq8:.2f} ms")
        w16s = [w16.clone() for _ in range(copies)]
        w32s = [w32.clone() for _ in range(copies)]
        paths = {
            "bf16": Cycle([lambda x, w=w: F.linear(x, w) for w in w16s]),
            "fp32": Cycle([lambda x, w=w: F.linear(x.float(), w) for w in w32s]),
            "nf4 kernel": Cycle([forced(q4, True) for _ in range(copies)]),
            "nf4 deq+gemm": Cycle([forced(q4, False) for _ in range(copies)]),
            "int8 kernel t=0": Cycle([forced(q8_0, True) for _ in range(copies)]),
            "int8 kernel t=6": Cycle([forced(q8_6, True) for _ in range(copies)]),
            "int8 deq+gemm": Cycle([forced(q8_0, False) for _ in range(copies)]),
        }
        rows = [int(r) for r in a.rows.split(",")]
        best = {m: [float("inf")] * len(paths) for m in rows}
        for run in range(a.runs):  # the whole table again; each cell keeps its best time over the runs
            for m in rows:
                x = torch.randn(m, k).bfloat16()
                reps = a.reps if m <= 64 else max(3, a.reps // 2)
                for j, f in enumerate(paths.values()):
                    best[m][j] = min(best[m][j], timed(lambda f=f: f(x), reps))
            print(f"# run {run + 1}/{a.runs} done", file=sys.stderr, flush=True)
        print("| rows | " + " | ".join(paths) + " |")
        print("|---" * (len(paths) + 1) + "|")
        for m in rows:
            print(f"| {m} | " + " | ".join(f"{t:.2f}" for t in best[m]) + " |", flush=True)


if __name__ == "__main__":
    main()
