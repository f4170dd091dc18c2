"""Thinking as the user sees it (issue 19): dimmed on stderr, apart from the answer on stdout; or hidden with
--hide-thinking, one line saying how long it was. Used by the tool view and by `chat --prompt`'s printing."""

from __future__ import annotations

from cohere_cli.ui.console import err, info, shown


class ThinkingNote:
    """Thinking as it streams: dimmed on stderr, set apart from the answer (which goes to stdout); with
    --hide-thinking not shown, and one line at the end says how long it was."""

    def __init__(self, hide: bool):
        self.hide, self.count = hide, 0

    def show(self, text: str) -> bool:
        """Show a piece of thinking (one per token as it streams); whether it was written."""
        if not text:
            return False
        self.count += 1
        if self.hide:
            return False
        err.print(f"[dim italic]{shown(text)}[/dim italic]", end="", soft_wrap=True)
        return True

    def close(self) -> None:
        if self.hide and self.count:
            info(f"(thought for {self.count} token{'s' * (self.count != 1)}; --hide-thinking)")
        self.count = 0
