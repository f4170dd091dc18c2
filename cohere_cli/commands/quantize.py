"""`cohere quantize MODEL`: a float checkpoint -> a new bitsandbytes nf4/fp4/int8 store entry (or folder), with a
quality report against the parent. The work is in cohere_cli.weights.quantize (streaming) and cohere_cli.bench.quality."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from cohere_cli import store
from cohere_cli.ui.console import err, info, warn
from cohere_cli.errors import QuantizeError, TokenizerError


def _progress(in_bytes: bool = True):
    """A transient progress bar on stderr (nothing when stderr is not a terminal)."""
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    return Progress(TextColumn("{task.description}"), BarColumn(), *counts, TimeRemainingColumn(), console=err,
                    transient=True, disable=not err.is_terminal)


def _entry_of(folder: Path) -> store.Entry | None:
    """The store entry whose folder is `folder`, if MODEL named one."""
    try:
        folder = folder.resolve()
        return next((e for e in store.list_entries() if e.path.resolve() == folder), None)
    except OSError:
        return None


def run_quantize(model: str, *, bits: int, quant_type: str, blocksize: int, double_quant: bool, keep: list[str],
                 output: str | None, force: bool, no_eval: bool, head: str = "int8") -> None:
    from cohere_cli import __version__
    from cohere_cli.store import sizes
    from cohere_cli.weights.quant import QuantSpec
    from cohere_cli.weights.quantize import (check_disk, check_parent, default_name, folder_tmpdir, looks_like_path,
                                             make_plan, manifest_record, quantize_checkpoint, scan, weight_files)

    spec = QuantSpec(bits=bits, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant,
                     keep=list(keep or []), head=head)
    spec.validate()
    loc = store.locate(model)
    parent = loc.folder
    entry = loc.entry or _entry_of(parent)
    # the parent as `bench` and `models` look it up: the entry's name, `demo` (not the package's install path)
    parent_name = entry.name if entry else loc.name
    check_parent(parent)  # already quantized? (one line, before any work)
    plan = make_plan(scan(weight_files(parent)), spec)
    for g in spec.keep:
        if not any(fnmatchcase(m, g) or fnmatchcase(m + ".weight", g) for m in plan.kept):
            warn(f"--keep {g!r} matches no attention/MLP linear: nothing is kept because of it")

    if output is not None and looks_like_path(output):
        dest = Path(output).expanduser()
        name = dest.name
        if dest.exists() and dest.resolve() == parent.resolve():
            raise QuantizeError(f"--output {output} is MODEL itself: write the quantized model somewhere else")
        ctx = folder_tmpdir(dest, replace=force)
        where = dest.absolute()
    else:
        name = output or default_name(entry.name if entry else parent.name, spec)
        where = store.entry_path(name)  # also validates the name
        if (where.exists() or store.get_entry(name) is not None) and not force:
            raise QuantizeError(f"the store already has '{name}': pass --force to replace it, or --output to "
                                f"choose another name")
        ctx = store.entry_tmpdir(name, replace=force)
    check_disk(plan, parent, where.parent)

    four = spec.bits == 4
    what = (f"{spec.quant_type}, blocksize {spec.blocksize}, double quant {'on' if spec.double_quant else 'off'}"
            if four else f"int8 (LLM.int8, outlier threshold {spec.threshold})")
    info(f"quantizing {parent_name} ({plan.parent_dtype}, {sizes.human_bytes(plan.parent_bytes)}) to {what}: "
         f"{len(plan.quantized)} linears, {len(plan.kept)} kept")
    report = None
    with ctx as tmp:
        with _progress() as bar:
            task = bar.add_task("quantizing", total=plan.parent_bytes)
            result = quantize_checkpoint(parent, tmp, spec, plan=plan,
                                         progress=lambda done, _name: bar.update(task, completed=done))
        info(f"quantized {sizes.human_bytes(result.parent_bytes)} -> {sizes.human_bytes(result.out_bytes)} in "
             f"{result.seconds:.1f} s ({result.gb_per_s:.2f} GB/s)")
        if not no_eval:
            report = _evaluate(tmp, parent)
        quantization = manifest_record(spec, plan, result, parent_name, tool=f"cohere-cli {__version__}")
        manifest = store.make_manifest(tmp, name=name, parent=parent_name, precision=spec.precision,
                                       quantization=quantization, quality=report.to_dict() if report else None)
        store.write_manifest(tmp, manifest)
    print(f"wrote {name} ({where}): {sizes.human_bytes(result.parent_bytes)} {plan.parent_dtype} -> "
          f"{sizes.human_bytes(result.out_bytes)} {spec.precision}, {result.seconds:.1f} s "
          f"({result.gb_per_s:.2f} GB/s)")
    if report is not None:
        print("\n".join(report.lines(parent_name)))


def _evaluate(folder: Path, parent: Path):
    """The quality report, or None with a warning when the model has no usable tokenizer."""
    from cohere_cli.bench.quality import evaluate

    with _progress(in_bytes=False) as bar:
        task = bar.add_task("evaluating (layers of both models)", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            return evaluate(folder, parent, progress=tick)
        except (TokenizerError, ValueError) as e:
            warn(f"no quality report: {e} (--no-eval skips it)")
            return None
