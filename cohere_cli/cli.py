"""The `cohere` command: a thin Typer layer. Options are declared here; the work lives in cohere_cli.commands.*,
imported inside each command so that `cohere --help` and shell completion never import torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

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
    from cohere_cli.ui.console import show_warnings

    show_warnings()  # library code warns; here, at the one boundary, each warning becomes a "warning:" line


from cohere_cli.commands.options import (  # noqa: E402  the shared option types, defined once
    ApiKey, Bits, Blocksize, Dtype, Endpoint, Flag, Json, JsonReport, MaxTokens, MinP, ModelArg, Precisions,
    PromptFile, QuantType, Repeatable, RepPenalty, Seed, ServedModel, Temperature, Timeout, Tools, TopK, TopP,
    HideThinking, Think, ThinkBudget,
)


def _endpoint(url, api_key, served_model, timeout):
    from cohere_cli.remote.backend import EndpointOptions

    return EndpointOptions(url, api_key, served_model, timeout) if url else None


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[
        Optional[str], typer.Argument(help="Raw prompt text (BOS is added, no chat template); - or a pipe: stdin.",
                                      show_default=False)
    ] = None,
    prompt_file: PromptFile = None,
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.0,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    min_p: MinP = 0.0,
    repetition_penalty: RepPenalty = 1.0,
    seed: Seed = None,
    dtype: Dtype = "auto",
    json_out: Json = False,
    endpoint: Endpoint = None,
    api_key: ApiKey = None,
    served_model: ServedModel = None,
    timeout: Timeout = 120.0,
) -> None:
    """One-shot completion of raw text. Text streams to stdout, stats to stderr.

    With --endpoint, `cohere generate --endpoint URL PROMPT` (or MODEL PROMPT, MODEL lending its tokenizer)."""
    from cohere_cli.commands.generate import run_generate
    from cohere_cli.commands.prompt_input import resolve_prompt, stdin_is_piped
    from cohere_cli.errors import UsageError
    from cohere_cli.engine.sampling import SamplingParams

    if prompt is None and prompt_file is None:
        if endpoint:
            model, prompt = None, model  # `generate --endpoint URL PROMPT`
        elif stdin_is_piped():
            prompt = "-"  # `echo q | cohere generate MODEL`
        else:
            raise UsageError("missing PROMPT: cohere generate MODEL PROMPT (or - for stdin, or --prompt-file FILE)")
    prompt = resolve_prompt(prompt, prompt_file, what="PROMPT")
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    run_generate(model, prompt, params, max_tokens=max_tokens, dtype=dtype, json_out=json_out,
                 endpoint=_endpoint(endpoint, api_key, served_model, timeout))


@app.command()
def chat(
    model: Annotated[
        Optional[str], typer.Argument(help="Checkpoint folder or store name (default: the last one used, else demo).")
    ] = None,
    prompt_arg: Annotated[Optional[str], typer.Argument(
        metavar="PROMPT", help="Answer this one turn and exit, like --prompt (- reads stdin).", show_default=False)
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this one turn and exit "
                                                  "(- reads it from stdin).")] = None,
    prompt_file: PromptFile = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System preamble.")] = None,
    history: Annotated[
        Optional[Path], typer.Option("--history", help='Saved conversation {"messages": [...]} to continue.')
    ] = None,
    template: Annotated[
        Optional[str], typer.Option("--template", help="Named chat template (default, tool_use, rag).")
    ] = None,
    doc: Annotated[
        Optional[list[Path]], Repeatable("--doc", metavar="FILE", help="Attach a document for grounded answers "
                                         "(repeatable).")
    ] = None,
    citations: Annotated[
        Literal["accurate", "fast"], typer.Option("--citations", help="Grounded-answer mode (Command R rag template).")
    ] = "accurate",
    plain: Annotated[bool, Flag("--plain", help="Print raw text instead of rendered Markdown.")] = False,
    on_overflow: Annotated[
        Literal["drop", "error"],
        typer.Option("--on-overflow", help="When the context is full: drop the oldest turns, or refuse."),
    ] = "drop",
    ctx: Annotated[
        Optional[int], typer.Option("--ctx", min=16, help="Context to allocate (default: the model's, at most 8192).")
    ] = None,
    max_tokens: MaxTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    min_p: MinP = None,
    repetition_penalty: RepPenalty = None,
    seed: Seed = None,
    dtype: Dtype = "auto",
    json_out: Json = False,
    endpoint: Endpoint = None,
    api_key: ApiKey = None,
    served_model: ServedModel = None,
    timeout: Timeout = 120.0,
    tools: Tools = None,
    yes: Annotated[bool, Flag("--yes", "-y", help="Run the model's tool calls without asking (this session).")] = False,
    max_steps: Annotated[
        int, typer.Option("--max-steps", min=1, max=100, help="Rounds of tool calls per message, at most.")
    ] = 5,
    think: Think = None,
    think_budget: ThinkBudget = None,
    hide_thinking: HideThinking = False,
) -> None:
    """Chat with a model using its own chat template: an interactive session, or one turn with --prompt.

    Sampling defaults come from the model's generation_config.json; the options here override them.
    With --endpoint the answers come from that server; documents (--doc) are rendered here with MODEL's template."""
    from cohere_cli.commands.chat import ChatOptions, run_chat
    from cohere_cli.commands.prompt_input import resolve_prompt
    from cohere_cli.engine.sampling import SamplingOverrides
    from cohere_cli.errors import UsageError

    if prompt_arg is not None and prompt is not None:
        raise UsageError("give the prompt once: PROMPT or --prompt, not both")
    prompt = resolve_prompt(prompt if prompt_arg is None else prompt_arg, prompt_file, what="PROMPT/--prompt")
    run_chat(ChatOptions(
        model=model, prompt=prompt, system=system, history=history, template=template, docs=doc or [],
        citations=citations, plain=plain, on_overflow=on_overflow, ctx=ctx, max_tokens=max_tokens, dtype=dtype,
        json_out=json_out, sampling=SamplingOverrides(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                                      repetition_penalty=repetition_penalty, seed=seed),
        endpoint=endpoint, api_key=api_key, served_model=served_model, timeout=timeout, tools=tools or [], yes=yes,
        max_steps=max_steps, think=think, think_budget=think_budget, hide_thinking=hide_thinking,
    ))


