"""The local checkpoint store (placeholder: paths only until the store lands)."""

from __future__ import annotations

from pathlib import Path

from cohere_cli.errors import ModelNotFound


def resolve_model(spec: str) -> Path:
    """MODEL as given on the command line -> a checkpoint folder."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    raise ModelNotFound(f"no checkpoint folder or store entry named '{spec}': give a folder with config.json")
