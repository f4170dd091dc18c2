"""`cohere quantize`: a float checkpoint -> a bitsandbytes nf4/fp4/int8 checkpoint, streamed.

Memory stays at a few row chunks whatever the model size:
- the parent's safetensors are memory-mapped and read tensor by tensor, a weight a chunk of rows (~4M values) at a
  time; the pages of every chunk are released (madvise DONTNEED) as soon as it is quantized, so they never pile up
  in the process' resident set;
- tensors that stay in the parent's dtype (embeddings, norms, kept linears) are copied from the map to the output
  in 64 MiB slices, never materialised;
- each output shard is written front to back as tensors are produced: its layout is planned from the parent's
  headers (output shapes are known before quantizing), room for the header is reserved at the front and the header
  is written last (safetensors allows trailing spaces in the header JSON). Small tensors whose size would break the
  8-byte alignment of the ones after them (quant_state JSON, weight_format) are written at the end of the shard.

The output is transformers' bitsandbytes serialization (see cohere_cli/weights/quant.py) plus `quantization_config` in
config.json, built in a temporary folder and published with one rename: an error, a full disk or Ctrl-C leaves
nothing behind."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from cohere_cli.weights import qlinear
from cohere_cli.weights import quant
from cohere_cli.weights.checkpoint import weight_files
from cohere_cli.weights.memory import fixed_mmap_threshold
from cohere_cli.errors import QuantizeError, UsageError
from cohere_cli.store import bnb_format
from cohere_cli.store.atomic import free_bytes, publish_folder
from cohere_cli.weights.safetensors import ELEM, ST_DTYPES, MappedFiles, OutTensor, ShardWriter, Src, scan

FLOATS = ("F16", "BF16", "F32")
DEFAULT_SHARD_BYTES = 2 * 10**9
COPY_SLICE = 64 << 20
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
SKIP_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "manifest.json"}


# ---- planning the output --------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One unit of work: a parent tensor copied as is, or a linear weight quantized into several output tensors."""

    src: Src
    quantize: bool
    outs: list[OutTensor]
    shard: int = 0

    @property
    def out_bytes(self) -> int:
        return sum(o.nbytes for o in self.outs)


def plan_outputs(src: Src, spec: quant.QuantSpec) -> list[OutTensor]:
    mod = src.name[: -len(".weight")]
    return [OutTensor(f"{mod}.{name}", dtype, shape) for name, dtype, shape in
            bnb_format.stored_tensors(src.shape, spec.bits, spec.quant_type, spec.blocksize, spec.double_quant)]


@dataclass
class Plan:
    items: list[Item]
    n_shards: int
    kept: list[str]  # linears left unquantized (--keep)
    quantized: list[str]
    parent_bytes: int
    out_bytes: int  # upper bound (quant_state JSON counted at its maximum)
    parent_dtype: str

    def shard_name(self, i: int) -> str:
        return "model.safetensors" if self.n_shards == 1 else f"model-{i + 1:05d}-of-{self.n_shards:05d}.safetensors"


