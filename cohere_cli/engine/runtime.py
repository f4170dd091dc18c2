"""Everything a command needs to run a local model: the checkpoint (resolved through the store), loaded in its
compute dtype, and its tokenizer. One place, so generate, chat and bench load models the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cohere_cli.store import locate
from cohere_cli.engine.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch only once a model is loaded: the commands that import this also serve --endpoint
    from cohere_cli.weights.checkpoint import Loaded


@dataclass
class Runtime:
    name: str
    folder: Path
    loaded: Loaded
    tokenizer: Tokenizer
    key: str = ""  # the resolved name to record as last used: an entry's name, `demo`, an absolute path

    @property
    def model(self):
        return self.loaded.model

    @property
    def context(self) -> int:
        return self.loaded.config.max_position_embeddings

    def summary(self) -> str:
        """One line for the user: what was loaded, in which dtype and why, and how long it took."""
        dt = str(self.loaded.dtype).removeprefix("torch.")
        return (f"{self.name}: {self.loaded.config.model_type}, {dt} ({self.loaded.dtype_reason}), "
                f"loaded in {self.loaded.load_seconds:.2f}s")


def load_runtime(spec: str, dtype: str = "auto", device: str = "cpu") -> Runtime:
    from cohere_cli.weights.checkpoint import load_model

    loc = locate(spec)
    folder = loc.folder
    tokenizer = Tokenizer.from_dir(folder)  # first: a missing tokenizer fails before seconds of weight loading
    loaded = load_model(folder, dtype=dtype, device=device)
    # the resolved name (entry, `demo`, or the folder's absolute path), not a short form: what `chat` records
    return Runtime(loc.name if loc.entry is not None or loc.builtin else spec, folder, loaded, tokenizer,
                   key=loc.name)
