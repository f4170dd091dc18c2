"""`cohere serve`'s app on a real uvicorn server in a thread, on 127.0.0.1 and a free port, for the tests to drive with
real clients (the official `openai` package, `cohere chat --endpoint`, `cohere bench --endpoint`); and
ScriptedEngine, a test double of engine/batch.py's interface whose answers are scripted (as tests/scripted_cli.py
scripts stream_generate): a tiny random model cannot be relied on to write a tool call or a grounded answer."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from cohere_cli.engine.response import Response
from cohere_cli.serve.app import create_app
from cohere_cli.serve.render import Served
from cohere_cli.serve.server import config
from cohere_cli.serve.worker import Worker


class Harness:
    def __init__(self, served: Served, engine, *, api_key: str | None = None, header_timeout: float = 10.0,
                 body_timeout: float = 30.0, max_connections: int = 1024, max_renders: int = 4,
                 render_queue: int = 64):
        self.worker = Worker(engine)
        self.worker.start()
        self.engine = engine
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.app = app = create_app(served, self.worker, api_key=api_key, body_timeout=body_timeout,
                                    max_renders=max_renders, render_queue=render_queue)
        self.server = uvicorn.Server(config(app, host="127.0.0.1", header_timeout=header_timeout,
                                            max_connections=max_connections))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # a condition, bounded: uvicorn sets it once it listens
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)

    def close(self) -> None:
        self.worker.stop()
        self.server.should_exit = True
        self.thread.join(10)


class ScriptedEngine:
    """BatchEngine's interface; each sequence's answer is the first rule whose "if" texts are all in the decoded
    prompt ("tail": in its part from the last user message on), its tokens yielded one per step, then the rule's
    "raise" exception in place of the last Response if it has one (a sequence that broke)."""

    def __init__(self, tokenizer, rules: list[dict]):
        self.tok, self.rules, self.max_queue = tokenizer, rules, 64
        self.lock = threading.Lock()
        self.seqs: dict[int, dict] = {}
        self.prompts: list[str] = []
        self.n = 0

    def add(self, prompt_ids, params, max_tokens, *, stop_ids=None) -> int:
        prompt = self.tok.decode(prompt_ids)
        tail = prompt.rsplit("<|USER_TOKEN|>", 1)[-1]
        rule = next((r for r in self.rules if all(t in prompt for t in r.get("if", []))
                     and all(t in tail for t in r.get("tail", []))), {"say": "no scripted answer"})
        ids = self.tok.encode(rule["say"], add_bos=False)[:max_tokens]
        with self.lock:
            self.prompts.append(prompt)
            self.n += 1
            self.seqs[self.n] = {"ids": iter(ids), "n": 0, "max": max_tokens, "prompt": len(prompt_ids),
                                 "detok": self.tok.stream_decoder(), "raise": rule.get("raise")}
            return self.n

    def rules_said(self, prompt_tail: str) -> str:
        """What the first rule matching a user message of `prompt_tail` says (its own text, markers included)."""
        return next(r["say"] for r in self.rules if all(t in prompt_tail for t in r.get("tail", [])) and not r.get("if"))

    def cancel(self, seq: int) -> None:
        with self.lock:
            self.seqs.pop(seq, None)

    def busy(self) -> bool:
        with self.lock:
            return bool(self.seqs)

    def step(self):
        out = []
        with self.lock:
            for seq, s in list(self.seqs.items()):
                token = next(s["ids"], None)
                if token is None and s["raise"]:  # as BatchEngine hands over what broke one sequence
                    del self.seqs[seq]
                    out.append((seq, s["raise"]))
                    continue
                if token is None:
                    del self.seqs[seq]
                    finish = "length" if s["n"] == s["max"] else "stop"
                    out.append((seq, Response(s["detok"].flush(), None, s["prompt"], s["n"], 1e3, 1e2, 0.01, 0,
                                              finish, s["prompt"])))
                    continue
                s["n"] += 1
                out.append((seq, Response(s["detok"].step(token), token, s["prompt"], s["n"], 1e3, 1e2, 0.01, 0,
                                          None, s["prompt"])))
        return out
