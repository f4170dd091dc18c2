"""The built-in `list_models` tool (`cohere chat --tools list_models`): what is installed here, as text for a model."""

from __future__ import annotations

from cohere_cli import store
from cohere_cli.untrusted import one_line


def installed_models() -> list[dict]:
    """The models installed locally, as records: the built-in demo (unless a store entry takes its name), then the
    store's entries."""
    models = []
    if store.builtin_entry(store.DEMO) is not None and store.get_entry(store.DEMO) is None:
        models.append({"name": store.DEMO, "builtin": True, "description": "the small demo model shipped with cohere"})
    for e in store.list_entries():
        m = e.manifest
        models.append({"name": e.name, "builtin": False, "architecture": m.get("architecture"),
                       "parameters": m.get("parameters"), "precision": m.get("precision")})
    return models


def models_text(models: list[dict]) -> str:
    """list_models' result: every name on the first line, in one span ("3 installed models: a, b, c"), then a line
    of details per model. Why not JSON: the answer to "which models do I have?" is that first line, and a model
    copies a contiguous span far more reliably than names scattered through records (the 8M demo learns the one
    and not the other)."""
    if not models:
        return "0 installed models"
    names = [_field(m["name"]) for m in models]
    lines = [f"{len(models)} installed model{'s' if len(models) != 1 else ''}: " + ", ".join(names)]
    for name, m in zip(names, models):
        if m.get("builtin"):
            details = ["built-in", m.get("description")]
        else:
            n = m.get("parameters")
            size = None if not isinstance(n, int) or isinstance(n, bool) else (
                f"{n / 1e9:.1f}B parameters" if n >= 10**9 else f"{n / 1e6:.1f}M parameters" if n >= 10**6 else
                f"{n} parameters")
            details = [m.get("architecture"), size, m.get("precision")]
        lines.append(f"- {name}: " + (", ".join(_field(d) for d in details if d) or "no details"))
    return "\n".join(lines)


def _field(value) -> str:
    """A manifest's text (untrusted) as one inert piece of a line: no newline to forge a line with, no comma to
    forge a name with, at most MAX_FIELD characters (a huge name would crowd out the others)."""
    return one_line(value, MAX_FIELD).replace(",", ";")


MAX_FIELD = 200


def list_models() -> str:
    """The models installed locally: the store's entries and the built-in demo."""
    return models_text(installed_models())
