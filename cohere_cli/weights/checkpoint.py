"""Loading an HF-format checkpoint folder into the model core.

Tensors are read one at a time (safetensors.Reader) and converted straight into the compute dtype, into a model built
on the meta device, each block put in the inference layout as soon as it is complete: peak memory stays a block above
the model's size in its compute dtype (load_model)."""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from cohere_cli.errors import CheckpointError, CohereWarning, UnsafeInput, UsageError
from cohere_cli.config import ModelConfig, read_config
from cohere_cli.model import CohereForCausalLM
from cohere_cli.untrusted import confine, parse_json, read_bounded
from cohere_cli.weights import layout
from cohere_cli.weights.memory import trim_heap

MAX_INDEX_BYTES = 64 << 20  # a shard index maps tensor names to shards: ~100 bytes a tensor
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: from the shard index if there is one, else every *.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:  # untrusted: bounded, parsed safely, and every shard it names confined to the folder
            weight_map = parse_json(read_bounded(index, MAX_INDEX_BYTES, "shard index"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is unreadable ({e}): re-download the checkpoint") from None
        try:
            paths = [confine(folder, n, f"the shard named in {index}") for n in names]
        except UnsafeInput as e:
            raise CheckpointError(f"{e}: re-download the checkpoint") from None
        missing = [n for n, p in zip(names, paths) if not p.is_file()]
        if missing:
            raise CheckpointError(f"{folder} lacks shard {missing[0]} named in its index: re-download the checkpoint")
        return paths
    try:  # a symlink out of the folder is refused; a FIFO or device (would block, or never end) is not weights
        files = [confine(folder, f.name, "a weights file") for f in sorted(folder.glob("*.safetensors"))]
    except UnsafeInput as e:
        raise CheckpointError(f"{e}: re-download the checkpoint") from None
    files = [f for f in files if f.is_file()]
    if not files:
        raise CheckpointError(f"{folder} has no *.safetensors weights (.bin and GGUF are not supported)")
    return files


def pick_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """--dtype auto|float32|bfloat16|float16 -> (dtype, why). auto: bf16 on CUDA when supported else fp16;
    on CPU bf16 where the CPU has native bf16 matmul (AVX512-BF16/AMX: 1.5x faster decode, 5x faster prefill than
    fp32 here, see platform-notes), else fp32. Never fp16 on CPU: it is the slowest of the three there."""
    if name != "auto":
        if name not in DTYPES:
            raise UsageError(f"--dtype must be one of auto, float32, bfloat16, float16 (got {name!r})")
        if name == "float16" and device.type == "cpu":
            warnings.warn("float16 on CPU is slow (no native fp16 matmul): prefer bfloat16 or float32", CohereWarning,
                          stacklevel=2)
        return DTYPES[name], "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA with bf16 support"
        return torch.float16, "CUDA without bf16"
    cap = torch.backends.cpu.get_cpu_capability()
    if _cpu_has_bf16():
        return torch.bfloat16, f"CPU with native bf16 ({cap})"
    return torch.float32, f"CPU without native bf16 ({cap})"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def model_key(key: str, cfg: ModelConfig) -> str | None:
    """The model's name for checkpoint tensor `key`, or None for a tensor text generation never reads: a
    cohere2_vision wrapper keeps its text model under `model.language_model.*` (-> `model.*`) beside the vision
    tower and projector (`model.vision_tower.*`, `model.multi_modal_projector.*`), which stay on disk."""
    if cfg.weight_prefix == "model." or not key.startswith("model."):
        return key
    return "model." + key[len(cfg.weight_prefix):] if key.startswith(cfg.weight_prefix) else None


@dataclass
class Loaded:
    model: CohereForCausalLM
    config: ModelConfig
    raw_config: dict
    dtype: torch.dtype
    dtype_reason: str
    load_seconds: float
    folder: Path


MAPPED = ("model.embed_tokens.weight", "lm_head.weight")  # left in the file on CPU (see load_model)


def load_model(folder: Path, dtype: str = "auto", device: str | torch.device = "cpu", inference: bool = True) -> Loaded:
    """Build the model for `folder` and fill it tensor by tensor. Raises CheckpointError on any mismatch.
    With `inference` (the default) it comes out in the decode layout: fused q/k/v and gate/up (layout.fuse) and,
    on CPU, weights packed for oneDNN (layout.pack); inference=False keeps the checkpoint's modules as they are
    (what bench_child.quantize_in_memory needs).

    Memory: one resident copy of every weight, and loading peaks a block (or a head chunk) above it. Each tensor is
    read into memory of its own (safetensors.Reader: no map of the file holding pages), each block fused and packed
    as soon as its last tensor is in (the checkpoint's parts freed then, not at the end), and on CPU the embedding
    and the head's source stay in the file, mapped (only the rows of tokens seen are resident; the head is packed
    from the map chunk by chunk, each chunk's pages given back: layout.packed_head, quant.int8_head)."""
    from cohere_cli.weights.safetensors import Reader

    t0 = time.perf_counter()
    device = torch.device(device)
    raw, cfg = read_config(folder)
    files = weight_files(folder)
    torch_dtype, why = pick_dtype(dtype, device)
    with torch.device("meta"), _no_init():
        model = CohereForCausalLM(cfg)
    params = dict(model.named_parameters(remove_duplicate=True))  # tied lm_head appears once, as embed_tokens
    expected = set(params)
    tied = cfg.tie_word_embeddings
    seen: set[str] = set()
    quant = None
    if isinstance(raw.get("quantization_config"), dict):  # bitsandbytes linears: built by cohere_cli/weights/quant.py
        from cohere_cli.weights.quant import QuantizedLoader

        quant = QuantizedLoader(model, raw, files, torch_dtype, device)
    blocks = _Blocks(model, expected, quant) if inference else None
    map_on_cpu = inference and device.type == "cpu"
    for f in files:
        try:
            with Reader(f) as sf:
                for file_key in sf.keys():
                    key = model_key(file_key, cfg)
                    if key is None or (key == "lm_head.weight" and tied):
                        continue  # the tied head some exports write; a wrapper's vision tower (never read)
                    if key in seen:  # a later copy would land in a module already fused and packed
                        raise CheckpointError(f"{f.name} holds tensor {file_key!r} a second time: the checkpoint is "
                                              f"inconsistent; re-download it")
                    if quant is not None and quant.take(key, sf, file_key):
                        seen.add(key)
                    elif key not in expected:
                        raise CheckpointError(
                            f"{f.name} has unexpected tensor {file_key!r}: not a {cfg.model_type} checkpoint of this "
                            f"config (quantized checkpoints need `cohere quantize` support)"
                        )
                    else:
                        check_shape(key, sf.shape(file_key), params[key], f)  # before reading a byte
                        mapped = map_on_cpu and key in MAPPED and sf.dtype(file_key) == torch_dtype
                        t = sf.mapped(file_key) if mapped else sf.get_tensor(file_key)
                        assign_tensor(model, key, t, params[key], torch_dtype, device, f)
                        if mapped:
                            params[key] = model.get_parameter(key)
                            params[key].file_backed = True  # not memory of the model's own (bench/child.module_bytes)
                        seen.add(key)
                    if blocks is not None:
                        blocks.arrived(key)
        except OSError as e:
            raise CheckpointError(f"cannot read {f} ({e})") from None
    head = None
    if quant is not None:
        quant.finish()
        head = quant.head_threshold
    missing = sorted(expected - seen)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint {folder} lacks tensor {missing[0]!r}{more}: it is incomplete")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.eval().requires_grad_(False)
    if inference:
        inference_layout(model, files, int8_head=head)
    trim_heap()
    return Loaded(model, cfg, raw, torch_dtype, why, time.perf_counter() - t0, folder)


class _Blocks:
    """Fuses and packs each block as soon as the last of its tensors is loaded (and its quantized modules built),
    so the checkpoint's separate q/k/v/gate/up and the plain matrices packing replaces are freed block by block."""

    def __init__(self, model: CohereForCausalLM, expected: set[str], quant):
        self.model, self.quant = model, quant
        self.left: dict[int, set[str]] = {}
        for k in expected:
            i = self.index(k)
            if i is not None:
                self.left.setdefault(i, set()).add(k)

    @staticmethod
    def index(key: str) -> int | None:
        parts = key.split(".", 3)
        return int(parts[2]) if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit() else None

    def arrived(self, key: str) -> None:
        i = self.index(key)
        left = self.left.get(i)
        if left is None:
            return
        left.discard(key)
        prefix = f"model.layers.{i}."
        if not left and not (self.quant is not None and any(m.startswith(prefix) for m in self.quant.pending)):
            del self.left[i]
            block = self.model.model.layers[i]
            layout.pack_block(layout.fuse_block(block))
            trim_heap()  # the block's parts, just freed


def inference_layout(model: CohereForCausalLM, files: list[Path] | None = None,
                     int8_head: float | None = None) -> None:
    """The decode layout (weights/layout.py): fuse, then pack; a tied head is packed from the embedding matrix in
    the checkpoint file (load_model leaves it mapped there; given `files`, it is mapped here: mapped_tensor), and
    the embedding lookups read the file. `int8_head`: run the head as LLM.int8() with this outlier threshold
    instead, on CPU (quantized checkpoints, quant.int8_head). A head that is a view of the file is packed or
    quantized chunk by chunk, each chunk's pages given back as it is done. bf16 on CPU: each block's decode step
    through the native kernels where they build (kernels.decode_ops)."""
    from cohere_cli.weights.safetensors import random_rows, release_rows

    w = model.model.embed_tokens.weight
    emb = head = None
    tied = model.lm_head.weight is w
    if tied and w.device.type == "cpu":
        emb = w if getattr(w, "file_backed", False) else \
            mapped_tensor(files, "model.embed_tokens.weight", w.dtype) if files else None
    src = emb if tied and emb is not None else model.lm_head.weight
    mapped = src is emb or getattr(src, "file_backed", False)

    def release(a: int, b: int) -> None:  # after each chunk: its source pages, and the temporaries the chunk freed
        if mapped:
            release_rows(src, a, b)
        trim_heap()

    if int8_head is not None and isinstance(model.lm_head, torch.nn.Linear):
        from cohere_cli.weights.quant import int8_head as build

        head = build(src, int8_head, release)
    layout.pack(layout.fuse(model), embedding=emb, head=head, release=release)
    if getattr(model.model.embed_tokens.weight, "file_backed", False):  # still the file's: read row by row
        random_rows(model.model.embed_tokens.weight)
    if w.device.type == "cpu" and w.dtype == torch.bfloat16:
        from cohere_cli.weights import kernels

        ops = kernels.decode_ops()
        if ops is not None:
            layout.use_decode_kernels(model, ops)


def mapped_tensor(files: list[Path], key: str, dtype: torch.dtype) -> torch.Tensor | None:
    """Tensor `key` as a read-only view of its bytes in the checkpoint file (a private memory map, read lazily:
    only the pages touched become resident), or None where it is not stored in `dtype`, not found, or the file
    cannot be mapped. The safetensors layout: an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and [begin, end) byte offsets within the data that follows."""
    import mmap

    from cohere_cli.store.sizes import safetensors_header

    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
    for f in files:
        try:
            header, data = safetensors_header(f)
            info = header.get(key)
            if info is None:
                continue
            if info.get("dtype") != names.get(dtype):
                return None
            begin, end = info["data_offsets"]
            count = (end - begin) // torch.empty((), dtype=dtype).element_size()
            with open(f, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # private: never written back
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = torch.frombuffer(mm, dtype=dtype, count=count, offset=data + begin)
            return t.view(info["shape"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None
    return None


@contextmanager
def _no_init():
    """Skip random initialisation while building on meta: every weight is overwritten by the checkpoint, and
    nn.init on meta tensors goes through torch._refs, which imports torch._dynamo (0.8 s of start-up)."""
    names = ("kaiming_uniform_", "uniform_", "normal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda t, *a, **k: t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def check_shape(key: str, shape: tuple[int, ...], meta_param, f: Path) -> None:
    if tuple(shape) != tuple(meta_param.shape):
        raise CheckpointError(
            f"{f.name}: tensor {key!r} has shape {tuple(shape)}, config.json implies {tuple(meta_param.shape)}"
        )


def assign_tensor(model, key: str, t: torch.Tensor, meta_param, dtype, device, f: Path) -> None:
    """Put checkpoint tensor `key` (read from file `f`) into `model`, built on meta, in `dtype` on `device`; a shape
    other than the architecture's (`meta_param`) is a CheckpointError. load_model and bench's quality streaming
    (one block at a time) both load through it."""
    check_shape(key, tuple(t.shape), meta_param, f)
    mod_name, _, attr = key.rpartition(".")
    module = model.get_submodule(mod_name)
    # .to() converts and copies once. Where it has nothing to do the tensor is the one read (safetensors.Reader: memory
    # of its own), or on CPU a view of the file map load_model asked for (the embedding, the head's source).
    w = t.to(device=device, dtype=dtype)
    module._parameters[attr] = torch.nn.Parameter(w, requires_grad=False)
