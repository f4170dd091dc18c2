"""Loading keeps one resident copy of every weight (checkpoint.load_model): tensors are read into memory of their
own (safetensors.Reader), never left on a map of the file; each block is fused and packed as it completes; the
embedding and the head's source stay in the file, mapped, and the head is packed from the map chunk by chunk with
each chunk's pages given back (layout.packed_head). Figures for real models: benchmarks/vs_llamacpp.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from cohere_cli.errors import CheckpointError
from cohere_cli.weights import layout
from cohere_cli.weights.checkpoint import load_model
from cohere_cli.weights.safetensors import Reader
from factory_checkpoint import make_checkpoint

VOCAB = 384
PACKS_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def file_resident_kib(path: Path) -> int:
    """Resident KiB of this process' maps of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[5] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def vm_flags_at(addr: int) -> list[str]:
    """The VmFlags of this process' map holding address `addr` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(v, 16) for v in head[0].split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("VmFlags:"):
            return head[1:]
    return []


def rewrite_header(f: Path, edit) -> None:
    """Edit the JSON header of safetensors file `f` in place (same length, padded with spaces)."""
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= n
    f.write_bytes(raw[:8] + blob.ljust(n) + raw[8 + n :])


@pytest.mark.parametrize("edit, why", [
    (lambda h: h["model.norm.weight"].update(dtype="Q9"), "inconsistent entry"),
    (lambda h: h["model.norm.weight"].update(shape=[3, -1]), "inconsistent entry"),
    (lambda h: h["model.norm.weight"].update(data_offsets=[0, 10**12]), "inconsistent entry"),
    (lambda h: h["model.norm.weight"].update(shape="64"), "inconsistent entry"),
    (lambda h: h["model.norm.weight"].pop("data_offsets"), "unreadable entry"),
])
def test_a_forged_header_entry_is_refused_before_any_read(tmp_path, edit, why):
    """Every entry of a header (untrusted) is checked against the file before a byte is read: a dtype we do not
    know, a shape that is not a list of sizes, offsets whose span is not the shape's size or that end past the
    file."""
    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB)
    rewrite_header(tmp_path / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=f"corrupt or truncated \\(an? {why}: tensor 'model.norm.weight'\\)"):
        load_model(tmp_path)


def test_the_reader_gives_each_tensor_memory_of_its_own(tmp_path):
    from safetensors.torch import load_file

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype="bfloat16")
    f = tmp_path / "model.safetensors"
    with Reader(f) as r:
        got = {k: r.get_tensor(k) for k in r.keys()}
    assert file_resident_kib(f) == 0  # nothing of the file is mapped
    stored = load_file(f)
    assert got.keys() == stored.keys()
    for k, t in got.items():
        assert torch.equal(t, stored[k]) and t.dtype == stored[k].dtype, k
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), k  # not a view of a shared buffer


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
@pytest.mark.parametrize("tied", [True, False])
def test_after_loading_the_file_pages_packing_touched_are_given_back(tmp_path, tied):
    """The pages of the checkpoint file that packing the head touched are given back: right after load_model, what
    is resident of the file is a small part of its 16 MiB embedding (and head): the partial pages at the ends and
    what the kernel maps around them (fault-around, large page-cache folios: up to a few MiB), not the matrices.
    Without release_rows all of them stay resident."""
    vocab, hidden = 32768, 256  # a 16 MiB bf16 embedding
    make_checkpoint(tmp_path, tokenizer=False, vocab=vocab, hidden=hidden, layers=1, intermediate=256,
                    dtype="bfloat16")
    if not tied:
        from safetensors.torch import load_file, save_file

        sd = load_file(tmp_path / "model.safetensors")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone() * 2
        save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
        del sd
        cfg = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    f = tmp_path / "model.safetensors"
    model = load_model(tmp_path, dtype="bfloat16").model
    emb = model.model.embed_tokens.weight
    assert getattr(emb, "file_backed", False)  # the lookups read the file
    assert "rr" in vm_flags_at(emb.data_ptr() + emb.numel())  # row by row: no readahead around each row (MADV_RANDOM)
    assert all(not getattr(p, "file_backed", False) for n, p in model.named_parameters() if "embed_tokens" not in n)
    if PACKS_BF16:
        assert file_resident_kib(f) <= (4 << 10) * (1 if tied else 2), "the packed head's source pages stayed"
        with torch.inference_mode():
            model(torch.tensor([[7, 30000]]))
        assert torch.equal(emb[30000], emb[30000])  # rows read from the file


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_head_packed_in_chunks_gives_the_logits_of_one_piece(tmp_path, monkeypatch, dtype, uncoded):
    """HeadChunks (a head over HEAD_CHUNK_BYTES, packed in row chunks so loading never holds it twice): the same
    logits, bit for bit, as the head packed in one piece, for a prompt and a decode step. (A bf16 head the coded
    kernel takes is coded chunk by chunk into one module instead: tests/test_coded.py.)"""
    if dtype == "bfloat16" and not PACKS_BF16:
        pytest.skip("oneDNN has no bf16 kernels on this CPU: nothing is packed")
    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype=dtype)  # stored as computed: the head packs
    one = load_model(tmp_path, dtype=dtype).model
    monkeypatch.setattr(layout, "HEAD_CHUNK_BYTES", 100 * 64 * torch.empty((), dtype=getattr(torch, dtype)).element_size())
    chunked = load_model(tmp_path, dtype=dtype).model
    assert isinstance(chunked.lm_head, layout.HeadChunks)
    assert [p.out_features for p in chunked.lm_head.parts] == [100, 100, 100, 84]
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(one(ids), chunked(ids))
        assert torch.equal(one(ids[:, :1]), chunked(ids[:, :1]))


def test_row_sums_are_exact():
    from cohere_cli.weights.qlinear import _row_sums

    cb = torch.randint(-128, 128, (1000, 256), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_row_sums(cb), cb.sum(1, dtype=torch.int32))


def test_quantize_weight_releases_each_chunk_once_in_order():
    """quantize_weight writes each chunk into the result and calls `release` for its rows (the mapped head's pages
    are given back as it goes): the rows covered once, in order, and the result that of one-shot quantization."""
    from cohere_cli.weights.quant import QuantSpec, quantize_weight

    w = torch.randn(300, 128, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    spec = QuantSpec(bits=8, threshold=6.0)
    seen: list[tuple[int, int]] = []
    chunked = quantize_weight(w, spec, rows=64, release=lambda a, b: seen.append((a, b)))
    assert seen == [(0, 64), (64, 128), (128, 192), (192, 256), (256, 300)]
    whole = quantize_weight(w, spec, rows=300)
    assert chunked.keys() == whole.keys() and all(torch.equal(chunked[k], whole[k]) for k in whole)


def test_a_forged_shape_is_refused_in_bounded_time(tmp_path):
    """A shape of a million huge dimensions (a 20 MB header) is refused at once: its product as a Python integer
    would take hours (quadratic), and a zero-size entry of the right dtype does not reach the map."""
    import time

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB)
    f = tmp_path / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["model.norm.weight"]["shape"] = [10**18] * 1_000_000
    blob = json.dumps(header, separators=(",", ":")).encode()
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path)
    assert time.perf_counter() - t < 60  # seconds of JSON parsing at most, not the hours of the product

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, dtype="bfloat16")
    rewrite_header(tmp_path / "model.safetensors",
                   lambda h: h.update({"model.embed_tokens.weight": {**h["model.embed_tokens.weight"], "shape": [0, 64],
                                       "data_offsets": [0, 0]}}))
    with pytest.raises(CheckpointError, match=r"'model.embed_tokens.weight' has shape \(0, 64\)"):
        load_model(tmp_path, dtype="bfloat16")


def test_a_tensor_stored_twice_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    make_checkpoint(tmp_path, tokenizer=False, vocab=VOCAB, max_shard_size="150KB")
    files = sorted(tmp_path.glob("*.safetensors"))
    first = load_file(files[0])
    key = next(iter(first))
    last = load_file(files[-1])
    last[key] = first[key]
    save_file(last, files[-1], metadata={"format": "pt"})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    with pytest.raises(CheckpointError, match="a second time"):
        load_model(tmp_path)
    assert index["weight_map"][key] == files[0].name
