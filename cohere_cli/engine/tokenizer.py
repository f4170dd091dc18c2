"""The Cohere tokenizer: `tokenizer.json` through the `tokenizers` library, behaving like transformers' CohereTokenizer.

Cohere quirks handled here (see the spec, section 4 and pitfalls 10/14):

* The real tokenizer.json ships a post-processor `<BOS_TOKEN> $A <|END_OF_TURN_TOKEN|> <EOS_TOKEN>`. transformers
  replaces it; using it raw would end every prompt with "end of turn, end of sequence". We never run the
  post-processor: we encode without special tokens and prepend BOS ourselves.
* The turn tokens (`<|START_OF_TURN_TOKEN|>`, `<|CHATBOT_TOKEN|>`, ...) are added tokens with `"special": false`.
  They still map to single ids when they appear in text (that is how a rendered chat template is tokenized), but
  the tokenizers library's `skip_special_tokens` does not skip them; we treat every added token as a control token
  that produces no text when streaming or when decoding with `skip_special_tokens=True`.
* The model stops on `<|END_OF_TURN_TOKEN|>` (and `<|END_RESPONSE|>` for R7B / Command A), not only on EOS.
* The tokenizer has fewer ids than the embedding has rows (255029 vs 256000); ids past the end decode to nothing.
"""

from __future__ import annotations

import re

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Backend
from tokenizers import decoders

from cohere_cli.engine import template as _template
from cohere_cli.errors import TemplateError, TokenizerError, UnsafeInput
from cohere_cli.untrusted import confine, inert, one_line, parse_json, read_bounded

# transformers' CohereTokenizer constructor defaults, used for any special token tokenizer_config.json leaves out.
# The order is transformers' SPECIAL_TOKENS_ATTRIBUTES order (the order the template variables are built in).
COHERE_SPECIAL_TOKENS = {
    "bos_token": "<BOS_TOKEN>",
    "eos_token": "<|END_OF_TURN_TOKEN|>",
    "unk_token": "<UNK>",
    "sep_token": "<SEP>",
    "pad_token": "<PAD>",
    "cls_token": "<CLS>",
    "mask_token": "<MASK_TOKEN>",
}
# Tokens that end a model turn, when the vocabulary has them (besides the configured EOS).
STOP_TOKENS = ("<|END_OF_TURN_TOKEN|>", "<|END_RESPONSE|>", "<EOS_TOKEN>")
REPLACEMENT_CHAR = "\ufffd"  # what a byte-level decode yields for an incomplete UTF-8 sequence


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


MAX_TOKENIZER_JSON = 64 << 20  # Command R's tokenizer.json is 12.8 MB, Command A's 20 MB


def _read_json(path: Path) -> dict:
    try:
        data = parse_json(read_bounded(path, MAX_TOKENIZER_JSON, "tokenizer file"))
    except (OSError, ValueError, UnsafeInput) as e:
        raise TokenizerError(f"cannot read {path}: {e}; re-download the model's tokenizer files") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} is not a JSON object; re-download the model's tokenizer files")
    return data


MAX_TEMPLATE_BYTES = 1 << 20  # Command R's three templates together are 25 kB
MAX_TEMPLATES = 64


def _read_template(folder: Path, name: str) -> str:
    """A template file of the checkpoint: `name` must resolve inside `folder` (a symlink to /etc/passwd would
    otherwise be rendered into a prompt and sent to an endpoint server), a regular file under the size bound."""
    file = confine(folder, name, "a chat template file")
    return read_bounded(file, MAX_TEMPLATE_BYTES, "chat template").decode("utf-8")


def _load_chat_templates(path: Path, config: dict) -> dict[str, str]:
    """Named chat templates, found where transformers 5 looks for them.

    `chat_template.jinja` (-> "default") and `additional_chat_templates/*.jinja` take priority over the
    tokenizer_config.json entry, which is either one string, a {name: template} dict or (Command R) a list of
    {"name", "template"}; entries whose name or template is not a string are left out.
    """
    templates: dict[str, str] = {}
    try:
        if os.path.lexists(path / "chat_template.jinja"):
            templates["default"] = _read_template(path, "chat_template.jinja")
        extra = path / "additional_chat_templates"
        if extra.is_dir():
            for file in sorted(extra.glob("*.jinja"))[:MAX_TEMPLATES]:
                templates[file.name.removesuffix(".jinja")] = _read_template(path, f"{extra.name}/{file.name}")
    except (OSError, UnicodeDecodeError, UnsafeInput) as e:
        raise TokenizerError(f"cannot read the chat template files in {inert(str(path))}: {one_line(e)}") from None
    if templates:
        return templates
    value = config.get("chat_template")
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
    if isinstance(value, list):
        return {t["name"]: t["template"] for t in value
                if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)}
    return {}


