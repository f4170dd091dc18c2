"""bitsandbytes' serialization of a quantized linear, as transformers writes it and loads it: the one spelling of
the on-disk format (no torch). `cohere quantize` plans its shards from it (weights/quantize.py), the loader finds
quantized modules by it (weights/quant.py) and the store counts parameters with it (sizes.py).

    4-bit: weight (U8 [n*k/2, 1], two codes per byte), weight.absmax (F32 per block, or U8 when double-quantized,
           with weight.nested_absmax F32 per 256 blocks and weight.nested_quant_map F32 [256]),
           weight.quant_map (F32 [16]), weight.quant_state.bitsandbytes__nf4|fp4 (U8: the QuantState JSON)
    8-bit: weight (I8 [n, k]), SCB (F32 [n]: each row's absmax), weight_format (U8 scalar, 0 = row-major)"""

from __future__ import annotations

import re

NESTED_BLOCKSIZE = 256  # bitsandbytes' double quantization of absmax (fixed in quantize_4bit)
QS_JSON_MAX = 999  # room for the quant_state JSON (it is ~180 bytes)
QUANT_STATE = re.compile(r"^(?P<mod>.+)\.weight\.quant_state\.bitsandbytes__(?P<type>nf4|fp4)$")
# the tensors holding quantization state rather than parameters
AUX_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format")


def quant_state_suffix(quant_type: str) -> str:
    return f"weight.quant_state.bitsandbytes__{quant_type}"


def stored_tensors(shape: tuple[int, int], bits: int, quant_type: str = "nf4", blocksize: int = 64,
                   double_quant: bool = True) -> list[tuple[str, str, list[int]]]:
    """(name under the module, safetensors dtype, shape) of every tensor one quantized linear of `shape` (out, in)
    stores, the weight first."""
    n, k = shape
    if bits == 8:
        return [("weight", "I8", [n, k]), ("SCB", "F32", [n]), ("weight_format", "U8", [])]
    blocks = -(-n * k // blocksize)
    out = [("weight", "U8", [(n * k + 1) // 2, 1])]
    if double_quant:
        out += [("weight.absmax", "U8", [blocks]), ("weight.quant_map", "F32", [16]),
                ("weight.nested_absmax", "F32", [-(-blocks // NESTED_BLOCKSIZE)]),
                ("weight.nested_quant_map", "F32", [256])]
    else:
        out += [("weight.absmax", "F32", [blocks]), ("weight.quant_map", "F32", [16])]
    return out + [(quant_state_suffix(quant_type), "U8", [QS_JSON_MAX])]
