"""`cohere models` (list), `cohere models rm`, `cohere models info`, `cohere models verify`: what the store holds.
Tables and reports go to stdout (they are the command's output); notes, prompts and progress to stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path


from cohere_cli import store
from cohere_cli.store import sizes
from cohere_cli.store.staging import clean_published, remove_staging, staging_lock
from cohere_cli.ui.console import err, info, warn, shown
from cohere_cli.errors import ModelNotFound, StoreError, UsageError
from cohere_cli.untrusted import inert, is_confined


def _stdout_console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _revision(e: store.Entry) -> str:
    if e.manifest.get("parent"):
        return f"from {e.manifest['parent']}"
    commit = e.commit
    return commit[:12] if commit else "-"


def _entry_json(e: store.Entry) -> dict:
    m = e.manifest
    return {
        "name": e.name, "path": str(e.path), "architecture": m.get("architecture"), "model_type": m.get("model_type"),
        "parameters": m.get("parameters"), "precision": m.get("precision"), "storage_dtype": m.get("storage_dtype"),
        "size_bytes": e.size_on_disk(), "source": m.get("source"), "parent": m.get("parent"),
        "created_at": m.get("created_at"), "builtin": False,
    }


def _builtin_json() -> dict | None:
    """The built-in demo as `cohere models` lists it (unless a store entry named exactly `demo` hides it)."""
    folder = store.builtin_entry(store.DEMO)
    if folder is None or store.get_entry(store.DEMO) is not None:
        return None
    cfg = _read_config(folder)
    try:
        stats = sizes.tensor_stats(sizes.checkpoint_files(folder))
        params, storage = stats.parameters, stats.storage_dtype
    except (OSError, ValueError):
        params, storage = None, None
    return {"name": store.DEMO, "builtin": True, "path": str(folder),
            "architecture": (cfg.get("architectures") or [None])[0], "model_type": cfg.get("model_type"),
            "parameters": params, "precision": sizes.precision_of(cfg, storage), "storage_dtype": storage,
            "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()), "source": None,
            "parent": None, "created_at": None}


def run_list(json_out: bool = False) -> None:
    entries = store.list_entries()
    demo = _builtin_json()
    by_name = {e.name: e for e in entries}
    for p in store.list_partials():  # the leftovers of a download published just before a kill -9
        if p.name in by_name:
            clean_published(p.path, by_name[p.name].commit, by_name[p.name].files)
    partials = store.list_partials()
    if json_out:
        print(json.dumps({
            "store": str(store.store_root()),
            "models": ([demo] if demo else []) + [_entry_json(e) for e in entries],
            "incomplete": [{"name": p.name, "path": str(p.path), "bytes": p.bytes_on_disk} for p in partials],
        }, indent=2))
    else:
        from rich.table import Table

        t = Table(box=None, pad_edge=False, header_style="bold")
        for col, kw in (("NAME", {}), ("ARCHITECTURE", {}), ("PARAMS", {"justify": "right"}), ("PRECISION", {}),
                        ("SIZE", {"justify": "right"}), ("REVISION", {})):
            t.add_column(col, **kw)
        if demo:
            t.add_row(demo["name"], str(demo["architecture"] or demo["model_type"] or "?"),
                      sizes.human_params(demo["parameters"]), str(demo["precision"] or "?"),
                      sizes.human_bytes(demo["size_bytes"]), "built-in")
        for e in entries:
            m = e.manifest
            t.add_row(shown(e.name), shown(str(m.get("architecture") or m.get("model_type") or "?")),
                      sizes.human_params(m.get("parameters")), shown(str(m.get("precision") or "?")),
                      sizes.human_bytes(e.size_on_disk()), shown(_revision(e)))
        _stdout_console().print(t)
        if not entries:
            info(f"the store ({store.store_root()}) is empty: `cohere download CohereLabs/c4ai-command-r7b-12-2024` "
                 "fetches a model")
    if not json_out:
        for p in partials:
            warn(f"incomplete download {p.name} ({sizes.human_bytes(p.bytes_on_disk)} kept): "
                 f"`cohere download {p.info.get('repo_id') or p.name}` resumes it, "
                 f"`cohere models rm --partial {p.name}` discards it")


# ---- rm ------------------------------------------------------------------------------------------------------------
def run_rm(name: str, yes: bool = False, partial: bool = False) -> None:
    """Remove a published store entry (never an arbitrary folder), or with `partial` only the kept parts of an
    incomplete download of that name: two commands, so discarding one can never delete the other."""
    if partial:
        target = _partial_named(name)
        if target is None:
            raise ModelNotFound(f"no incomplete download named '{name}': `cohere models` lists them")
        what, size = f"the incomplete download of {target.name}", target.bytes_on_disk
    else:
        entry, exact = _rm_target(name)
        what, size = entry.name, entry.size_on_disk()
        if not exact:  # a short form: never removed on --yes alone (`ollama rm` takes only a model's own name)
            if yes or not sys.stdin.isatty():
                raise UsageError(f"'{name}' is not the name of a store entry, only part of {entry.name}: "
                                 f"`cohere models rm {entry.name}` removes it")
            info(f"'{name}' matches the store entry {shown(entry.name)}")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not removing {what} without confirmation: pass --yes")
        import typer

        if not typer.confirm(f"remove {shown(what)} ({sizes.human_bytes(size)}) from the store?", default=False,
                             err=True):
            info("nothing removed")
            raise typer.Exit(1)
    if partial:
        # The staging lock: a download running right now keeps its parts (it would die mid-write otherwise).
        busy = StoreError(f"a `cohere download` of {target.name} is running: stop it first, then remove its parts")
        with staging_lock(target.path, target.name, busy=busy):
            remove_staging(target.path)
    else:
        store.remove_entry(entry.name)
    err.print(f"removed {shown(what)} ({sizes.human_bytes(size)} freed)", highlight=False)


def _rm_target(name: str) -> tuple[store.Entry, bool]:
    """The entry `rm NAME` would remove, and whether NAME is its exact name (full, folder or repo part)."""
    exact = store.get_entry(name)
    if exact is not None:
        return exact, True
    if store.builtin_entry(name) is not None:
        raise UsageError(f"{name} is the built-in demo model, part of the package: there is nothing to remove")
    m = store.match_entry(name)
    if m is None:
        left = _partial_named(name)
        if left is not None:
            raise ModelNotFound(f"no store entry named '{name}', only an incomplete download: `cohere models rm "
                                f"--partial {left.name}` discards it")
        raise ModelNotFound(f"no store entry named '{name}': `cohere models` lists them")
    return m


def _partial_named(name: str) -> store.Partial | None:
    key = name.strip().strip("/").lower()
    return next((p for p in store.list_partials() if key in (p.name.lower(), p.path.name.lower())), None)


# ---- info ----------------------------------------------------------------------------------------------------------
def _locate(model: str) -> tuple[Path, dict | None, str]:
    """MODEL -> (folder, manifest or None, display name), through the store's one resolver (store.locate); a short
    form is said to stderr with the entry it resolved to."""
    loc = store.locate(model)
    if loc.entry is not None:
        if not loc.exact:
            info(f"{model}: the store entry {shown(loc.entry.name)} (the only one it matches)")
        return loc.folder, loc.entry.manifest, loc.entry.name
    return loc.folder, store.read_manifest(loc.folder), store.DEMO if loc.builtin else str(loc.folder)


def _read_config(folder: Path) -> dict:
    from cohere_cli.config import read_config_json
    from cohere_cli.errors import CheckpointError

    try:
        return read_config_json(folder)
    except CheckpointError as e:
        raise StoreError(str(e)) from None


def config_summary(cfg: dict) -> dict:
    """The architecture-relevant fields of a Cohere/Cohere2 config.json, in one spelling."""
    d = sizes.Dims.from_config(cfg)
    c = cfg.get("text_config") if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict) else cfg
    rope = c.get("rope_parameters") if isinstance(c.get("rope_parameters"), dict) else {}  # untrusted: any type
    archs = c.get("architectures") or cfg.get("architectures")
    return {
        "model_type": d.model_type,
        "architectures": [a for a in archs if isinstance(a, str)] or None if isinstance(archs, list) else None,
        "hidden_size": d.hidden, "intermediate_size": d.intermediate, "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads, "head_dim": d.head_dim,
        "vocab_size": d.vocab, "max_position_embeddings": d.max_position_embeddings,
        "sliding_window": d.sliding_window, "sliding_layers": sum(d.sliding),
        "rope_theta": _number(c.get("rope_theta", rope.get("rope_theta"))), "logit_scale": _number(c.get("logit_scale")),
        "use_qk_norm": d.qk_norm, "tie_word_embeddings": d.tied,
        "dtype": next((v for v in (c.get("torch_dtype"), c.get("dtype")) if isinstance(v, str)), None),
        "experts": d.experts or None, "experts_per_token": d.experts_per_tok or None,
        "sparse_layers": sum(d.sparse) if d.sparse else None,
    }


def _number(v) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def run_info(model: str, seq: int = 8192, json_out: bool = False) -> None:
    folder, manifest, name = _locate(model)
    cfg = _read_config(folder)
    try:
        summary = config_summary(cfg)
        d = sizes.Dims.from_config(cfg)
    except ValueError as e:
        raise StoreError(f"{folder / 'config.json'}: {e}") from None
    params = (manifest or {}).get("parameters")
    stored = None
    try:
        stats = sizes.tensor_stats(sizes.checkpoint_files(folder))
        params = params or stats.parameters or None
        stored = sum(stats.bytes_by_dtype.values())
        storage_dtype = stats.storage_dtype
    except (OSError, ValueError):
        storage_dtype = None
    precision = (manifest or {}).get("precision") or sizes.precision_of(cfg, storage_dtype)
    can = capabilities(folder)
    kv = sizes.kv_cache_bytes(d, seq)
    memory = {
        "weights_bytes": {p: sizes.weights_bytes(d, p) for p in ("bf16", "int8", "nf4")},
        # what one token reads: all of a dense model, a MoE's attention and chosen + shared experts
        "weights_read_per_token_bytes": {p: sizes.weights_bytes(d, p, active=True) for p in ("bf16", "int8", "nf4")},
        "weights_as_stored_bytes": stored,
        "kv_cache": {"seq": seq, "bytes": kv, "bytes_per_token": sizes.kv_cache_bytes(d, 1), "dtype": "bf16"},
    }
    if json_out:
        print(json.dumps({"name": name, "path": str(folder), "manifest": manifest, "config": summary,
                          "parameters": params, "precision": precision, "capabilities": can, "memory": memory},
                         indent=2))
        return
    out = []
    out.append(f"{name}")
    out.append(f"  path          {folder}")
    if manifest:
        src = manifest.get("source") or {}
        if src.get("repo_id"):
            out.append(f"  source        {src.get('repo_id')} @ {src.get('revision')} (commit {src.get('commit')})")
        if manifest.get("parent"):
            out.append(f"  derived from  {manifest['parent']}")
        q = manifest.get("quantization")
        if q:
            out.append(f"  quantization  {q.get('method', 'bitsandbytes')} {q.get('quant_type') or ''} "
                       f"{q.get('bits')}-bit, blocksize {q.get('blocksize')}, double quant {q.get('double_quant')}, "
                       f"compute {q.get('compute_dtype')}; unquantized: "
                       f"{', '.join(q.get('unquantized') or []) or 'none'}")
        out.append(f"  created       {manifest.get('created_at')}")
        listed = store.Entry(name, folder, manifest).files
        out.append(f"  files         {len(listed)}, {sizes.human_bytes(sum(_size(f) for f in listed.values()))}"
                   if listed else "  files         (none listed)")
    else:
        out.append("  manifest      none (not a store entry)")
    out.append(f"  architecture  {(summary['architectures'] or ['?'])[0]} ({summary['model_type']})")
    out.append(f"  parameters    {sizes.human_params(params)} ({params if params else '?'})")
    out.append(f"  precision     {precision or '?'} (stored as {storage_dtype or '?'})")
    out += _capability_lines(can)
    if manifest and manifest.get("quality"):
        from cohere_cli.bench.quality import format_report

        out += format_report(manifest["quality"], parent=manifest.get("parent"))
    out.append("config")
    out.append(f"  hidden {d.hidden}, intermediate {d.intermediate}, layers {d.layers}, heads {d.heads}, "
               f"kv heads {d.kv_heads}, head_dim {d.head_dim}, vocab {d.vocab}")
    window = (f"sliding window {d.sliding_window} on {sum(d.sliding)} of {d.layers} layers"
              if d.sliding_window else "no sliding window")
    out.append(f"  max_position_embeddings {d.max_position_embeddings}, {window}")
    out.append(f"  rope_theta {summary['rope_theta']}, logit_scale {summary['logit_scale']}, "
               f"qk_norm {d.qk_norm}, tied embeddings {d.tied}")
    if d.sparse:
        shared = f", shared experts of {d.shared_intermediate} in all" if d.shared_intermediate else ""
        out.append(f"  experts {d.experts} of {d.intermediate} (top-{d.experts_per_tok}{shared}) on {sum(d.sparse)} "
                   f"of {d.layers} layers; dense layers' intermediate {d.dense_intermediate or '-'}")
    out.append("memory")
    out.append("  weights       " + " | ".join(f"{p} {sizes.human_bytes(b)}" for p, b in memory["weights_bytes"].items())
               + (f" (as stored: {sizes.human_bytes(stored)})" if stored else ""))
    if d.sparse:
        out.append("  read/token    " + " | ".join(f"{p} {sizes.human_bytes(b)}"
                                                   for p, b in memory["weights_read_per_token_bytes"].items())
                   + f" ({sizes.human_params(sizes.param_counts(d).active().total)} active parameters)")
    cap = f", sliding layers capped at {d.sliding_window} positions" if d.sliding_window else ""
    out.append(f"  KV cache      {sizes.human_bytes(kv)} at {seq} tokens, bf16 "
               f"({sizes.human_bytes(sizes.kv_cache_bytes(d, 1))} per token{cap})")
    print(inert("\n".join(out)))  # manifest fields (names, sources) are untrusted text


def capabilities(folder: Path) -> dict:
    """What the model's chat templates can render, read from its template files (no weights, no tokenizer.json):
    the template names, the one that renders documents (grounded answers, `chat --doc`) and tools, or None."""
    from cohere_cli.engine.tokenizer import documents_template, read_chat_templates, tools_template
    from cohere_cli.errors import TokenizerError

    try:
        templates = read_chat_templates(folder)
    except TokenizerError as e:
        return {"chat_templates": None, "documents": None, "tools": None, "error": str(e)}
    return {"chat_templates": sorted(templates), "documents": documents_template(templates),
            "tools": tools_template(templates)}


def _capability_lines(can: dict) -> list[str]:
    from cohere_cli.engine.tokenizer import GROUNDING_MODELS

    if can["chat_templates"] is None:
        return [f"  templates     unreadable: {can['error']}"]
    names = can["chat_templates"]
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return [
        f"  templates     {listed or 'none (raw completion only: cohere generate)'}",
        f"  documents     yes: `cohere chat --doc FILE` grounds answers (its {can['documents']!r} template)"
        if can["documents"] else f"  documents     no: its chat template has no documents (RAG) path; models that "
                                 f"have one: {GROUNDING_MODELS}",
        f"  tools         yes (its {can['tools']!r} template)" if can["tools"] else
        "  tools         no: its chat template has no tools path",
    ]


def _size(record: dict) -> int:
    """A manifest record's size; 0 when the (untrusted) manifest says something that is not a byte count."""
    v = record.get("size")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