# ---- the checkpoint store: download, models (issue #4) -------------------------------------------------------------


@app.command()
def download(
    repo_id: Annotated[str, typer.Argument(help="Hub repo, e.g. CohereLabs/c4ai-command-r7b-12-2024.")],
    revision: Annotated[
        Optional[str], typer.Option("--revision", "-r", help="Branch, tag or commit (default: main).")
    ] = None,
    include: Annotated[
        Optional[list[str]],
        Repeatable("--include", metavar="GLOB", help="Fetch files matching GLOB (repeatable; replaces the default set)."),
    ] = None,
    exclude: Annotated[
        Optional[list[str]], Repeatable("--exclude", metavar="GLOB", help="Skip files matching GLOB (repeatable).")
    ] = None,
    token: Annotated[
        Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN, else `hf auth login`).")
    ] = None,
    dry_run: Annotated[
        bool, Flag("--dry-run", help="Show files, sizes, free disk and memory needed; fetch nothing.")
    ] = False,
    max_workers: Annotated[
        int, typer.Option("--max-workers", min=1, max=64, help="Parallel connections (big files in ranges).")
    ] = 8,
    json_out: JsonReport = False,
) -> None:
    """Fetch a checkpoint into the store: resumable, parallel, verified.

    Run it again after Ctrl-C, a crash or a dropped link and it continues from the bytes on disk.
    Prints the entry's folder on stdout."""
    from cohere_cli.commands.download import run_download

    run_download(
        repo_id, revision=revision, include=include, exclude=exclude, token=token, dry_run=dry_run,
        max_workers=max_workers, json_out=json_out,
    )


