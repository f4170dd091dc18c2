"""safetensors for the weights layer: every header entry checked against its file (`entries`), tensors read into
memory of their own or viewed in a private map (`Reader`: what load_model and bench's quality streaming read), the
parent's tensors located and memory-mapped for quantizing (`scan`, `MappedFiles`), and shards written front to back
without holding them in memory (`ShardWriter`). The header itself is read by cohere_cli/store/sizes.safetensors_header,
the one reader."""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from cohere_cli.errors import CheckpointError
from cohere_cli.store import sizes

ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}
ELEM = {k: sizes.DTYPE_BYTES[k] for k in ST_DTYPES}  # bytes per element
PAGE = mmap.PAGESIZE


# ---- reading ------------------------------------------------------------------------------------------------------
@dataclass
class Src:
    name: str
    file: Path
    dtype: str  # safetensors spelling
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor table, absolute offset of the data section) of a .safetensors file; CheckpointError when unreadable."""
    try:
        return sizes.safetensors_header(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}): re-download it") from None


def entries(path: Path) -> list[Src]:
    """The tensors of one .safetensors file in data order, each checked against the file (untrusted: a known
    dtype, a shape of non-negative integers, offsets inside the file whose span is the shape's size); a
    CheckpointError ("corrupt or truncated") where anything does not add up."""
    header, base = read_header(path)
    size = path.stat().st_size
    items = []
    for name, t in header.items():
        try:
            dtype, (a, b) = t["dtype"], t["data_offsets"]
            numel = sizes.shape_numel(t["shape"])  # -1: not a shape (bounded: see shape_numel)
            ok = numel >= 0 and dtype in sizes.DTYPE_BYTES and all(type(o) is int and o >= 0 for o in (a, b)) \
                and a <= b
            why = "" if ok and (b - a) == numel * sizes.DTYPE_BYTES[dtype] else "an inconsistent entry"
            shape = tuple(t["shape"])
        except (KeyError, TypeError, ValueError):
            why = "an unreadable entry"
        if not why and base + b > size:
            why = "an entry that ends past the end of the file"
        if why:
            raise CheckpointError(f"{path} is corrupt or truncated ({why}: tensor {str(name)[:100]!r}): "
                                  f"re-download it")
        items.append(Src(name, path, dtype, shape, base + a, base + b))
    return sorted(items, key=lambda s: s.start)


def scan(files: list[Path]) -> list[Src]:
    """Every tensor of a checkpoint's `files` (checkpoint.weight_files), in file order then data order (sequential
    reads)."""
    return [src for f in files for src in entries(f)]


class Reader:
    """The tensors of one .safetensors file, each read into memory of its own (`get_tensor`), or viewed in a
    private map of the file (`mapped`). Why not safetensors' safe_open: its tensors are views of one map of the
    whole file, so every page loading touched stays in the resident set for as long as any tensor of the file
    lives, beside the copies fuse() and pack() make (the 2.5 GB bf16 1.2B model peaked at 6.3 GB). A read copy is
    the only copy; the page cache it came through is not the process' memory."""

    def __init__(self, path: Path):
        self.path = path
        self.src = {s.name: s for s in entries(path)}
        self.file = open(path, "rb")
        self.map: mmap.mmap | None = None

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()  # a map, once made, lives as long as the tensors viewing it

    def keys(self) -> list[str]:
        return list(self.src)

    def dtype(self, key: str) -> torch.dtype | None:
        return ST_DTYPES.get(self.src[key].dtype)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.src[key].shape

    def get_tensor(self, key: str) -> torch.Tensor:
        s = self.src[key]
        if s.dtype not in ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} is stored as {s.dtype}, which this tool does not "
                                  f"read")
        buf = torch.empty(s.nbytes, dtype=torch.uint8)
        view, done = memoryview(buf.numpy()), 0
        self.file.seek(s.start)
        while done < s.nbytes:
            n = self.file.readinto(view[done:])
            if not n:
                raise CheckpointError(f"{self.path} is corrupt or truncated (it ended inside tensor {key!r}): "
                                      f"re-download it")
            done += n
        return buf.view(ST_DTYPES[s.dtype]).view(s.shape)

    def mapped(self, key: str) -> torch.Tensor:
        """Tensor `key` as a read-only view of a private map of the file (never written back): only the pages
        touched become resident, and release_rows() gives them back."""
        s = self.src[key]
        if self.map is None:
            self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_COPY)
        with warnings.catch_warnings():  # the map is private and we never write through the view
            warnings.simplefilter("ignore")
            dtype = ST_DTYPES[s.dtype]
            t = torch.frombuffer(self.map, dtype=dtype, count=s.nbytes // ELEM[s.dtype], offset=s.start)
        return t.view(s.shape)


def release_rows(t: torch.Tensor, start: int, end: int) -> None:
    """Drop the pages holding rows start..end of `t`, a view of a file map (Reader.mapped), from the resident set:
    they stay in the page cache and are read back if touched again. Only whole pages inside the range."""
    row = t.stride(0) * t.element_size()
    _advise(-(-(t.data_ptr() + start * row) // PAGE) * PAGE, (t.data_ptr() + end * row) // PAGE * PAGE, 4)  # DONTNEED


def random_rows(t: torch.Tensor) -> None:
    """Tell the kernel that `t`, a view of a file map, is read a row here and there (MADV_RANDOM): a page fault
    then reads that page alone, not the readahead window around it. For the embedding the tied head leaves mapped:
    a 512-token prompt touches up to 512 of its rows, and with readahead each fault brought in ~128 KB of
    neighbours (the 1.25B int8 model peaked ~100 MB higher for prompts of random tokens than for tokens < 1000)."""
    _advise(t.data_ptr() // PAGE * PAGE, -(-(t.data_ptr() + t.numel() * t.element_size()) // PAGE) * PAGE, 1)


def _advise(a: int, b: int, advice: int) -> None:
    """madvise(a, b - a, advice) where there is one; nothing otherwise (it is advice)."""
    import ctypes

    if b > a:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), advice)


class MappedFiles:
    """Read-only maps of the parent's files. `view` gives a zero-copy tensor over a byte range; `release` drops the
    range's pages from this process (they stay in the page cache), which keeps the resident set at what is being
    worked on rather than everything read so far."""

    def __init__(self):
        self.maps: dict[Path, tuple] = {}

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self.maps:
            f = open(path, "rb")
            self.maps[path] = (f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return self.maps[path][1]

    def view(self, path: Path, start: int, end: int, dtype: torch.dtype, shape) -> torch.Tensor:
        mm = self._map(path)
        with warnings.catch_warnings():  # the map is read-only and we never write through the view
            warnings.simplefilter("ignore")
            count = (end - start) // torch.empty(0, dtype=dtype).element_size()
            t = torch.frombuffer(mm, dtype=dtype, count=count, offset=start)
        return t.view(shape)

    def bytes(self, path: Path, start: int, end: int) -> memoryview:
        return memoryview(self._map(path))[start:end]

    def release(self, path: Path, start: int, end: int) -> None:
        mm = self._map(path)
        a = start // PAGE * PAGE
        with contextlib.suppress(OSError, ValueError, AttributeError):
            mm.madvise(mmap.MADV_DONTNEED, a, end - a)

    def close(self) -> None:
        for f, mm in self.maps.values():
            with contextlib.suppress(BufferError, ValueError):
                mm.close()
            f.close()
        self.maps.clear()


@dataclass
class OutTensor:
    name: str
    dtype: str
    shape: list[int]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ELEM[self.dtype]


# ---- writing -------------------------------------------------------------------------------------------------------
class ShardWriter:
    """Writes one .safetensors file front to back. The header's room is reserved from the planned tensors (offsets
    counted at 16 digits, the quant_state JSON at its maximum length) and the real header, padded with spaces, is
    written over it at the end."""

    def __init__(self, path: Path, planned: list[OutTensor]):
        self.path = path
        self.planned = {o.name: o for o in planned}
        worst = {"__metadata__": {"format": "pt"}}
        for o in planned:
            worst[o.name] = {"dtype": o.dtype, "shape": o.shape, "data_offsets": [10**15, 10**15]}
        self.room = -(-(len(json.dumps(worst, separators=(",", ":"))) + 64) // 8) * 8
        self.f = open(path, "wb")
        self.f.seek(8 + self.room)
        self.offset = 0
        self.entries: dict[str, dict] = {}
        self.deferred: list[tuple[str, torch.Tensor]] = []
        self._open: tuple[str, str, list[int], int] | None = None

    # streamed tensor: begin, write pieces, end
    def begin(self, name: str, dtype: str, shape: list[int]) -> None:
        assert self._open is None and self.offset % ELEM[dtype] == 0, f"{name} would be misaligned"
        self._open = (name, dtype, list(shape), self.offset)

    def write(self, buf) -> None:
        self.f.write(buf)
        self.offset += len(buf) if not isinstance(buf, memoryview) else buf.nbytes

    def end(self) -> None:
        name, dtype, shape, start = self._open
        self._open = None
        assert self.offset - start == math.prod(shape) * ELEM[dtype], f"{name}: wrote {self.offset - start} bytes"
        self.entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, self.offset]}

    def put(self, name: str, t: torch.Tensor) -> None:
        """A whole tensor; those whose size is not a multiple of 8 bytes wait for the end of the shard."""
        t = t.detach().contiguous().cpu()
        if t.numel() * t.element_size() % 8:
            self.deferred.append((name, t))
            return
        self._put_now(name, t)

    def _put_now(self, name: str, t: torch.Tensor) -> None:
        self.begin(name, ST_NAMES[t.dtype], list(t.shape))
        if t.numel():
            self.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.end()

    def close(self) -> None:
        for name, t in sorted(self.deferred, key=lambda x: -x[1].element_size()):
            self._put_now(name, t)
        self.deferred = []
        if set(self.entries) != set(self.planned):
            missing = sorted(set(self.planned) - set(self.entries))
            raise AssertionError(f"shard {self.path.name}: planned tensors not written: {missing[:3]}")
        header = {"__metadata__": {"format": "pt"}, **self.entries}
        blob = json.dumps(header, separators=(",", ":")).encode()
        assert len(blob) <= self.room, "safetensors header outgrew its reserved room"
        self.f.seek(0)
        self.f.write(struct.pack("<Q", self.room) + blob + b" " * (self.room - len(blob)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
