"""Where output goes: model text on stdout, everything else (progress, stats, banners, errors) on stderr."""

from __future__ import annotations

import sys
import warnings

from rich.console import Console
from rich.markup import escape

# stderr console for humans; stdout stays clean for model text and --json.
err = Console(stderr=True, highlight=False)


def out_write(text: str) -> None:
    """Write model text to stdout immediately (streaming)."""
    sys.stdout.write(text)
    sys.stdout.flush()


# Messages are plain text: escape them, or a "[...]" in a message (a file name, a hint) vanishes as rich markup.
def info(msg: str) -> None:
    err.print(f"[dim]{escape(msg)}[/dim]", soft_wrap=True)


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(msg)}", soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"[bold red]error:[/bold red] {escape(msg)}", soft_wrap=True)


_show_other_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from cohere_cli.errors import CohereWarning

    if issubclass(category, CohereWarning):
        warn(str(message))
    else:
        _show_other_warning(message, category, filename, lineno, file, line)


def show_warnings() -> None:
    """Library code warns (CohereWarning); a process's entry point calls this once so that each becomes a
    "warning:" line on stderr, every time it is raised (its owner already says it only once where that matters)."""
    from cohere_cli.errors import CohereWarning

    warnings.simplefilter("always", CohereWarning)
    warnings.showwarning = _show_warning
