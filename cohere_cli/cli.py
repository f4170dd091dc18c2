"""The `cohere` command: a thin Typer layer. Options are declared here; the work lives in cohere_cli.commands.*,
imported inside each command so that `cohere --help` and shell completion never import torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cohere_cli import __version__
from cohere_cli.errors import CohereError

app = typer.Typer(
    name="cohere",
    help="Chat with, quantize and benchmark Cohere's open-weight Command-R family, locally.",
    no_args_is_help=True,
    add_completion=False,  # static scripts live in completions/ (see cohere_cli/completion.py)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        print(f"cohere-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    pass


# ---- shared option types -------------------------------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="Checkpoint folder (HF format) or a name in the store.")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Stop after this many new tokens.")]
Temperature = Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="0 = greedy.")]
TopK = Annotated[int, typer.Option("--top-k", min=0, help="Keep the K most likely tokens (0 = off).")]
TopP = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (1 = off).")]
MinP = Annotated[float, typer.Option("--min-p", min=0.0, max=1.0, help="Drop tokens below P x the top probability.")]
RepPenalty = Annotated[float, typer.Option("--repetition-penalty", min=0.0, help="1 = off.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
Dtype = Annotated[
    str, typer.Option("--dtype", help="Compute dtype: auto|float32|bfloat16|float16 (auto picks the fastest here).")
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of streaming text.")]


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Argument(help="Raw prompt text (BOS is added, no chat template).")],
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.0,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    min_p: MinP = 0.0,
    repetition_penalty: RepPenalty = 1.0,
    seed: Seed = None,
    dtype: Dtype = "auto",
    json_out: Json = False,
) -> None:
    """One-shot completion of raw text. Text streams to stdout, stats to stderr."""
    from cohere_cli.commands.generate import run_generate
    from cohere_cli.sampling import SamplingParams

    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    run_generate(model, prompt, params, max_tokens=max_tokens, dtype=dtype, json_out=json_out)


@app.command()
def chat(
    model: Annotated[Optional[str], typer.Argument(help="Checkpoint folder or store name.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this one turn and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System preamble.")] = None,
    history: Annotated[
        Optional[Path], typer.Option("--history", help='Saved conversation {"messages": [...]} to continue.')
    ] = None,
    template: Annotated[
        Optional[str], typer.Option("--template", help="Named chat template to use (default, tool_use, rag).")
    ] = None,
    max_tokens: MaxTokens = 1024,
    temperature: Temperature = 0.0,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    min_p: MinP = 0.0,
    repetition_penalty: RepPenalty = 1.0,
    seed: Seed = None,
    dtype: Dtype = "auto",
    json_out: Json = False,
) -> None:
    """Chat with a model using its chat template."""
    from cohere_cli.commands.chat import run_chat_once
    from cohere_cli.sampling import SamplingParams

    if model is None:
        raise typer.BadParameter("give MODEL (a checkpoint folder or store name)", param_hint="MODEL")
    if prompt is None:
        from cohere_cli.errors import UsageError

        raise UsageError("the interactive REPL is not built yet: pass --prompt TEXT for a one-shot turn")
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    run_chat_once(
        model, prompt, params, system=system, history=history, template=template,
        max_tokens=max_tokens, dtype=dtype, json_out=json_out,
    )


# ---- the one error boundary ----------------------------------------------------------------------------------------
def main() -> None:
    try:
        app()
    except CohereError as e:
        from cohere_cli.console import error

        error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