def read_chat_templates(folder: Path) -> dict[str, str]:
    """A checkpoint's named chat templates, read from its template files and tokenizer_config.json alone (not the
    tokenizer.json, not the weights): enough to know what the model's prompts can hold (`documents_template`)."""
    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    return _load_chat_templates(folder, config)


# The released models whose chat templates render documents (grounded answers) and tools.
GROUNDING_MODELS = "Command R, R+, R7B and A (e.g. `cohere download CohereLabs/c4ai-command-r7b-12-2024`)"


def documents_template(templates: dict[str, str], name: str | None = None) -> str | None:
    """The template that renders documents (a grounded answer): `name` when given, else Command R's `rag` or the
    default (Command R7B / A have a documents path in it); None when that template has no documents path."""
    name = name or ("rag" if "rag" in templates else "default")
    return name if "documents" in templates.get(name, "") else None


def tools_template(templates: dict[str, str]) -> str | None:
    """The template that renders tool definitions: Command R's `tool_use`, or a default with a tools path."""
    return next((n for n in ("tool_use", "default") if renders_tools(templates.get(n, ""))), None)


def renders_tools(source: str) -> bool:
    """Whether a template renders a `tools` list (R7B's default mentions tools but sets them to [] first)."""
    return "tools" in source and not re.search(r"{%-?\s*set\s+tools\s*=\s*\[\]\s*-?%}", source)


def cannot_ground(model: str, templates: dict[str, str], name: str | None, advice: str) -> str:
    """Why `model` cannot answer from documents, in one line, ending with `advice` (what to do where it is said)."""
    other = documents_template(templates) if name else None
    if other is not None:  # --template picked one without documents; the model has one that renders them
        return f"{model}'s chat template {name!r} has no documents path, its {other!r} template has: " \
               f"--template {other}, or {advice}"
    return (f"{model} cannot answer from documents: its chat template has no documents (RAG) path; models that "
            f"can: {GROUNDING_MODELS}; or {advice}")


