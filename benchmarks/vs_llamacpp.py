"""Our decode against llama.cpp's (llama-bench), same synthetic weights, threads and context, each engine a fresh
process per run.

    python benchmarks/vs_llamacpp.py [--shapes 213m,1.2b] [--precisions bf16,int8,nf4] [--contexts 512,4096]
                                     [--rounds 3] [--gen 64] [--threads 2] [--busy] [--cache DIR] [--json FILE]

1. llama.cpp, built once into --cache (default ~/.cache/cohere-cli-bench) from the llama-cpp-python 0.3.36 sdist
   (`pip download --no-binary :all:`; it vendors llama.cpp with its converter and gguf-py): cmake + ninja (pip
   installs them into this Python's environment when missing), Release, GGML_NATIVE, static, the two targets
   llama-bench and llama-quantize only, under `nice -n 19`. When the native build fails, or its llama-bench dies of
   a signal on the first model (a native build crashed on an AMX machine with gcc 12), it is rebuilt once with
   GGML_NATIVE=OFF and explicit AVX2/AVX512 flags (AMX off).
2. Checkpoints, built once into --cache: the 213M Cohere of benchmarks/vs_transformers.py (hidden 1024, 16 layers,
   GQA 16:4, vocab 32000) with the demo model's tokenizer beside it (serve_batch.model_folder), and a ~1.25B Cohere2
   with the real vocabulary size (hidden 2048, intermediate 8192, 12 layers, 16 heads / 4 KV heads, head_dim 128,
   vocab 256000, tied embeddings, sliding window 4096 with every 4th layer full attention), transformers' random
   init in bf16, the same demo tokenizer (llama.cpp's converter pads the vocabulary to 256000 with [PAD] tokens).
   Ours, int8 and nf4: written once by cohere_cli.weights.quantize.quantize_checkpoint with `cohere quantize`'s
   defaults (nf4: blocksize 64, double quantization, int8 head; int8: LLM.int8 threshold 6) and loaded from disk
   as a user's quantized model is (load_model), never quantized in memory.
   llama.cpp's: convert_hf_to_gguf.py --outtype bf16 (through a shim that, without editing its files, names the
   test tokenizer's pre-tokenizer `command-r` and gives Cohere2 configs the `rotary_pct` 1.0 that transformers 5
   no longer writes), then llama-quantize to q8_0, q4_0 and Q4_K_M. Every file is cached.
3. Pairs: our bf16 / its bf16, our int8 / its q8_0, our nf4 / its Q4_K_M (and its q4_0, shown beside nf4).
   Decode at batch 1 after `context` tokens: ours = this script's --worker in a fresh process (torch threads =
   --threads: load in bf16, warm up (16 tokens + 4), prefill `context` random tokens, --gen greedy tokens through
   stream_generate; tok/s = (gen-1) / time from the first token to the last); llama.cpp = `llama-bench -p 0 -n GEN
   -d CONTEXT -t THREADS -r 1 -o json` (avg_ts of its tg run after a depth-`context` cache; it warms up too).
   Per round every engine of every pair runs once per context, the engine order rotating between rounds; ratios
   are taken within a round, then the median over rounds.
4. Peak RSS: of each child process, from outside, over its whole life (loading included), os.wait4's ru_maxrss:
   the same way for both engines. Reported per precision and context: the largest over rounds.
5. --busy: each round runs twice, quiet and with one other process spinning on a core (`while True: pass`,
   started before and killed after); reported is each engine's and precision's busy / quiet decode speed per round
   (target >= 0.4x in every round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

LLAMA_CPP_PYTHON = "0.3.36"
TARGET_DECODE = 1.1  # ours / llama.cpp decode tok/s, per pair
TARGET_RSS = 1.2  # ours / llama.cpp peak RSS, at most
TARGET_BUSY = 0.4  # busy / quiet decode tok/s, at least, in every round
FA = {-1: "auto", 0: "off", 1: "on"}  # llama-bench's json flash_attn
PAIRS = {"bf16": ["bf16"], "int8": ["q8_0"], "nf4": ["Q4_K_M", "q4_0"]}  # ours -> llama.cpp's (first: the pair)
FALLBACK_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                  "-DGGML_BMI2=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
                  "-DGGML_AVX512_BF16=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- llama.cpp: source, build ---------------------------------------------------------------------------------------
class LlamaCpp:
    """The llama.cpp build under cache/llama.cpp: src/ (the sdist, extracted), build-<variant>/, bin-<variant>/."""

    def __init__(self, cache: Path):
        self.home = cache / "llama.cpp"
        self.sdist_dir = self.home / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
        self.src = self.sdist_dir / "vendor" / "llama.cpp"
        self.variant = None
        self.info: dict = {}
        self._smoked = False

    # source
    def fetch_source(self) -> None:
        if (self.sdist_dir / ".extracted").is_file():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        tgz = self.home / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        if not tgz.is_file():
            log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {self.home}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(self.home)], check=True)
        shutil.rmtree(self.sdist_dir, ignore_errors=True)
        with tarfile.open(tgz) as t:
            t.extractall(self.home / "src", filter="tar")
        (self.sdist_dir / ".extracted").write_text("ok\n")

    def commit(self) -> str:
        """The llama.cpp commit the sdist vendors, from its changelog (the vendored tree has no git metadata)."""
        try:
            for line in (self.sdist_dir / "CHANGELOG.md").read_text().splitlines():
                if "update llama.cpp to" in line:
                    return line.rsplit("@", 1)[-1].strip()
        except OSError:
            pass
        return "unknown"

    def bin(self, name: str) -> Path:
        return self.home / f"bin-{self.variant}" / name

    @staticmethod
    def _tools() -> dict[str, str]:
        """cmake and ninja: from PATH or this environment; pip-installed into it when missing."""
        where = Path(sys.executable).parent
        found = {t: shutil.which(t, path=str(where)) or shutil.which(t) for t in ("cmake", "ninja")}
        if not all(found.values()):
            log("installing cmake and ninja into this environment (pip)")
            subprocess.run([sys.executable, "-m", "pip", "install", "cmake", "ninja"], check=True)
            found = {t: shutil.which(t, path=str(where)) or shutil.which(t) for t in ("cmake", "ninja")}
        if not all(found.values()):
            raise SystemExit(f"cmake/ninja not found after installing them: {found}")
        return found

    def build(self, variant: str, force: bool = False) -> bool:
        """Build `variant` (native | fallback) unless its binaries are cached; False when the build failed."""
        out = self.home / f"bin-{variant}"
        if not force and all((out / n).is_file() for n in ("llama-bench", "llama-quantize", "build.json")):
            self.variant, self.info = variant, json.loads((out / "build.json").read_text())
            return True
        self.fetch_source()
        tools = self._tools()
        bdir = self.home / f"build-{variant}"
        shutil.rmtree(bdir, ignore_errors=True)
        flags = ["-DGGML_NATIVE=ON"] if variant == "native" else FALLBACK_FLAGS
        nice = ["nice", "-n", "19"]
        env = dict(os.environ, PATH=f"{Path(tools['ninja']).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        configure = [*nice, tools["cmake"], "-S", str(self.src), "-B", str(bdir), "-G", "Ninja",
                     f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}", "-DCMAKE_BUILD_TYPE=Release", *flags,
                     "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"]
        compile_ = [*nice, tools["cmake"], "--build", str(bdir), "--target", "llama-bench", "llama-quantize",
                    "-j", str(os.cpu_count() or 2)]
        log(f"building llama.cpp {self.commit()} ({variant}: {' '.join(flags)}) in {bdir}, under nice -n 19")
        t0 = time.perf_counter()
        logf = self.home / f"build-{variant}.log"
        with open(logf, "w") as lf:
            for cmd in (configure, compile_):
                lf.write("$ " + " ".join(cmd) + "\n")
                lf.flush()
                if subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env).returncode != 0:
                    log(f"llama.cpp {variant} build failed: see {logf}")
                    return False
        seconds = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for n in ("llama-bench", "llama-quantize"):
            shutil.copy2(bdir / "bin" / n, out / n)
        gcc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()
        info = {"variant": variant, "flags": flags, "seconds": round(seconds, 1), "commit": self.commit(),
                "llama_cpp_python": LLAMA_CPP_PYTHON, "compiler": gcc[0] if gcc else "?",
                "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        (out / "build.json").write_text(json.dumps(info, indent=1) + "\n")
        log(f"built llama.cpp ({variant}) in {seconds:.0f} s")
        self.variant, self.info = variant, info
        return True

    def ensure(self) -> None:
        """The cached build: native unless a fallback exists (made after the native one failed or crashed)."""
        if (self.home / "bin-fallback" / "build.json").is_file():
            self.build("fallback")
        elif not self.build("native"):
            self.fallback()

    def fallback(self) -> None:
        log("falling back to GGML_NATIVE=OFF with explicit AVX2/AVX512 flags")
        if not self.build("fallback"):
            raise SystemExit(f"the llama.cpp build failed twice: see {self.home}/build-*.log")

    def smoke(self, gguf: Path, threads: int) -> None:
        """One tiny llama-bench run per invocation: a native build that dies of a signal is replaced by the fallback."""
        if self._smoked:
            return
        cmd = [str(self.bin("llama-bench")), "-m", str(gguf), "-p", "0", "-n", "4", "-t", str(threads), "-r", "1",
               "-o", "json"]
        rc, out, err, _ = run_child(cmd)
        if rc < 0 and self.variant == "native":
            log(f"llama-bench ({self.variant} build) died of signal {-rc}:\n{err[-1500:]}")
            self.fallback()
            rc, out, err, _ = run_child([str(self.bin("llama-bench")), *cmd[1:]])
        if rc != 0:
            raise SystemExit(f"llama-bench fails on {gguf.name} (exit {rc}):\n{err[-3000:]}")
        self._smoked = True

    # models
    def convert(self, folder: Path, out: Path) -> None:
        """convert_hf_to_gguf.py --outtype bf16, run through a shim: its files stay as they are."""
        shim = (
            "import runpy, sys\n"
            f"sys.path[:0] = [{str(self.src)!r}, {str(self.src / 'gguf-py')!r}]\n"
            "import conversion.base as base, conversion.command_r as command_r\n"
            # our test tokenizers' pre-tokenizer hash is unknown to it (NotImplementedError): Command-R's
            "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'command-r'\n"
            # transformers 5 no longer writes rotary_pct (its default, 1.0: rope over the whole head)
            "_set = command_r.Cohere2Model.set_gguf_parameters\n"
            "def set_gguf_parameters(self):\n"
            "    self.hparams.setdefault('rotary_pct', 1.0)\n"
            "    _set(self)\n"
            "command_r.Cohere2Model.set_gguf_parameters = set_gguf_parameters\n"
            f"sys.argv = ['convert_hf_to_gguf.py', {str(folder)!r}, '--outtype', 'bf16', '--outfile', {str(out)!r}]\n"
            f"runpy.run_path({str(self.src / 'convert_hf_to_gguf.py')!r}, run_name='__main__')\n"
        )
        log(f"converting {folder.name} to {out.name} (convert_hf_to_gguf.py, bf16)")
        p = subprocess.run([sys.executable, "-c", shim], capture_output=True, text=True)
        if p.returncode != 0 or not out.is_file():
            raise SystemExit(f"convert_hf_to_gguf.py failed on {folder}:\n{p.stderr[-4000:]}")
        info = self.vocab_info(out)
        final = out.with_suffix(".gguf")  # out is the .tmp the caller renames
        final.with_name(final.name + ".vocab.json").write_text(json.dumps(info) + "\n")
        log(f"  converted: {info['tokens']} tokens in the vocabulary, {info['pad']} of them [PAD...] fillers, "
            f"{info['tensors']} tensors")

    def vocab_info(self, gguf: Path) -> dict:
        """What the converter wrote: the vocabulary's length (padded to vocab_size with [PAD<i>] tokens)."""
        code = (f"import sys, json; sys.path.insert(0, {str(self.src / 'gguf-py')!r}); import gguf\n"
                f"r = gguf.GGUFReader({str(gguf)!r})\n"
                "f = r.fields['tokenizer.ggml.tokens']\n"
                "toks = [bytes(f.parts[i]).decode('utf-8', 'replace') for i in f.data]\n"
                "print(json.dumps({'tokens': len(toks), 'pad': sum(t.startswith('[PAD') for t in toks),"
                " 'tensors': len(r.tensors)}))\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if p.returncode != 0:
            return {"tokens": None, "pad": None, "tensors": None, "error": p.stderr[-300:]}
        return json.loads(p.stdout)

    def quantize(self, src: Path, out: Path, qtype: str, threads: int) -> None:
        log(f"llama-quantize {src.name} -> {out.name} ({qtype})")
        p = subprocess.run([str(self.bin("llama-quantize")), str(src), str(out), qtype.upper(), str(threads)],
                           capture_output=True, text=True)
        if p.returncode != 0 or not out.is_file():
            raise SystemExit(f"llama-quantize {qtype} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


# ---- checkpoints ----------------------------------------------------------------------------------------------------
COHERE2_1B = dict(vocab_size=256000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=12,
                  num_attention_heads=16, num_key_value_heads=4, head_dim=128, max_position_embeddings=16384,
                  sliding_window=4096, tie_word_embeddings=True, bos_token_id=5, eos_token_id=6, pad_token_id=0,
                  layer_types=["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(12)])
SHAPES = {
    "213m": "213M Cohere (hidden 1024, 16 layers, GQA 16:4, intermediate 2816, vocab 32000, tied)",
    "1.2b": "1.25B Cohere2 (hidden 2048, 12 layers, GQA 16:4, head_dim 128, intermediate 8192, vocab 256000, tied, "
            "sliding window 4096 on 3 of every 4 layers)",
}


def build_cohere2_1b(cache: Path) -> Path:
    folder = cache / "cohere2-1.2b-bf16"
    if (folder / ".complete").is_file():
        return folder
    import torch
    from transformers import Cohere2Config, Cohere2ForCausalLM

    from serve_batch import DEMO, TOKENIZER_FILES

    log(f"building the 1.2B Cohere2 checkpoint in {folder} (once)")
    tmp = cache / "cohere2-1.2b-bf16.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    model = Cohere2ForCausalLM(Cohere2Config(**COHERE2_1B)).to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    del model
    for name in TOKENIZER_FILES:
        shutil.copy2(DEMO / name, tmp / name)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def float_checkpoint(shape: str, cache: Path) -> Path:
    if shape == "213m":
        from serve_batch import model_folder

        return model_folder(cache)  # vs_transformers' 213M checkpoint with the demo tokenizer (a converter needs one)
    return build_cohere2_1b(cache)


def our_checkpoint(parent: Path, precision: str) -> Path:
    """bf16: the parent; int8/nf4: quantize_checkpoint's output with `cohere quantize`'s defaults, written once."""
    if precision == "bf16":
        return parent
    from cohere_cli.weights.quant import QuantSpec
    from cohere_cli.weights.quantize import quantize_checkpoint

    folder = parent.parent / f"{parent.name}-{precision}"
    if (folder / ".complete").is_file():
        return folder
    spec = QuantSpec(bits=8) if precision == "int8" else QuantSpec(bits=4, quant_type=precision, blocksize=64,
                                                                      double_quant=True, head="int8")
    tmp = folder.parent / f"{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = quantize_checkpoint(parent, tmp, spec)
    log(f"quantized {parent.name} to {precision}: {r.parent_bytes / 1e6:.0f} -> {r.out_bytes / 1e6:.0f} MB in "
        f"{r.seconds:.0f} s")
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def gguf_files(llama: LlamaCpp, parent: Path, qtypes: list[str], threads: int) -> tuple[dict[str, Path], dict]:
    """({'bf16': ..., 'q8_0': ...}, vocabulary info): the converted file and its llama-quantize'd versions, each
    made once."""
    gdir = llama.home / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    out = {"bf16": gdir / f"{parent.name}-bf16.gguf"}
    if not out["bf16"].is_file():
        tmp = out["bf16"].with_suffix(".tmp")
        llama.convert(parent, tmp)
        tmp.rename(out["bf16"])
    side = out["bf16"].with_name(out["bf16"].name + ".vocab.json")
    if not side.is_file():
        side.write_text(json.dumps(llama.vocab_info(out["bf16"])) + "\n")
    vocab = json.loads(side.read_text())
    llama.smoke(out["bf16"], threads)
    for q in qtypes:
        if q == "bf16":
            continue
        out[q] = gdir / f"{parent.name}-{q}.gguf"
        if not out[q].is_file():
            tmp = out[q].with_suffix(".tmp")
            llama.quantize(out["bf16"], tmp, q, threads)
            tmp.rename(out[q])
    return {q: out[q] for q in qtypes}, vocab


# ---- running a child, measuring its peak RSS from outside ------------------------------------------------------------
def run_child(cmd: list[str], env: dict | None = None) -> tuple[int, str, str, int]:
    """(exit code or -signal, stdout, stderr, ru_maxrss in bytes): os.wait4 on the child, so the peak covers its
    whole life, loading included."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        out = p.stdout.read()
        p.stdout.close()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        err.seek(0)
        return p.returncode, out, err.read(), ru.ru_maxrss * 1024  # Linux: KiB




def run_ours(folder: Path, context: int, gen: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(folder), "--contexts", str(context), "--gen", str(gen),
           "--threads", str(threads)]
    rc, out, err, peak = run_child(cmd)
    if rc != 0:
        raise SystemExit(f"our worker failed on {folder.name} at context {context} (exit {rc}):\n{err[-3000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_rss"] = peak
    return r


def run_llama(llama: LlamaCpp, gguf: Path, context: int, gen: int, threads: int) -> dict:
    cmd = [str(llama.bin("llama-bench")), "-m", str(gguf), "-p", "0", "-n", str(gen), "-d", str(context),
           "-t", str(threads), "-r", "1", "-o", "json"]
    rc, out, err, peak = run_child(cmd)
    if rc != 0:
        raise SystemExit(f"llama-bench failed on {gguf.name} at depth {context} (exit {rc}):\n{err[-3000:]}")
    tests = [t for t in json.loads(out) if t.get("n_gen") == gen and t.get("n_depth", context) == context]
    assert len(tests) == 1, out
    t = tests[0]
    return {"decode_tps": float(t["avg_ts"]), "peak_rss": peak, "build_commit": t.get("build_commit"),
            "build_number": t.get("build_number"), "cpu_info": t.get("cpu_info"), "n_threads": t.get("n_threads"),
            "type_k": t.get("type_k"), "flash_attn": t.get("flash_attn"), "model_type": t.get("model_type"),
            "model_size": t.get("model_size"), "model_n_params": t.get("model_n_params"),
            "n_batch": t.get("n_batch"), "n_ubatch": t.get("n_ubatch"), "load_mode": t.get("load_mode"),
            "poll": t.get("poll"), "repack": t.get("repack")}


# ---- our worker: one model, one context, in a fresh process ----------------------------------------------------------
def worker(folder: Path, context: int, gen: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from cohere_cli.bench.child import NullTokenizer
    from cohere_cli.engine.generate import Session, stream_generate
    from cohere_cli.engine.sampling import SamplingParams
    from cohere_cli.weights.checkpoint import load_model

    t0 = time.perf_counter()
    model = load_model(folder, dtype="bfloat16").model  # as `cohere generate` loads it (bf16 compute)
    load_s = time.perf_counter() - t0
    vocab = min(model.config.vocab_size, 32000)
    g = torch.Generator().manual_seed(context)
    ids = torch.randint(7, vocab, (context,), generator=g).tolist()
    params = SamplingParams(temperature=0.0, seed=0)

    def run(prompt: list[int], n: int) -> tuple[float, float]:
        stamps = []
        t = time.perf_counter()
        session = Session(model, max_seq=len(prompt) + n)
        for r in stream_generate(model, NullTokenizer(), prompt, params, n, stop_ids=set(), session=session):
            if r.token is not None:
                stamps.append(time.perf_counter())
        assert len(stamps) == n, len(stamps)
        return stamps[0] - t, (n - 1) / (stamps[-1] - stamps[0])

    run(ids[:16], 4)  # warm-up (llama-bench warms up too): one short prefill, a few decode steps
    ttft, decode = run(ids, gen)
    print(json.dumps({"decode_tps": decode, "prefill_tps": context / ttft, "load_s": load_s, "context": context,
                      "gen": gen, "threads": torch.get_num_threads(), "torch": torch.__version__}))


# ---- the busy core --------------------------------------------------------------------------------------------------
class Spinner:
    """One other process keeping a core busy: `while True: pass`, started before and killed after."""

    def __enter__(self):
        self.p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()


# ---- system description ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    from cohere_cli.bench.roofline import cpu_name

    return cpu_name()


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                fl = line.split(":", 1)[1].split()
                return " ".join(f for f in fl if f.startswith(("avx512_bf16", "avx512_vnni", "amx")) or f in
                                ("avx2", "avx512f"))
    except OSError:
        pass
    return "?"


# ---- main -----------------------------------------------------------------------------------------------------------
def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def verdict(x: float | None, target: float, lower: bool = False) -> str:
    if x is None:
        return "-"
    ok = x <= target if lower else x >= target
    return f"{'<=' if lower else '>='} {target:g}x: {'holds' if ok else 'MISSES'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="213m,1.2b", help="213m, 1.2b")
    ap.add_argument("--precisions", default="bf16,int8,nf4", help="ours: bf16, int8, nf4")
    ap.add_argument("--contexts", default="512,4096", help="decode after this many tokens of context")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy", action="store_true", help="also run each round with one core kept busy")
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("COHERE_BENCH_CACHE") or "~/.cache/cohere-cli-bench").expanduser())
    ap.add_argument("--json", type=Path, default=None, help="write every measurement here")
    ap.add_argument("--build-only", action="store_true", help="build llama.cpp (once) and stop")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, int(a.contexts), a.gen, a.threads)

    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    precisions = [p.strip() for p in a.precisions.split(",") if p.strip()]
    contexts = [int(c) for c in a.contexts.split(",") if c.strip()]
    bad = [s for s in shapes if s not in SHAPES] + [p for p in precisions if p not in PAIRS]
    if bad or not shapes or not precisions or not contexts or a.gen < 2:
        ap.error(f"unknown shape/precision {bad}, or nothing to run (--gen must be >= 2)")
    a.cache.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    llama = LlamaCpp(a.cache)
    llama.ensure()
    if a.build_only:
        print(json.dumps(llama.info))
        return
    import torch

    qtypes = [q for p in precisions for q in PAIRS[p]]
    system = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "torch": torch.__version__,
              "python": platform.python_version(), "llama_cpp": llama.info, "threads": a.threads, "gen": a.gen,
              "rounds": a.rounds, "busy": a.busy, "loadavg_at_start": os.getloadavg(),
              "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                      if k in os.environ}}
    report = {"system": system, "shapes": {}}

    for shape in shapes:
        parent = float_checkpoint(shape, a.cache)
        ours = {p: our_checkpoint(parent, p) for p in precisions}
        ggufs, vocab = gguf_files(llama, parent, qtypes, a.threads)
        # runs: one per (context, engine); engines alternate ours / llama.cpp within a precision
        runs = [(c, p, eng) for c in contexts for p in precisions for eng in [("ours", p)] +
                [("llama", q) for q in PAIRS[p]]]
        results = []  # dicts: round, mode, context, precision, engine, label, decode_tps, peak_rss, ...
        for r in range(a.rounds):
            modes = ["quiet", "busy"] if a.busy else ["quiet"]
            for mode in modes:
                spinner = Spinner() if mode == "busy" else None
                if spinner:
                    spinner.__enter__()
                try:
                    for c in contexts:
                        for p in precisions:
                            engs = [e for (cc, pp, e) in runs if cc == c and pp == p]
                            k = r % len(engs)
                            for kind, label in engs[k:] + engs[:k]:  # the order rotates between rounds
                                t0 = time.perf_counter()
                                if kind == "ours":
                                    res = run_ours(ours[p], c, a.gen, a.threads)
                                else:
                                    res = run_llama(llama, ggufs[label], c, a.gen, a.threads)
                                res.update(round=r, mode=mode, context=c, precision=p, engine=kind, label=label,
                                           wall_s=time.perf_counter() - t0, loadavg=os.getloadavg()[0])
                                results.append(res)
                                log(f"  {shape} round {r + 1}/{a.rounds} {mode:5s} ctx {c:5d} "
                                    f"{'ours ' + p if kind == 'ours' else 'llama.cpp ' + label:18s} "
                                    f"decode {res['decode_tps']:7.2f} tok/s  peak RSS {res['peak_rss'] / 1e6:6.0f} MB"
                                    f"  ({res['wall_s']:.0f} s)")
                finally:
                    if spinner:
                        spinner.__exit__()
        report["shapes"][shape] = {"checkpoint": str(parent), "ours": {p: str(f) for p, f in ours.items()},
                                   "gguf": {q: str(f) for q, f in ggufs.items()},
                                   "gguf_bytes": {q: f.stat().st_size for q, f in ggufs.items()},
                                   "gguf_vocab": vocab, "runs": results}
        print_shape(shape, results, precisions, contexts, a, llama, ggufs, vocab)

    report["seconds"] = round(time.perf_counter() - t_start, 1)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
        log(f"wrote {a.json}")
    log(f"total {report['seconds']:.0f} s")


def print_shape(shape: str, results: list[dict], precisions: list[str], contexts: list[int], a, llama: LlamaCpp,
                ggufs: dict[str, Path], vocab: dict) -> None:
    import torch

    def pick(mode, c, kind, label):
        return sorted((x for x in results if x["mode"] == mode and x["context"] == c and x["engine"] == kind and
                       x["label"] == label), key=lambda x: x["round"])

    lrun = next((x for x in results if x["engine"] == "llama"), {})
    print(f"\n## {SHAPES[shape]}\n")
    fa = FA.get(lrun.get("flash_attn"), lrun.get("flash_attn"))
    loads = [x["loadavg"] for x in results if "loadavg" in x]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores; {cpu_flags()}); {a.threads} threads each; torch "
          f"{torch.__version__}; llama.cpp {llama.info.get('commit')} (llama-cpp-python {LLAMA_CPP_PYTHON} sdist, "
          f"{llama.info.get('variant')} build: {' '.join(llama.info.get('flags', []))}; llama-bench reports build "
          f"{lrun.get('build_commit')}, flash_attn {fa}, KV {lrun.get('type_k')}, load_mode {lrun.get('load_mode')}, "
          f"poll {lrun.get('poll')}).")
    print(f"Decode at batch 1, {a.gen} tokens: ours = (gen-1) / (first to last token) of stream_generate, greedy, "
          f"after a `context`-token prefill; llama.cpp = llama-bench avg_ts of tg{a.gen} at depth `context`. "
          f"{a.rounds} round(s), engines alternating, order rotating; ratio = median of the within-round ratios; "
          f"every run a fresh process" + ("; these are the quiet runs" if a.busy else "") +
          (f"; 1-min load average after each run {min(loads):.2f}..{max(loads):.2f} (the run itself adds up "
           f"to {a.threads}; the rest is other jobs)" if loads else "") + ".\n")
    def quiet_pairs():
        """(context, our precision, its pair index, llama.cpp's type, our quiet runs, its quiet runs): a row each."""
        for c in contexts:
            for p in precisions:
                o = pick("quiet", c, "ours", p)
                for i, q in enumerate(PAIRS[p]):
                    yield c, p, i, q, o, pick("quiet", c, "llama", q)

    print("| pair (ours / llama.cpp) | context | ours tok/s | llama.cpp tok/s | ratio | target |")
    print("|---|---|---|---|---|---|")
    for c, p, i, q, o, ll in quiet_pairs():
        ratios = [x["decode_tps"] / y["decode_tps"] for x, y in zip(o, ll)]
        target = verdict(median(ratios), TARGET_DECODE) if i == 0 else "(shown)"
        print(f"| {p} / {q} | {c} | {fmt(median([x['decode_tps'] for x in o]))} | "
              f"{fmt(median([y['decode_tps'] for y in ll]))} | {fmt(median(ratios), 'x', 2)} | {target} |")
    print("\nPeak RSS of the whole process (loading included; os.wait4 ru_maxrss), the largest over rounds:\n")
    print("| precision (ours / llama.cpp) | context | ours MB | llama.cpp MB | ratio | target |")
    print("|---|---|---|---|---|---|")
    for c, p, i, q, o, ll in quiet_pairs():
        if not o or not ll:
            continue
        om, lm = max(x["peak_rss"] for x in o), max(y["peak_rss"] for y in ll)
        target = verdict(om / lm, TARGET_RSS, lower=True) if i == 0 else "(shown)"
        print(f"| {p} / {q} | {c} | {om / 1e6:.0f} | {lm / 1e6:.0f} | {om / lm:.2f}x | {target} |")
    print("\nFiles: llama.cpp " + ", ".join(f"{q} {f.stat().st_size / 1e6:.0f} MB" for q, f in ggufs.items())
          + f"; its vocabulary: {vocab.get('tokens')} tokens of which {vocab.get('pad')} [PAD] fillers (the test "
          "tokenizer padded to vocab_size)")
    if not a.busy:
        sys.stdout.flush()
        return
    print("\nBusy (one other process spinning on a core) / quiet decode tok/s, per round:\n")
    print("| engine | context | quiet tok/s | busy tok/s | busy/quiet per round | min | median | target |")
    print("|---|---|---|---|---|---|---|---|")
    for c in contexts:
        for p in precisions:
            for kind, label in [("ours", p)] + [("llama", q) for q in PAIRS[p]]:
                qq, bb = pick("quiet", c, kind, label), pick("busy", c, kind, label)
                ratios = [b["decode_tps"] / q_["decode_tps"] for q_, b in zip(qq, bb)]
                name = f"ours {p}" if kind == "ours" else f"llama.cpp {label}"
                print(f"| {name} | {c} | {fmt(median([x['decode_tps'] for x in qq]))} | "
                      f"{fmt(median([x['decode_tps'] for x in bb]))} | "
                      f"{', '.join(f'{x:.2f}' for x in ratios)} | {fmt(min(ratios) if ratios else None, 'x', 2)} | "
                      f"{fmt(median(ratios), 'x', 2)} | "
                      f"{verdict(min(ratios) if ratios else None, TARGET_BUSY)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
