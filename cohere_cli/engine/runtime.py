"""Everything a command needs to run a local model: the checkpoint (resolved through the store), loaded in its
compute dtype, and its tokenizer. One place, so generate, chat and bench load models the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cohere_cli.config import read_config_json
from cohere_cli.store import locate
from cohere_cli.store.sizes import SHORT_PRECISION, precision_of
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
        """One line for the user: what was loaded, the weights' precision (nf4, int8 for a quantized checkpoint) and
        the dtype it computes in and why, and how long it took."""
        dt = str(self.loaded.dtype).removeprefix("torch.")
        quantized = precision_of(self.loaded.raw_config, None)  # None unless the weights are quantized
        what = f"{quantized} ({SHORT_PRECISION.get(dt, dt)} compute, {self.loaded.dtype_reason})" if quantized \
            else f"{dt} ({self.loaded.dtype_reason})"
        return f"{self.name}: {self.loaded.config.model_type}, {what}, loaded in {self.loaded.load_seconds:.2f}s"


@dataclass
class Checkpoint:
    """MODEL resolved to a checkpoint folder that has a config.json; nothing loaded yet."""
    name: str  # to show
    folder: Path
    key: str  # the resolved name to record as last used


def find_checkpoint(spec: str) -> Checkpoint:
    """MODEL -> its checkpoint folder, with the check every command makes first (config.read_config_json): a
    folder without config.json is not a checkpoint folder, whatever else it lacks."""
    loc = locate(spec)
    read_config_json(loc.folder)
    # the resolved name (entry, `demo`, or the folder's absolute path), not a short form: what `chat` records
    return Checkpoint(loc.name if loc.entry is not None or loc.builtin else spec, loc.folder, loc.name)


def load_runtime(spec: str | Checkpoint, dtype: str = "auto", device: str = "cpu") -> Runtime:
    from cohere_cli.weights.checkpoint import load_model

    ck = spec if isinstance(spec, Checkpoint) else find_checkpoint(spec)
    tokenizer = Tokenizer.from_dir(ck.folder)  # first: a missing tokenizer fails before seconds of weight loading
    loaded = load_model(ck.folder, dtype=dtype, device=device)
    return Runtime(ck.name, ck.folder, loaded, tokenizer, key=ck.key)
