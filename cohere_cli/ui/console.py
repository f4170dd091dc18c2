"""Where output goes: model text on stdout, everything else (progress, stats, banners, errors) on stderr."""

from __future__ import annotations

import sys
import warnings

from rich.console import Console
from rich.markup import escape

from cohere_cli.untrusted import inert

# stderr console for humans; stdout stays clean for model text and --json.
err = Console(stderr=True, highlight=False)


def out_write(text: str) -> None:
    """Write model text to stdout immediately (streaming). On a terminal the text is made inert (a model or server
    may send escape sequences); piped or redirected, it is written byte for byte."""
    sys.stdout.write(inert(text) if _stdout_is_tty() else text)
    sys.stdout.flush()


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def shown(text: str) -> str:
    """Untrusted text (a file name, a server's message, a model id) ready for rich markup: inert, then escaped, so
    neither a terminal escape sequence nor a "[...]" (which rich would take as markup) survives."""
    return escape(inert(str(text)))


# Messages are plain text that may quote untrusted text (file names, server errors): every one is shown().
def info(msg: str) -> None:
    err.print(f"[dim]{shown(msg)}[/dim]", soft_wrap=True)


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {shown(msg)}", soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"[bold red]error:[/bold red] {shown(msg)}", soft_wrap=True)


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
