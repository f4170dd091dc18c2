"""Where output goes: model text on stdout, everything else (progress, stats, banners, errors) on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# stderr console for humans; stdout stays clean for model text and --json.
err = Console(stderr=True, highlight=False)


def out_write(text: str) -> None:
    """Write model text to stdout immediately (streaming)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def info(msg: str) -> None:
    err.print(f"[dim]{msg}[/dim]", soft_wrap=True)


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {msg}", soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"[bold red]error:[/bold red] {msg}", soft_wrap=True)