models_app = typer.Typer(
    name="models", help="What the store holds ($COHERE_CLI_HOME, else ~/.cache/cohere-cli).", no_args_is_help=False
)
app.add_typer(models_app, name="models")
StoreName = Annotated[str, typer.Argument(help="Store name or unambiguous short form (see `cohere models`).")]


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, json_out: JsonReport = False) -> None:
    """List the store: name, architecture, parameters, precision, size on disk, source revision."""
    if ctx.invoked_subcommand is None:
        from cohere_cli.commands.models import run_list

        run_list(json_out=json_out)


@models_app.command("rm")
def models_rm(
    name: StoreName,
    yes: Annotated[bool, Flag("--yes", "-y", help="Do not ask for confirmation.")] = False,
    partial: Annotated[bool, Flag("--partial", help="Remove only the kept parts of an incomplete download "
                                          "of NAME (never the published entry).")] = False,
) -> None:
    """Delete a published entry from the store (with --partial: an incomplete download's parts)."""
    from cohere_cli.commands.models import run_rm

    run_rm(name, yes=yes, partial=partial)


@models_app.command("info")
def models_info(
    model: ModelArg,
    seq: Annotated[int, typer.Option("--seq", min=1, help="Context length for the KV cache estimate.")] = 8192,
    json_out: JsonReport = False,
) -> None:
    """Manifest, config summary, and the memory the weights and the KV cache need."""
    from cohere_cli.commands.models import run_info

    run_info(model, seq=seq, json_out=json_out)


@models_app.command("verify")
def models_verify(model: ModelArg, json_out: JsonReport = False) -> None:
    """Re-hash every file of an entry against its manifest."""
    from cohere_cli.commands.models import run_verify

    run_verify(model, json_out=json_out)


# ---- quantize (issue #5) --------------------------------------------------------------------------------------------
@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="Checkpoint folder or store name (default: the built-in demo).")] = "demo",
    bits: Bits = 4,
    quant_type: QuantType = "nf4",
    blocksize: Blocksize = 64,
    double_quant: Annotated[
        bool, typer.Option("--double-quant/--no-double-quant", help="Quantize the 4-bit scales too (~0.4 bit/weight).")
    ] = True,
    keep: Annotated[
        Optional[list[str]],
        typer.Option("--keep", metavar="NAME_GLOB", help="Leave matching linears unquantized (repeatable), "
                     "e.g. 'model.layers.0.*' or '*.down_proj'."),
    ] = None,
    head: Annotated[
        Literal["int8", "float"],
        typer.Option("--head", help="Output head on CPU: int8 (built at load; ~2x faster per token on the head) "
                     "or float (the stored weights as they are, as transformers runs them)."),
    ] = "int8",
    output: Annotated[
        Optional[str],
        typer.Option("--output", "-o", metavar="NAME_OR_PATH",
                     help="Store name, or folder path, for the result (default: MODEL's name + -nf4/-fp4/-int8)."),
    ] = None,
    force: Annotated[bool, Flag("--force", help="Replace an existing output.")] = False,
    no_eval: Annotated[bool, Flag("--no-eval", help="Skip the quality report against the parent.")] = False,
) -> None:
    """Quantize a float checkpoint to nf4/fp4 or int8 with bitsandbytes, streamed tensor by tensor.

    Writes a new store entry (or folder) that transformers can load too.
    Ends with a quality report against the parent (perplexity, KL divergence, top-1 agreement) unless --no-eval."""
    from cohere_cli.commands.quantize import run_quantize

    run_quantize(
        model, bits=bits, quant_type=quant_type, blocksize=blocksize, double_quant=double_quant, keep=keep or [],
        head=head, output=output, force=force, no_eval=no_eval,
    )


