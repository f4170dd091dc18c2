"""`cohere generate MODEL PROMPT`: raw completion, BOS added, no chat template; with --endpoint on an
OpenAI-compatible server (MODEL, optional, then only lends its tokenizer)."""

from __future__ import annotations

from cohere_cli.commands.stream import Local, Remote, print_stream
from cohere_cli.engine.sampling import SamplingParams
from cohere_cli.ui.console import info


def run_generate(model: str | None, prompt: str, params: SamplingParams, *, max_tokens: int, dtype: str,
                 json_out: bool, endpoint=None) -> None:
    if endpoint is not None:  # remote.backend.EndpointOptions
        from cohere_cli.remote.backend import Api, connect, generate_stream

        client, server, folder, tok = connect(endpoint, model)
        ids, stream = generate_stream(Api(client), prompt, params, max_tokens, served_model=server.served,
                                      tokenizer=tok)
        print_stream(stream, json_out, Remote(ids, client.url, server.served))
        return
    from cohere_cli.engine.generate import stream_generate  # torch: only where a local model runs
    from cohere_cli.engine.runtime import load_runtime

    rt = load_runtime(model, dtype)
    info(rt.summary())
    ids = rt.tokenizer.encode(prompt, add_bos=True)
    print_stream(stream_generate(rt.model, rt.tokenizer, ids, params, max_tokens), json_out, Local(ids))
