"""`cohere serve`: an OpenAI-compatible HTTP server over one loaded model (Starlette on uvicorn).

* app.py     the ASGI app: routes, auth, error shapes, Server-Sent Events, disconnect -> cancel
* schema.py  the request bodies, every field bounded (a request is untrusted), and OpenAI's error shape
* render.py  a request -> prompt ids (the model's own templates: tools, documents) and the answer -> OpenAI fields
             (tool calls parsed by engine/toolcalls.py, citations rendered as the REPL renders them)
* worker.py  the one engine thread (continuous batching, engine/batch.py) bridged to asyncio

Nothing here prints: the server logs through the `cohere_cli.serve` logger; the command (commands/serve.py) prints
the start-up line."""
