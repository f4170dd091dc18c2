"""Everything a command needs to run a local model: the checkpoint (resolved through the store), loaded in its
compute dtype, and its tokenizer. One place, so generate, chat and bench load models the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cohere_cli.store import resolve_model
from cohere_cli.engine.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch only once a model is loaded: the commands that import this also serve --endpoint
    from cohere_cli.weights.checkpoint import Loaded


@dataclass
class Runtime:
    name: str
    folder: Path
    loaded: Loaded
    tokenizer: Tokenizer

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

    folder = resolve_model(spec)
    tokenizer = Tokenizer.from_dir(folder)  # first: a missing tokenizer fails before seconds of weight loading
    loaded = load_model(folder, dtype=dtype, device=device)
    return Runtime(spec, folder, loaded, tokenizer)
