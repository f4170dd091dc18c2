"""Build small but realistic Cohere tokenizer folders for tests (no download: the real files are gated / 13-20 MB).

`make_tokenizer(dir)` trains, in a few milliseconds, a byte-level BPE with the real Command R configuration
(NFC normalizer; Digits(individual_digits) + ByteLevel pre-tokenizer; ByteLevel decoder) and lays the Cohere special
tokens out like the real file: `<PAD>`..`<EOP_TOKEN>` at ids 0-7, the BPE merges after them, then the turn tokens
(`<|START_OF_TURN_TOKEN|>`, ...) as added tokens with `"special": false`. It reproduces the real file's quirky
post-processor (`<BOS_TOKEN> $A <|END_OF_TURN_TOKEN|> <EOS_TOKEN>`) and writes a tokenizer_config.json that
transformers' AutoTokenizer loads as a CohereTokenizer, so tests can compare us against the reference.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from cohere_cli.engine.template import builtin_template

# ids 0-7, exactly as in the real Command R tokenizer; 0-7 are "special": true there.
BASE_SPECIALS = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<EOP_TOKEN>"]
# Command R turn tokens (255000-255018 in the real file), "special": false there.
TURN_TOKENS = [
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|YES_TOKEN|>", "<|NO_TOKEN|>", "<|GOOD_TOKEN|>",
    "<|BAD_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>",
    *(f"<|USER_{i}_TOKEN|>" for i in range(10)),
]
# The ten EXTRA slots (255019-255028): plain in Command R, reused by the R7B / Command A ("cmd3") tokenizer.
EXTRA_COMMAND_R = [f"<|EXTRA_{i}_TOKEN|>" for i in range(10)]
EXTRA_CMD3 = [
    "<|START_THINKING|>", "<|END_THINKING|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>", "<|START_ACTION|>",
    "<|END_ACTION|>", "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>", "<|EXTRA_8_TOKEN|>", "<|EXTRA_9_TOKEN|>",
]

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
    "but not what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may part "
    "hello world test penguin emperor tallest Antarctica assistant Command Cohere model token streaming"
).split()
_NON_ASCII = [
    "café", "naïve", "résumé", "Größe", "Cửa Việt", "señor", "niño", "Ελληνικά", "русский", "עברית", "العربية",
    "我想在apple工作", "你好世界", "日本語のテキスト", "한국어", "ภาษาไทย", "ខ្មែរ", "🦙", "😁", "🎉", "👍🏽", "🇫🇷", "…", "～", "€",
]
_PUNCT = [".", ",", "!", "?", ";", ":", "'", '"', "(", ")", "-", "—", "/", "#", "*", "`", "```", "\n", "\t", "  "]


def default_corpus(lines: int = 300, seed: int = 0) -> list[str]:
    """Deterministic mixed text: English words, digits, punctuation, whitespace runs, accents, CJK and emoji."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        parts = []
        for _ in range(rng.randint(4, 14)):
            r = rng.random()
            if r < 0.62:
                parts.append(rng.choice(_WORDS))
            elif r < 0.74:
                parts.append(str(rng.randint(0, 10**rng.randint(1, 6))))
            elif r < 0.88:
                parts.append(rng.choice(_NON_ASCII))
            else:
                parts.append(rng.choice(_PUNCT))
        corpus.append(" ".join(parts))
    return corpus


def _train(corpus: list[str], vocab_size: int) -> dict:
    tok = Tokenizer(models.BPE())  # the real file: no unk token, byte-level alphabet covers every byte
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return json.loads(tok.to_str())


def make_tokenizer(
    dirpath: Path,
    *,
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    templates: str | None = "command-r",
    quirk_post_processor: bool = True,
) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dirpath` and return it.

    templates: "command-r" -> chat_template is the list of named templates default/tool_use/rag (as in
    c4ai-command-r-v01); "cmd3" -> a single R7B/Command A template string and the cmd3 tokens
    (<|START_RESPONSE|>, ...); None -> no chat template.
    """
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    data = _train(corpus if corpus is not None else default_corpus(), vocab_size)

    # Added tokens right after the BPE vocabulary, present both in model.vocab and added_tokens like the real file.
    vocab = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    extra = EXTRA_CMD3 if templates == "cmd3" else EXTRA_COMMAND_R
    for token in TURN_TOKENS + extra:
        vocab[token] = next_id
        data["added_tokens"].append(
            {"id": next_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": False}
        )
        next_id += 1
    ids = {t: vocab[t] for t in ("<BOS_TOKEN>", "<EOS_TOKEN>", "<|END_OF_TURN_TOKEN|>")}

    if quirk_post_processor:
        # The real tokenizer.json's post-processor: appends end-of-turn + EOS to every encoded text.
        def spec(tok):
            return {"SpecialToken": {"id": tok, "type_id": 0}}

        seq_a, seq_b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [spec("<BOS_TOKEN>"), seq_a, spec("<|END_OF_TURN_TOKEN|>"), spec("<EOS_TOKEN>")],
            "pair": [spec("<BOS_TOKEN>"), seq_a, seq_b, spec("<|END_OF_TURN_TOKEN|>"), spec("<EOS_TOKEN>")],
            "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in ids.items()},
        }
    text = json.dumps(data, ensure_ascii=False)
    Tokenizer.from_str(text)  # fail here, not in the test, if the edited JSON is invalid
    (dirpath / "tokenizer.json").write_text(text, encoding="utf-8")

    added = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in data["added_tokens"]
    }
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<BOS_TOKEN>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|END_OF_TURN_TOKEN|>",
        "legacy": True,
        "model_max_length": 131072,
        "pad_token": "<PAD>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "CohereTokenizer",
        "unk_token": None,
        "use_default_system_prompt": False,
    }
    if templates == "command-r":
        config["chat_template"] = [
            {"name": name, "template": builtin_template(f"command-r-{name}")} for name in ("default", "tool_use", "rag")
        ]
    elif templates == "cmd3":
        config["chat_template"] = builtin_template("cmd3-default")
    elif templates is not None:
        raise ValueError(f"templates must be 'command-r', 'cmd3' or None, not {templates!r}")
    (dirpath / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")

    def token(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    stmap = {
        "bos_token": token("<BOS_TOKEN>"),
        "eos_token": token("<|END_OF_TURN_TOKEN|>"),
        "pad_token": token("<PAD>"),
    }
    (dirpath / "special_tokens_map.json").write_text(json.dumps(stmap, indent=2), encoding="utf-8")
    return dirpath


def load_reference(dirpath: Path):
    """transformers' AutoTokenizer for `dirpath`, set up the way CohereTokenizer documents itself: encode() adds
    BOS only (`[5, 28339, 2075, ...]`).

    transformers 5 drops tokenizer_config.json's add_bos_token/add_eos_token when a tokenizer.json exists and keeps
    the file's post-processor, so with the real (quirky) file `encode()` would end in <|END_OF_TURN_TOKEN|><EOS_TOKEN>.
    Setting add_bos_token rebuilds the post-processor as `<BOS_TOKEN> $A`.
    """
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(dirpath))
    ref.add_bos_token = True
    return ref