class Tokenizer:
    """A Cohere tokenizer loaded from a model folder. Build it with `Tokenizer.from_dir(path)`."""

    def __init__(
        self,
        backend: _Backend,
        config: dict | None = None,
        special_tokens_map: dict | None = None,
        chat_templates: dict[str, str] | None = None,
    ):
        config = config or {}
        self._backend = backend
        # tokenizer.json may carry truncation/padding settings; a CLI must never silently cut a prompt.
        backend.no_truncation()
        backend.no_padding()

        # Named special tokens: CohereTokenizer defaults < tokenizer_config.json < special_tokens_map.json. Like
        # transformers, special_tokens_map.json is only consulted by configs without "added_tokens_decoder".
        specials: dict[str, str | None] = dict(COHERE_SPECIAL_TOKENS)
        for key in COHERE_SPECIAL_TOKENS:
            if key in config:
                specials[key] = _token_content(config[key])
        if special_tokens_map and "added_tokens_decoder" not in config:
            for key in COHERE_SPECIAL_TOKENS:
                if key in special_tokens_map:
                    specials[key] = _token_content(special_tokens_map[key])
        # What templates see as bos_token, eos_token, ...: only the tokens that are set (as in transformers).
        self.special_tokens_map: dict[str, str] = {k: v for k, v in specials.items() if v is not None}

        vocab = backend.get_vocab(with_added_tokens=True)
        # Number of ids the tokenizer knows (0..vocab_size-1); the model's embedding may have more rows.
        self.vocab_size: int = max(vocab.values()) + 1 if vocab else 0
        self.bos_token: str | None = specials["bos_token"]
        self.eos_token: str | None = specials["eos_token"]
        self.bos_id: int | None = vocab.get(self.bos_token) if self.bos_token else None
        self.eos_id: int | None = vocab.get(self.eos_token) if self.eos_token else None
        self.stop_ids: set[int] = {vocab[t] for t in STOP_TOKENS if t in vocab}
        if self.eos_id is not None:
            self.stop_ids.add(self.eos_id)
        # Every added token (special or not) is a control token: the turn markers are "special": false in the
        # real file, yet must never show up as text in a chat.
        self.control_ids: frozenset[int] = frozenset(backend.get_added_tokens_decoder())
        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        self._byte_level = isinstance(backend.decoder, decoders.ByteLevel)

    @classmethod
    def from_dir(cls, path: Path) -> Tokenizer:
        """Load `tokenizer.json` (required), `tokenizer_config.json` and `special_tokens_map.json` (optional) and
        the chat templates from a model folder."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.exists():
            raise TokenizerError(f"{file} not found: the model folder needs its tokenizer.json (re-download the model)")
        try:  # bounded read first: tokenizers' from_file would read a 50 GB (or endless /dev/zero) file whole
            backend = _Backend.from_str(read_bounded(file, MAX_TOKENIZER_JSON, "tokenizer.json").decode("utf-8"))
        except (OSError, UnicodeDecodeError, UnsafeInput) as e:
            raise TokenizerError(f"cannot read {file}: {e}; re-download the model's tokenizer.json") from None
        except Exception as e:  # the Rust side raises a bare Exception for malformed files
            raise TokenizerError(f"cannot load {file}: {e}; re-download the model's tokenizer.json") from None
        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        stmap_file = path / "special_tokens_map.json"
        stmap = _read_json(stmap_file) if stmap_file.is_file() else None
        return cls(backend, config, stmap, _load_chat_templates(path, config))

    # ------------------------------------------------------------------------------------------- ids <-> text

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`: BOS + text as CohereTokenizer documents it (`[5, 28339, 2075, ...]`), or the text
        alone with add_bos=False (= transformers' `encode(text, add_special_tokens=False)`). Special-token strings in
        `text` (as in a rendered chat template) become their single ids. Never appends the raw file's
        `<|END_OF_TURN_TOKEN|><EOS_TOKEN>` (which transformers 5 itself keeps: it ignores add_bos_token/add_eos_token
        when a tokenizer.json exists)."""
        ids = self._backend.encode(text, add_special_tokens=False).ids  # bypasses the quirky post-processor
        if add_bos and self.bos_id is not None:
            return [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. With skip_special_tokens, every control token (turn markers included) is left out.
        Ids the tokenizer does not have (e.g. the embedding's padding rows) are ignored."""
        ids = [i for i in ids if 0 <= i < self.vocab_size]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.control_ids]
        return self._backend.decode(ids, skip_special_tokens=False)

    def stream_decoder(self) -> StreamDecoder:
        """A fresh incremental detokenizer for one generation."""
        return StreamDecoder(self)

    # ------------------------------------------------------------------------------------------- chat

    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        template: str | None = None,
        add_generation_prompt: bool = True,
        documents: list[dict] | None = None,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation into the prompt text (BOS included: the templates emit it, so encode the result
        with add_bos=False). `template` names one of `chat_templates` (Command R has "default", "tool_use", "rag");
        by default "tool_use" when tools are given, else "default". Extra kwargs (citation_mode="fast",
        enable_citations=True, ...) are template variables."""
        source = self._select_template(template, tools)
        return _template.render_chat(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            special_tokens=self.special_tokens_map,
            **kwargs,
        )

    def _select_template(self, name: str | None, tools: list[dict] | None) -> str:
        # Same choice as transformers' get_chat_template for named templates.
        templates = self.chat_templates
        if not templates:
            raise TemplateError("this model has no chat template: use `cohere generate` for raw completion")
        if name is not None:
            if name not in templates:
                raise TemplateError(f"no chat template named {name!r}; available: {', '.join(sorted(templates))}")
            return templates[name]
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        if len(templates) == 1:
            return next(iter(templates.values()))
        raise TemplateError(f"this model has several chat templates and no default; pick one of: "
                            f"{', '.join(sorted(templates))}")


class StreamDecoder:
    """Turns generated ids into text deltas as they arrive, never emitting half a UTF-8 character.

    A byte-level BPE token can end in the middle of a multi-byte character (emoji, CJK); decoding it alone gives a
    trailing U+FFFD. We hold such tokens back until the character is complete. Control tokens and ids outside the
    vocabulary produce no text. Joined, the deltas (plus `flush()`) equal `decode(ids, skip_special_tokens=True)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._ids: list[int] = []  # pending ids (and, for non-byte-level decoders, all ids for context)
        self._emitted = 0  # characters of decode(self._ids) already returned

    def step(self, token_id: int) -> str:
        """Feed one generated id; returns the new text it completes (possibly "")."""
        tok = self._tok
        if token_id in tok.control_ids or not 0 <= token_id < tok.vocab_size:
            return ""
        self._ids.append(token_id)
        text = tok._backend.decode(self._ids, skip_special_tokens=False)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # incomplete character (or a literal U+FFFD: it comes out with the next token or flush)
        delta = text[self._emitted :]
        if tok._byte_level:
            # Byte-level decoding is plain byte concatenation, so at a character boundary we can start afresh.
            self._ids, self._emitted = [], 0
        else:
            self._emitted = len(text)
        return delta

    def flush(self) -> str:
        """The text still held back at the end of generation (an incomplete character decodes to U+FFFD)."""
        text = self._tok._backend.decode(self._ids, skip_special_tokens=False) if self._ids else ""
        delta = text[self._emitted :]
        self._ids, self._emitted = [], 0
        return delta
