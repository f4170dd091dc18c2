"""The option types `cohere`'s commands share, defined once (cohere_cli.cli uses them). Light: typer and the
sampling bounds only, so that `cohere --help` and shell completion never import torch.

How they show in --help (issue 18): a flag is a flag (`--plain`, not `--plain <bool>`), a repeatable option names
what one occurrence takes (`--doc FILE`, not `--doc <list[Path]>`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from typer.core import TyperOption

from cohere_cli.engine.sampling import BOUNDS

# typer (0.29, pinned in constraints.txt) prints `<bool>` after every flag, --help included, which reads as "takes a
# value": `--plain true`. Patched in one place; a typer without this method keeps its own help text.
_display_type_rich = getattr(TyperOption, "display_type_rich", None)


def _flag_has_no_value(self, ctx):
    return None if self.is_flag else _display_type_rich(self, ctx)


if _display_type_rich is not None:
    TyperOption.display_type_rich = _flag_has_no_value


def Flag(*decls: str, help: str):  # noqa: N802  (reads like typer.Option)
    """A boolean option that takes no value."""
    return typer.Option(*decls, help=help)  # a bool option is a flag already


def Repeatable(*decls: str, metavar: str, help: str):  # noqa: N802
    """A list option given once per value: shown as `--doc FILE`, with "(repeatable)" in its help."""
    return typer.Option(*decls, metavar=metavar, help=help)


ModelArg = Annotated[str, typer.Argument(help="Checkpoint folder (HF format) or a name in the store.")]


class Choices:
    """The values an option takes, declared once. It is the option's typer `parser`: a value not among them is the
    one-line `error: --bits must be 4 or 8 (got '3')` of every usage error (exit 2), before the command runs; its
    `metavar` is what --help shows (`<4|8>`); its `words` are what the shell completion scripts offer
    (cohere_cli/completion.py finds it on the option). comma=True: a comma-separated list of them (`bf16,nf4`),
    `aliases` accepted as items too, and the text passed on as given (the command normalizes it)."""

    def __init__(self, option: str, values: tuple, *, comma: bool = False, aliases: tuple[str, ...] = (),
                 metavar: str | None = None):
        self.option, self.values, self.comma = option, values, comma
        self.words = tuple(str(v) for v in values)
        self.accepted = self.words + tuple(aliases)
        self.metavar = metavar or ("LIST" if comma else f"<{'|'.join(self.words)}>")

    def _one_of(self) -> str:
        return " or ".join(self.words) if len(self.words) < 3 else "one of " + ", ".join(self.words)

    def __call__(self, value):
        from cohere_cli.errors import UsageError

        if value is None or value in self.values:  # typer passes the default through too
            return value
        text = str(value).strip()
        if not self.comma:
            for v, w in zip(self.values, self.words):
                if w == text.lower():
                    return v
            raise UsageError(f"{self.option} must be {self._one_of()} (got {text!r})")
        for item in (x.strip().lower() for x in text.split(",")):
            if item and item not in self.accepted:
                raise UsageError(f"{self.option} {item!r} is not one of {', '.join(self.words)}")
        return text


def Choice(choices: Choices, *decls: str, help: str):  # noqa: N802  (reads like typer.Option)
    """An option that takes one of `choices` (or, comma=True, a list of them)."""
    return typer.Option(*decls, parser=choices, metavar=choices.metavar, help=help)


# the values quantize (weights/quant.py QuantSpec.validate) and bench (bench/run.py ALL_PRECISIONS) accept, written
# out here so that --help and completion import neither; tests/test_completion.py checks that they agree
BITS = Choices("--bits", (4, 8))
QUANT_TYPES = Choices("--quant-type", ("nf4", "fp4"))
BLOCKSIZES = Choices("--blocksize", (32, 64, 128, 256, 512, 1024, 2048, 4096), metavar="<32..4096>")
PRECISIONS = Choices("--precision", ("bf16", "fp32", "fp16", "int8", "nf4", "fp4"), comma=True,
                     aliases=("bfloat16", "float32", "float16", "int4"))
Bits = Annotated[int, Choice(BITS, "--bits", help="4 (nf4/fp4) or 8 (LLM.int8).")]
QuantType = Annotated[str, Choice(QUANT_TYPES, "--quant-type", help="4-bit data type: nf4 or fp4.")]
Blocksize = Annotated[int, Choice(BLOCKSIZES, "--blocksize", help="4-bit weights per scale (absmax) block: a power of 2, 32 to 4096.")]
Precisions = Annotated[
    Optional[str],
    Choice(PRECISIONS, "--precision", help="Comma-separated, of bf16, fp32, fp16, int8, nf4, fp4 (default "
           "bf16,int8,nf4; a quantized checkpoint: its own). One not in the store is quantized in memory."),
]


def _bounded(key: str, *decls: str, help: str):
    """An option whose range is engine.sampling.BOUNDS[key], the table SamplingParams and /set check too."""
    lo, hi = BOUNDS[key]
    return typer.Option(*decls, min=lo, max=hi, help=help)


# Optional: `chat` leaves them None (not given: generation_config.json's value applies), `generate` defaults them.
MaxTokens = Annotated[Optional[int], _bounded("max_tokens", "--max-tokens", "-n",
                                              help="Stop after this many new tokens.")]
Temperature = Annotated[Optional[float], _bounded("temperature", "--temperature", "-t", help="0 = greedy.")]
TopK = Annotated[Optional[int], _bounded("top_k", "--top-k", help="Keep the K most likely tokens (0 = off).")]
TopP = Annotated[Optional[float], _bounded("top_p", "--top-p", help="Nucleus sampling mass (1 = off).")]
MinP = Annotated[Optional[float], _bounded("min_p", "--min-p", help="Drop tokens below P x the top probability.")]
RepPenalty = Annotated[Optional[float], _bounded("repetition_penalty", "--repetition-penalty", help="1 = off.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
Dtype = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],
    typer.Option("--dtype", help="Compute dtype (auto picks the fastest on this machine and says which)."),
]
Json = Annotated[bool, Flag("--json", help="Print one JSON object on stdout instead of streaming text.")]
JsonReport = Annotated[bool, Flag("--json", help="Print one JSON object on stdout.")]
PromptFile = Annotated[
    Optional[Path],
    typer.Option("--prompt-file", "-f", metavar="FILE", help="Read the prompt from FILE (a regular file, at most "
                 "4 MiB; trailing newlines dropped). PROMPT `-` reads it from stdin."),
]
# an OpenAI-compatible server instead of a local model (issue #8)
Endpoint = Annotated[
    Optional[str],
    typer.Option("--endpoint", metavar="URL", help="Use an OpenAI-compatible server (vLLM, TGI, llama.cpp, "
                 "transformers serve), e.g. http://gpu-box:8000/v1, instead of a local model. MODEL is then "
                 "optional: a local copy that lends its tokenizer and templates."),
]
ApiKey = Annotated[
    Optional[str], typer.Option("--api-key", envvar="COHERE_CLI_API_KEY", help="Bearer token for --endpoint.")
]
ServedModel = Annotated[
    Optional[str],
    typer.Option("--served-model", metavar="NAME", help="Model to ask --endpoint for (default: the one it serves)."),
]
Timeout = Annotated[
    float, typer.Option("--timeout", metavar="SECONDS", min=0.1, help="Longest time without progress from --endpoint: until it answers, then between chunks of text (keep-alive comments do not count).")
]
Tools = Annotated[
    Optional[list[str]],
    Repeatable("--tools", metavar="FILE", help="Tools the model may call (repeatable): a JSON list of OpenAI-format "
               "tools, each with an optional \"exec\" argv; a .py file whose functions become tools; or the "
               "built-in list_models. Each call is shown and confirmed (y/N/always) unless --yes."),
]
# reasoning (issue 19): templates with a thinking phase (engine/thinking.py)
Think = Annotated[
    Optional[bool],
    typer.Option("--think/--no-think", help="Turn the model's thinking on or off, where its chat template has a "
                 "switch (a reasoning template's `reasoning`); default: the template's own.", show_default=False),
]
ThinkBudget = Annotated[
    Optional[int],
    typer.Option("--think-budget", metavar="N", min=0, max=1 << 20, help="End thinking after N tokens: the "
                 "end-of-thinking token is put in as the model's next token (a local model only)."),
]
HideThinking = Annotated[bool, Flag("--hide-thinking", help="Do not show the model's thinking: one line says how "
                                    "long it was (--json still records it).")]