def make_plan(tensors: list[Src], spec: quant.QuantSpec, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Plan:
    items, kept, quantized = [], [], []
    by_dtype: dict[str, int] = {}
    for s in tensors:
        mod = s.name[: -len(".weight")] if s.name.endswith(".weight") else None
        if mod and quant.QUANTIZABLE.match(mod):
            if s.dtype not in FLOATS or len(s.shape) != 2:
                raise QuantizeError(f"{s.file.name}: {s.name} is {s.dtype} {list(s.shape)}, not a float matrix: "
                                    f"is this checkpoint already quantized?")
            by_dtype[s.dtype] = by_dtype.get(s.dtype, 0) + s.nbytes
            if spec.wants(mod):
                items.append(Item(s, True, plan_outputs(s, spec)))
                quantized.append(mod)
                continue
            kept.append(mod)
        items.append(Item(s, False, [OutTensor(s.name, s.dtype, list(s.shape))]))
    if not quantized:
        raise QuantizeError("nothing to quantize: the checkpoint has no attention/MLP linear weights"
                            + (" left after --keep" if kept else ""))
    shard, size = 0, 0
    for it in items:  # a parent tensor's outputs never straddle shards
        if size and size + it.out_bytes > max_shard_bytes:
            shard, size = shard + 1, 0
        it.shard, size = shard, size + it.out_bytes
    parent_dtype = max(by_dtype, key=by_dtype.get)
    return Plan(items, shard + 1, kept, quantized, sum(t.nbytes for t in tensors),
                sum(it.out_bytes for it in items), {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}[parent_dtype])


# ---- the quantizer ----------------------------------------------------------------------------------------------------
@dataclass
class QuantizeResult:
    folder: Path
    plan: Plan
    seconds: float
    parent_bytes: int
    out_bytes: int  # weights written
    files: list[str] = field(default_factory=list)

    @property
    def gb_per_s(self) -> float:
        return self.parent_bytes / max(self.seconds, 1e-9) / 1e9


def unquantized_summary(plan) -> list[str]:
    """Modules left in the parent's dtype, per-layer names folded to model.layers.*; --keep linears listed exactly."""
    out: list[str] = []
    for it in plan.items:
        if it.quantize:
            continue
        mod = it.src.name.rsplit(".", 1)[0]
        if mod in plan.kept:
            name = mod
        else:
            name = re.sub(r"^model\.layers\.\d+\.", "model.layers.*.", mod)
        if name not in out:
            out.append(name)
    return out


def manifest_record(spec: quant.QuantSpec, plan: Plan, result: QuantizeResult, parent_name: str, *, tool: str
                    ) -> dict:
    """The manifest's `quantization` record: how it was quantized, what was left in float, from what, how fast."""
    four = spec.bits == 4
    return {
        "method": "bitsandbytes",
        "bits": spec.bits,
        "quant_type": spec.quant_type if four else "int8",
        "blocksize": spec.blocksize if four else None,
        "double_quant": spec.double_quant if four else None,
        "compute_dtype": spec.compute_dtype,
        "int8_threshold": None if four else spec.threshold,
        "quantized": len(plan.quantized),
        "unquantized": unquantized_summary(plan),
        "kept": plan.kept,
        "keep_patterns": spec.keep,
        "parent": parent_name,
        "parent_dtype": plan.parent_dtype,
        "parent_weights_bytes": result.parent_bytes,
        "weights_bytes": result.out_bytes,
        "seconds": round(result.seconds, 3),
        "gb_per_s": round(result.gb_per_s, 4),
        "tool": tool,
    }


def check_parent(folder: Path) -> dict:
    """config.json of a parent we can quantize; QuantizeError when it is already quantized."""
    from cohere_cli.weights.checkpoint import read_config

    raw, _ = read_config(folder)
    q = raw.get("quantization_config")
    if isinstance(q, dict):
        kind = q.get("quant_method", "some method")
        what = ("nf4" if q.get("bnb_4bit_quant_type") == "nf4" else "fp4") if q.get("load_in_4bit") else (
            "int8" if q.get("load_in_8bit") else kind)
        raise QuantizeError(f"{folder.name} is already quantized ({what}): quantize its float parent instead")
    return raw


def other_files(folder: Path) -> list[Path]:
    """Files copied next to the quantized weights: config, generation config, tokenizer, templates, README..."""
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in SKIP_FILES or p.name.endswith(WEIGHT_FILES):
            continue
        out.append(p)
    return out


def check_disk(plan: Plan, parent: Path, dest_dir: Path) -> None:
    need = plan.out_bytes + sum(p.stat().st_size for p in other_files(parent)) + (16 << 20)
    free, dest_dir = free_bytes(dest_dir)
    if free < need:
        from cohere_cli.store.sizes import human_bytes

        raise QuantizeError(f"not enough disk space in {dest_dir}: the quantized checkpoint needs about "
                            f"{human_bytes(need)}, {human_bytes(free)} is free")


def quantize_checkpoint(parent: Path, out: Path, spec: quant.QuantSpec, *,
                        max_shard_bytes: int = DEFAULT_SHARD_BYTES, plan: Plan | None = None,
                        progress: Callable[[int, str], None] | None = None,
                        workers: int | None = None) -> QuantizeResult:
    """Write the quantized checkpoint of `parent` into the (existing, empty) folder `out`.
    progress(n_bytes_of_parent_done, tensor_name) is called as work completes."""
    spec.validate()
    raw = check_parent(parent)
    plan = plan or make_plan(scan(weight_files(parent)), spec, max_shard_bytes)
    qlinear.bnb()  # import (and silence) bitsandbytes before the clock starts
    fixed_mmap_threshold()
    workers = workers or max(1, min(4, torch.get_num_threads()))
    t0 = time.perf_counter()
    maps = MappedFiles()
    writer: ShardWriter | None = None
    files, weight_map = [], {}
    done_bytes, written = 0, 0
    pool = cf.ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for shard in range(plan.n_shards):
            items = [it for it in plan.items if it.shard == shard]
            name = plan.shard_name(shard)
            writer = ShardWriter(out / name, [o for it in items for o in it.outs])
            for it in items:
                if it.quantize:
                    _quantize_item(it, spec, maps, writer, pool, workers, progress, done_bytes)
                else:
                    _copy_item(it, maps, writer, progress, done_bytes)
                done_bytes += it.src.nbytes
                for o in it.outs:
                    weight_map[o.name] = name
                if progress:
                    progress(done_bytes, it.src.name)
            writer.close()
            written += (out / name).stat().st_size
            files.append(name)
            writer = None
        seconds = time.perf_counter() - t0
        _write_rest(parent, out, raw, spec, plan, weight_map)
    except OSError as e:  # a full disk, a vanished folder, an unreadable parent: one line, no traceback
        if writer is not None:
            writer.abort()
        where = e.filename or out
        raise QuantizeError(f"quantizing {parent.name} failed at {where}: {e.strerror or e}") from None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        maps.close()
    return QuantizeResult(out, plan, seconds, plan.parent_bytes, written, files)


def _write_rest(parent: Path, out: Path, raw: dict, spec: quant.QuantSpec, plan: Plan, weight_map: dict) -> None:
    """The shard index, config.json with quantization_config, and the parent's other files (tokenizer...)."""
    if plan.n_shards > 1:
        total = sum(o.nbytes for it in plan.items for o in it.outs)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for p in other_files(parent):
        if p.name != "config.json":
            shutil.copyfile(p, out / p.name)
    cfg = dict(raw)
    cfg["quantization_config"] = spec.quantization_config(plan.kept)
    cfg[quant.HEAD_KEY] = spec.head
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _copy_item(it: Item, maps: MappedFiles, writer: ShardWriter, progress, base: int) -> None:
    s = it.src
    if s.nbytes % 8:
        t = maps.view(s.file, s.start, s.end, ST_DTYPES[s.dtype], s.shape).clone()
        maps.release(s.file, s.start, s.end)
        writer.put(s.name, t)
        return
    writer.begin(s.name, s.dtype, list(s.shape))
    for a in range(s.start, s.end, COPY_SLICE):
        b = min(a + COPY_SLICE, s.end)
        mv = maps.bytes(s.file, a, b)
        try:
            writer.write(mv)
        finally:
            mv.release()
        maps.release(s.file, a, b)
        if progress:
            progress(base + b - s.start, s.name)
    writer.end()


def _quantize_item(it: Item, spec: quant.QuantSpec, maps: MappedFiles, writer: ShardWriter, pool, workers: int,
                   progress, base: int) -> None:
    s = it.src
    n, k = s.shape
    dtype = ST_DTYPES[s.dtype]
    q = quant.quantizer((n, k), dtype, spec)
    step = quant.row_chunk((n, k), spec.blocksize)
    row_bytes = k * ELEM[s.dtype]
    wout = it.outs[0]
    stream = wout.nbytes % 8 == 0
    pieces: list[torch.Tensor] = []
    if stream:
        writer.begin(wout.name, wout.dtype, wout.shape)

    def work(r0: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        r1 = min(r0 + step, n)
        w = maps.view(s.file, s.start + r0 * row_bytes, s.start + r1 * row_bytes, dtype, (r1 - r0, k))
        return r1, *q.rows(w)

    stats: list[torch.Tensor] = []

    def emit(r1: int, data: torch.Tensor, stat: torch.Tensor) -> None:
        stats.append(stat)
        if stream:
            writer.write(memoryview(data.view(torch.uint8).numpy()))
        else:
            pieces.append(data)
        maps.release(s.file, s.start, s.start + r1 * row_bytes)
        if progress:
            progress(base + r1 * row_bytes, s.name)

    starts = list(range(0, n, step))
    if pool is None or len(starts) == 1:
        for r0 in starts:
            emit(*work(r0))
    else:  # several chunks at once: bitsandbytes' CPU quantizer (torch.bucketize) runs on one thread
        pending: list[cf.Future] = []
        for r0 in starts:
            pending.append(pool.submit(work, r0))
            if len(pending) >= workers:
                emit(*pending.pop(0).result())
        for fut in pending:
            emit(*fut.result())
    rest = q.finish(stats)  # chunk statistics in row order: equal to one-shot quantization
    if stream:
        writer.end()
    else:
        writer.put(wout.name, torch.cat(pieces).reshape(wout.shape))
    prefix = s.name[: -len("weight")]
    for o in it.outs[1:]:
        t = rest[o.name[len(prefix):]]
        if ".quant_state.bitsandbytes__" in o.name:
            if t.numel() > bnb_format.QS_JSON_MAX:
                raise AssertionError("quant_state JSON longer than planned")
            o.shape = [t.numel()]
        elif list(t.shape) != o.shape:
            raise AssertionError(f"{o.name}: planned {o.shape}, got {list(t.shape)}")
        writer.put(o.name, t)


# ---- where the output goes --------------------------------------------------------------------------------------------
def default_name(parent_name: str, spec: quant.QuantSpec) -> str:
    base = parent_name.rstrip("/").rsplit("/", 1)[-1]
    return f"{base}-{spec.precision}"


def looks_like_path(output: str) -> bool:
    """--output is a folder path when absolute, starting with . or ~, or its parent folder exists; otherwise a store
    name (which may be "Org/name")."""
    if output.startswith(("/", ".", "~")) or os.sep != "/" and os.sep in output:
        return True
    if "/" not in output:
        return False
    return Path(output).expanduser().parent.is_dir()


def _replaceable(dest: Path) -> bool:
    """What --force may delete: an empty folder, or a checkpoint provably ours (store.manifest.written_by_us), never
    a symlink or any other folder (a typo in -o must not cost the user a folder of their own)."""
    from cohere_cli.store.manifest import written_by_us

    if dest.is_symlink() or not dest.is_dir():
        return False
    try:
        if not any(dest.iterdir()):
            return True
    except OSError:
        return False
    return written_by_us(dest)


@contextlib.contextmanager
def folder_tmpdir(dest: Path, *, replace: bool) -> Iterator[Path]:
    """entry_tmpdir's twin for an explicit output folder: build beside it, publish with one rename."""
    dest = dest.expanduser().absolute()
    if dest.exists() and not replace:
        raise QuantizeError(f"{dest} already exists: choose another --output or pass --force to replace it")
    if dest.exists() and not _replaceable(dest):
        raise QuantizeError(f"{dest} is not a checkpoint cohere-cli wrote (no manifest.json) nor an empty folder: "
                            "--force replaces only those; choose another --output")
    if not dest.parent.is_dir():
        raise UsageError(f"--output {dest}: its parent folder {dest.parent} does not exist")
    with publish_folder(dest, work=dest.parent, prefix=f".{dest.name}.") as tmp:
        yield tmp