# ---- bench (issue #7) -----------------------------------------------------------------------------------------------
@app.command()
def bench(
    model: Annotated[
        str, typer.Argument(help="Checkpoint folder or store name (default: the built-in demo model).")
    ] = "demo",
    seq: Annotated[
        int, typer.Option("--seq", min=3, help="Prefill this many tokens and decode at this context (<= the model's).")
    ] = 8192,
    gen: Annotated[int, typer.Option("--gen", min=2, help="Decode steps timed per run.")] = 128,
    precision: Precisions = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs after a warm-up (median, spread).")] = 3,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help="CPU threads (default: torch's, one per core).")
    ] = None,
    device: Annotated[
        Literal["auto", "cpu", "cuda"], typer.Option("--device", help="Where to run (auto: CUDA when present).")
    ] = "auto",
    json_out: Annotated[bool, Flag("--json", help="Print one self-describing JSON record on stdout.")] = False,
    compare_to: Annotated[
        Optional[Path], typer.Option("--compare-to", metavar="FILE", help="Print the change against an earlier "
                                     "`bench --json` record.")
    ] = None,
    endpoint: Annotated[
        Optional[str],
        typer.Option("--endpoint", metavar="URL", help="Benchmark an OpenAI-compatible server instead (e.g. "
                     "http://gpu-box:8000/v1): time to first token, decode and aggregate tokens/s per concurrency "
                     "level. MODEL is then optional (a local tokenizer); --seq is the prompt length, --gen the "
                     "tokens generated per request."),
    ] = None,
    api_key: ApiKey = None,
    served_model: ServedModel = None,
    concurrency: Annotated[
        str, typer.Option("--concurrency", metavar="LIST", help="With --endpoint: comma-separated numbers of "
                          "requests in flight, e.g. 1,4,16 (max(4, 2 x N) requests per level).")
    ] = "1",
    timeout: Timeout = 120.0,
) -> None:
    """Measure prefill, time to first token, decode speed and peak memory per precision.

    Reports decode as a fraction of the memory-bandwidth roofline (measured here) and prefill as FLOP/s.
    A table goes to stderr; --json writes the record to stdout."""
    if endpoint:
        from cohere_cli.commands.bench import run_remote_bench_command

        run_remote_bench_command(None if model == "demo" else model,
                                 endpoint=_endpoint(endpoint, api_key, served_model, timeout), seq=seq, gen=gen,
                                 concurrency=concurrency, json_out=json_out, compare_to=compare_to)
        return
    from cohere_cli.commands.bench import run_bench_command

    run_bench_command(model, seq=seq, gen=gen, precision=precision, repeat=repeat, threads=threads, device=device,
                      json_out=json_out, compare_to=compare_to)


# ---- serve (issue #20) ---------------------------------------------------------------------------------------------
@app.command()
def serve(
    model: Annotated[
        str, typer.Argument(help="Checkpoint folder or store name (default: the built-in demo model).")
    ] = "demo",
    host: Annotated[str, typer.Option("--host", help="Address to listen on; one other than loopback needs "
                                      "--api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")] = 8000,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", envvar="COHERE_CLI_API_KEY",
                                    help="Require Authorization: Bearer KEY (or set $COHERE_CLI_API_KEY).")
    ] = None,
    ctx: Annotated[
        Optional[int], typer.Option("--ctx", min=16, help="Context per request (default: the model's, at most 8192).")
    ] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=256, help="Requests decoded together.")] = 8,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=0, max=4096, help="Requests waiting for a slot; past it: 503.")
    ] = 64,
    dtype: Dtype = "auto",
) -> None:
    """Serve MODEL over an OpenAI-compatible HTTP API (chat, completions, tools, documents; streamed or not).

    Binds 127.0.0.1 by default; Ctrl-C stops it."""
    from cohere_cli.commands.serve import run_serve

    run_serve(model, host=host, port=port, api_key=api_key, ctx=ctx, max_batch=max_batch, max_queue=max_queue,
              dtype=dtype)


# ---- the one error boundary ----------------------------------------------------------------------------------------
def main() -> None:
    try:
        app()
    except CohereError as e:
        from cohere_cli.ui.console import error

        error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