# ---- verify --------------------------------------------------------------------------------------------------------
def run_verify(model: str, json_out: bool = False) -> None:
    folder, manifest, name = _locate(model)
    files = store.Entry(name, folder, manifest or {}).files
    if not files:
        raise StoreError(f"{name} has no manifest.json with file checksums: only store entries can be verified")
    total = sum(_size(f) for f in files.values())
    problems: list[str] = []
    bars = None
    if err.is_terminal and not json_out:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        bars = Progress("verifying", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err,
                        transient=True)
        task = bars.add_task("verify", total=total)
        bars.start()
    try:
        for rel, rec in files.items():
            if not is_confined(folder, rel):  # a tampered manifest: never hash (or follow) a path outside
                problems.append(f"the manifest names {inert(repr(rel))[:200]}, a path outside {name}")
                continue
            p = folder / rel
            if not p.is_file():
                problems.append(f"{rel} is missing")
                continue
            size = p.stat().st_size
            if size != rec.get("size"):
                problems.append(f"{rel} has {size} bytes, the manifest says {rec.get('size')}")
                continue
            digest = store.sha256_file(p, (lambda n: bars.update(task, advance=n)) if bars else None)
            if digest != rec.get("sha256"):
                problems.append(f"{rel} has sha256 {digest[:12]}..., the manifest says {str(rec.get('sha256'))[:12]}...")
    finally:
        if bars is not None:
            bars.stop()
    listed = set(files) | {store.MANIFEST}
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.relative_to(folder).as_posix() not in listed and not p.name.startswith("."))
    if json_out:
        print(json.dumps({"name": name, "path": str(folder), "files": len(files), "bytes": total,
                          "ok": not problems, "problems": problems, "unlisted": extra}, indent=2))
    for rel in extra:
        warn(f"{rel} is in {name} but not in its manifest")
    if problems:
        src = manifest.get("source") or {}
        fix = (f"`cohere models rm {name}` then `cohere download {src['repo_id']} --revision {src.get('commit')}`"
               if src.get("repo_id") else f"remove it with `cohere models rm {name}` and rebuild it")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreError(f"{name} does not match its manifest: {problems[0]}{more}; to repair: {fix}")
    if not json_out:
        err.print(f"[green]ok[/green]: {shown(name)}: {len(files)} files, {sizes.human_bytes(total)} match the "
                  "manifest", highlight=False)
