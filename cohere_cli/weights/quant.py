"""bitsandbytes quantization for the model core: 4-bit (nf4/fp4) and 8-bit (LLM.int8) linear layers.

Two jobs, both with bitsandbytes' own functions (no re-implementation of its number formats):

1. Quantize one weight, row chunk by row chunk, into the tensors transformers writes for bitsandbytes models
   (`Quantizer4bit` / `Quantizer8bit`, `quantize_weight`; used by the streaming `cohere quantize`); the format is
   spelled once, in cohere_cli/store/bnb_format.py.
   Chunks are aligned to quantization blocks, so the result equals bitsandbytes' one-shot `quantize_4bit` /
   `int8_vectorwise_quant` bit for bit (tests/test_quant.py checks it) while memory stays at one chunk.
2. Build quantized linear modules from those stored tensors (`QuantLinear4bit.from_stored`,
   `QuantLinear8bit.from_stored`; `QuantizedLoader` is the hook checkpoint.load_model calls).
   The modules themselves, and the kernels they run, are cohere_cli/weights/qlinear.py.

bitsandbytes is imported lazily (it costs ~1.5 s and logs noise on import); this module never imports
transformers."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cohere_cli.errors import CheckpointError
from cohere_cli.store import bnb_format
from cohere_cli.weights.qlinear import QuantLinear4bit, QuantLinear8bit, bnb

# The linears bitsandbytes quantizes in a Cohere model: attention and MLP projections. Embeddings, norms and the
# (tied) lm_head stay in the parent's dtype, as in transformers' bitsandbytes integration.
# cohere2_moe: every expert's and the shared experts' projections too; the router (`mlp.gate`, not a *_proj) stays
# in float: it is E x H (tiny), and a rounding that flips an expert choice changes the layer's whole output.
QUANTIZABLE = re.compile(
    r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj)$")
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# The output head is stored in float (transformers never quantizes it), but the model core runs it as LLM.int8() on
# CPU, built at load from that float weight, unless config.json says otherwise under this key. Why: the head reads a
# vocab x hidden matrix per token, 2 GB in bf16 for R7B's 256000-token vocabulary against ~4 GB for all its nf4
# layers; llama.cpp's 4- and 8-bit files and mlx-lm quantize it too (llama.cpp keeps it at 6-8 bits, as here).
HEAD_KEY = "cohere_cli_lm_head"
HEADS = ("int8", "float")

# ---- what to quantize -----------------------------------------------------------------------------------------------
@dataclass
class QuantSpec:
    """How to quantize: what `cohere quantize` options become, and what the manifest records."""

    bits: int  # 4 or 8
    quant_type: str = "nf4"  # 4-bit only: nf4 | fp4
    blocksize: int = 64  # 4-bit only
    double_quant: bool = True  # 4-bit only: quantize the absmax values again (8-bit, blocks of 256)
    compute_dtype: str = "bfloat16"  # what the linears compute in (bnb_4bit_compute_dtype)
    threshold: float = 6.0  # LLM.int8() outlier threshold on activations (llm_int8_threshold; 4-bit: the head's)
    head: str = "int8"  # how the output head runs on CPU: int8 (built at load) or float (HEAD_KEY)
    keep: list[str] = field(default_factory=list)  # glob patterns of module names left unquantized

    def validate(self) -> None:
        from cohere_cli.errors import UsageError

        if self.bits not in (4, 8):
            raise UsageError(f"--bits must be 4 or 8 (got {self.bits}): bitsandbytes stores nf4/fp4 or int8")
        if self.quant_type not in ("nf4", "fp4"):
            raise UsageError(f"--quant-type must be nf4 or fp4 (got {self.quant_type!r})")
        if self.head not in HEADS:
            raise UsageError(f"--head must be {' or '.join(HEADS)} (got {self.head!r})")
        if self.blocksize not in BLOCKSIZES:
            raise UsageError(f"--blocksize must be one of {', '.join(map(str, BLOCKSIZES))} (got {self.blocksize})")

    @property
    def precision(self) -> str:
        return self.quant_type if self.bits == 4 else "int8"

    @classmethod
    def read_back(cls, q: dict) -> "QuantSpec":
        """The spec a `quantization_config` was written from (quantization_config's inverse, for what load needs
        to know). CheckpointError when it says neither or both of 4-bit and 8-bit."""
        four = bool(q.get("load_in_4bit", q.get("_load_in_4bit")))
        eight = bool(q.get("load_in_8bit", q.get("_load_in_8bit")))
        if four == eight:
            says = "both load_in_4bit and load_in_8bit" if four else "neither load_in_4bit nor load_in_8bit"
            raise CheckpointError(f"config.json: quantization_config says {says}: re-quantize or re-download the "
                                  f"checkpoint")
        threshold = q.get("llm_int8_threshold", 6.0)  # null: no outlier decomposition, as head_threshold reads it
        return cls(bits=4 if four else 8, quant_type=str(q.get("bnb_4bit_quant_type") or "nf4") if four else "nf4",
                   double_quant=bool(q.get("bnb_4bit_use_double_quant")) if four else False,
                   threshold=float(threshold) if isinstance(threshold, (int, float)) else 0.0)

    def wants(self, module: str) -> bool:
        """Whether the linear `module` (e.g. model.layers.3.mlp.up_proj) is quantized."""
        if not QUANTIZABLE.match(module):
            return False
        return not any(fnmatch.fnmatchcase(module, g) or fnmatch.fnmatchcase(module + ".weight", g)
                       for g in self.keep)

    def quantization_config(self, kept: list[str]) -> dict:
        """config.json's `quantization_config`, spelled as transformers' BitsAndBytesConfig.to_dict() writes it, so
        that `AutoModelForCausalLM.from_pretrained` loads the folder as is. Unquantized linears are listed in
        llm_int8_skip_modules (lm_head always: transformers never quantizes it)."""
        four = self.bits == 4
        return {
            "quant_method": "bitsandbytes",
            "_load_in_8bit": not four,
            "_load_in_4bit": four,
            "llm_int8_threshold": float(self.threshold),
            "llm_int8_skip_modules": ["lm_head", *kept],
            "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False,
            "bnb_4bit_quant_type": self.quant_type if four else "fp4",
            "bnb_4bit_use_double_quant": bool(self.double_quant) if four else False,
            "bnb_4bit_compute_dtype": self.compute_dtype,
            "bnb_4bit_quant_storage": "uint8",
            "load_in_4bit": four,
            "load_in_8bit": not four,
        }


def row_chunk(shape: tuple[int, int], blocksize: int, target_elems: int = 1 << 22) -> int:
    """Rows per quantization chunk: about target_elems weights (4M: 8 MB of bf16, ~50 MB of bitsandbytes'
    temporaries) and a whole number of 4-bit blocks, so that chunked quantization equals one-shot quantization
    (the last chunk takes whatever rows are left)."""
    import math

    n, k = shape
    step = blocksize // math.gcd(max(k, 1), blocksize)  # fewest rows whose weights fill whole blocks
    return max(step, (target_elems // max(k, 1)) // step * step)


# ---- quantizing one weight (streamed by rows) -----------------------------------------------------------------------
class Quantizer4bit:
    """`rows(w)` quantizes a chunk of rows (pure: chunks may run on several threads) -> (packed bytes, absmax);
    `finish(absmaxes)`, given every chunk's absmax in row order, -> the other tensors of the serialization, exactly
    what QuantState.as_dict(packed=True) holds after a one-shot quantize_4bit of the whole weight."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, spec: QuantSpec):
        self.shape, self.dtype, self.spec = tuple(shape), dtype, spec

    def rows(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if w.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            w = w.float()
        packed, state = bnb().functional.quantize_4bit(w.contiguous(), blocksize=self.spec.blocksize,
                                                       compress_statistics=False, quant_type=self.spec.quant_type,
                                                       quant_storage=torch.uint8)
        return packed.reshape(-1), state.absmax

    def finish(self, stats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        F_ = bnb().functional
        absmax = torch.cat(stats) if len(stats) > 1 else stats[0]
        code = F_.get_4bit_type(self.spec.quant_type, device="cpu")
        common = dict(shape=torch.Size(self.shape), dtype=self.dtype, blocksize=self.spec.blocksize, code=code,
                      quant_type=self.spec.quant_type)
        if self.spec.double_quant:  # as quantize_4bit(compress_statistics=True) does it
            offset = absmax.mean()
            qabsmax, state2 = F_.quantize_blockwise(absmax - offset, blocksize=bnb_format.NESTED_BLOCKSIZE)
            state = F_.QuantState(absmax=qabsmax, offset=offset, state2=state2, **common)
        else:
            state = F_.QuantState(absmax=absmax, **common)
        return {f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}


class Quantizer8bit:
    """LLM.int8() row-wise quantization as bitsandbytes' Int8Params does it (weights cast to fp16, then
    int8_vectorwise_quant): `rows(w)` -> (int8 rows, their absmax = SCB); `finish(scbs)` -> SCB and weight_format."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, spec: QuantSpec):
        self.shape = tuple(shape)

    def rows(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cb, scb, _ = bnb().functional.int8_vectorwise_quant(w.to(torch.float16).contiguous())
        return cb.reshape(-1), scb

    def finish(self, stats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        scb = torch.cat(stats) if len(stats) > 1 else stats[0]
        return {"SCB": scb, "weight_format": torch.tensor(0, dtype=torch.uint8)}


def quantizer(shape, dtype, spec: QuantSpec):
    return (Quantizer4bit if spec.bits == 4 else Quantizer8bit)(shape, dtype, spec)


def weight_shape_on_disk(shape: tuple[int, int], spec: QuantSpec) -> tuple[list[int], str]:
    """Shape and safetensors dtype of the stored `weight` of a quantized linear of `shape`."""
    _, dtype, stored = bnb_format.stored_tensors(shape, spec.bits)[0]
    return stored, dtype


def quantize_weight(w: torch.Tensor, spec: QuantSpec, rows: int | None = None,
                    release: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """The serialization of one linear weight {suffix: tensor}, quantized `rows` rows at a time (default: chunks of
    ~4M values; `rows` must keep chunks on whole 4-bit blocks), each chunk's bytes written straight into the
    result (no second copy of it). `release(start, end)`: called once rows start..end are quantized (a mapped
    source gives their pages back: checkpoint.py's head)."""
    q = quantizer(tuple(w.shape), w.dtype, spec)
    step = rows or row_chunk(tuple(w.shape), spec.blocksize)
    data, stats, at = None, [], 0
    for r in range(0, w.shape[0], step):
        chunk, stat = q.rows(w[r : r + step])
        if data is None:  # every chunk holds the same bytes per row
            data = torch.empty(chunk.numel() * w.shape[0] // min(step, w.shape[0]), dtype=chunk.dtype)
        data[at : at + chunk.numel()] = chunk
        at += chunk.numel()
        stats.append(stat)
        if release is not None:
            release(r, min(r + step, w.shape[0]))
    assert at == data.numel(), "quantized chunks do not cover the weight"
    out = {"weight": data.reshape(-1, 1) if spec.bits == 4 else data.reshape(w.shape)}
    out.update(q.finish(stats))
    return out


def is_quantized_config(raw: dict) -> bool:
    return isinstance(raw.get("quantization_config"), dict)


def int8_head(w: torch.Tensor, threshold: float | None,
              release: Callable[[int, int], None] | None = None) -> QuantLinear8bit | None:
    """The LLM.int8() module a quantized checkpoint runs as its head on CPU, from the float (vocab, hidden) head
    weight `w`: quantized as `cohere quantize` quantizes a linear (quantize_weight, by row chunks: a 256000 x 8192
    head is 2 billion weights; `release` as there). None where `threshold` is None (head_threshold: "float") or `w`
    is not on CPU."""
    if threshold is None or w.device.type != "cpu":
        return None
    spec = QuantSpec(bits=8, threshold=threshold)
    return QuantLinear8bit.from_stored(quantize_weight(w.detach(), spec, release=release), w.shape[1], w.shape[0],
                                       threshold=threshold)


def head_threshold(raw: dict) -> float | None:
    """How a quantized checkpoint's output head runs on CPU: LLM.int8() with this outlier threshold (the
    checkpoint's llm_int8_threshold), or None to keep it in float where config.json says HEAD_KEY: "float"
    (`cohere quantize --head float`). Absent means int8: checkpoints quantized elsewhere run the same way."""
    if raw.get(HEAD_KEY, "int8") == "float":
        return None
    q = raw.get("quantization_config")
    t = q.get("llm_int8_threshold", 6.0) if isinstance(q, dict) else 6.0
    return float(t) if isinstance(t, (int, float)) else 0.0  # null: no outlier decomposition (QuantSpec.read_back)


def replace_linear(model: nn.Module, name: str, stored: dict[str, torch.Tensor], bits: int, bias: torch.Tensor | None,
                   threshold: float, device: torch.device) -> None:
    """Put the quantized module for `stored` (what a checkpoint holds for linear `name`: quantize_weight's output)
    in place of that linear. The one swap: loading a quantized checkpoint and quantizing in memory (bench) both
    end here, so both run the same module."""
    old = model.get_submodule(name)
    if bits == 4:
        new = QuantLinear4bit.from_stored(stored, old.in_features, old.out_features, bias, device)
    else:
        new = QuantLinear8bit.from_stored(stored, old.in_features, old.out_features, bias, threshold, device)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


class QuantizedLoader:
    """Routes the tensors of bitsandbytes-quantized linears, as load_model streams them, into quantized modules.

    Which modules are quantized is read from the safetensors headers up front (a 4-bit module has a
    `weight.quant_state.bitsandbytes__*` tensor, an 8-bit one an `SCB`), so components may arrive in any order
    and even in different shards; each module is built as soon as its last component arrives and its source
    tensors are dropped."""

    def __init__(self, model: nn.Module, raw: dict, files: list[Path], dtype: torch.dtype, device: torch.device,
                 *, names: set[str] | None = None, prefix: str = ""):
        """names: every tensor name of the checkpoint (read from the files' headers when not given); prefix: only
        modules under it are handled (quality.py loads one block at a time)."""
        q = raw["quantization_config"]
        method = q.get("quant_method")
        if method != "bitsandbytes":
            raise CheckpointError(f"config.json: quantization method {method!r} is not supported: only bitsandbytes "
                                  f"(nf4, fp4, int8) checkpoints load, e.g. those written by `cohere quantize`")
        self.model, self.dtype, self.device = model, dtype, torch.device(device)
        self.spec = QuantSpec.read_back(q)
        self.threshold = self.spec.threshold
        self.head_threshold = head_threshold(raw)
        if names is None:
            from cohere_cli.store.sizes import read_safetensors_header

            names = set()
            for f in files:
                try:
                    names |= set(read_safetensors_header(f))
                except (OSError, ValueError) as e:
                    raise CheckpointError(f"{f} is corrupt or truncated ({e}): re-download it") from None
        self.need: dict[str, set[str]] = {}  # module -> component suffixes to collect
        self.kind: dict[str, int] = {}
        for n in names:
            if not n.startswith(prefix):
                continue
            m = bnb_format.QUANT_STATE.match(n)
            if m:
                mod = m.group("mod")
                self.kind[mod] = 4
                comp = {"weight", "weight.absmax", "weight.quant_map", n[len(mod) + 1 :]}
                if f"{mod}.weight.nested_absmax" in names:
                    comp |= {"weight.nested_absmax", "weight.nested_quant_map"}
                self.need[mod] = comp
            elif n.endswith(".SCB"):
                mod = n[: -len(".SCB")]
                self.kind[mod] = 8
                self.need[mod] = {"weight", "SCB"} | ({"weight_format"} if f"{mod}.weight_format" in names else set())
        for mod, bits in sorted(self.kind.items()):
            if bits != self.spec.bits:  # the config and the tensors must tell the same story
                raise CheckpointError(f"config.json says {self.spec.bits}-bit but {mod!r} is stored {bits}-bit: the "
                                      f"checkpoint is inconsistent; re-quantize or re-download it")
        for mod in self.kind:
            try:
                sub = model.get_submodule(mod)
            except AttributeError:
                raise CheckpointError(f"checkpoint quantizes {mod!r}, which this {raw.get('model_type')} model "
                                      f"does not have") from None
            if not isinstance(sub, nn.Linear):
                raise CheckpointError(f"checkpoint quantizes {mod!r}, which is not a linear layer")
            if f"{mod}.bias" in names:
                self.need[mod].add("bias")
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.built = 0

    def _owner(self, key: str) -> tuple[str, str] | None:
        for suffix_start in _dots(key):
            mod = key[:suffix_start]
            if mod in self.kind:
                return mod, key[suffix_start + 1 :]
        return None

    def take(self, key: str, sf, file_key: str | None = None) -> bool:
        """If `key` (the model's name; `file_key` in the file, if different) belongs to a quantized module, read it
        from `sf` and return True (load_model then skips it)."""
        owner = self._owner(key)
        if owner is None:
            return False
        mod, suffix = owner
        comps = self.pending.setdefault(mod, {})
        comps[suffix] = sf.get_tensor(file_key or key)
        if self.need[mod] <= comps.keys():
            self._build(mod, self.pending.pop(mod))
        return True

    def _build(self, mod: str, comps: dict[str, torch.Tensor]) -> None:
        bias = comps.pop("bias", None)
        if bias is not None:
            bias = bias.to(device=self.device, dtype=self.dtype)
        try:
            replace_linear(self.model, mod, comps, self.kind[mod], bias, self.threshold, self.device)
        except (ValueError, KeyError, AssertionError, RuntimeError) as e:
            raise CheckpointError(f"quantized tensor {mod!r}: {e}") from None
        self.built += 1

    def finish(self) -> None:
        if self.pending:
            mod = sorted(self.pending)[0]
            lack = sorted(self.need[mod] - set(self.pending[mod]))
            raise CheckpointError(f"quantized layer {mod!r} lacks {', '.join(lack)}: the checkpoint is incomplete")


def _dots(key: str):
    """Positions of '.' in key, right to left (candidate module/suffix splits)."""
    i = key.rfind(".")
    while i > 0:
        yield i
        i = key.rfind(".", 0, i)


def read_quant_state_json(t: torch.Tensor) -> dict:
    return json.loads(bytes(t.cpu().numpy()).decode("utf-8"))
