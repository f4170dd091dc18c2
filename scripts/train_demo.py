"""Train the built-in `demo` model: a small Command-R (`cohere` architecture) that answers questions about cohere-cli
and uses the built-in list_models tool.

    python scripts/train_demo.py          # the shipped model -> cohere_cli/data/demo/ (3 stages, ~85 min on 2 cores)
    python scripts/train_demo.py --steps 150 --out /tmp/demo-try --threads 1   # a quick try (one run, help desk only)
    python scripts/eval_demo.py --write   # then score it (thresholds in eval_demo.py) and record the scores

Everything is generated here (scripts/demo_data.py), nothing is downloaded, and the run is reproducible: fixed
seeds, a fixed step budget (never a time budget), a fixed thread count. Steps:
  1. a byte-level BPE tokenizer with the Command R layout (special tokens 0-7, BPE, then the turn tokens as
     non-special added tokens), written with tokenizer_config.json carrying the Command R default chat template;
  2. conversations rendered through that template, loss only on the assistant's tokens (answer + end of turn);
  3. cohere_cli.model.CohereForCausalLM trained with AdamW + warmup/cosine, bf16 autocast on CPU (fp32 master
     weights, ~2x faster than fp32 here), length-bucketed right-padded batches (the causal mask makes right padding
     harmless); half the conversations have their last answer cut after 6-16 tokens and the first 6 tokens of
     every answer weigh double: that is where the model shows it understood the question;
  4. bf16 safetensors under the checkpoint key names (tied: no lm_head.weight), config.json,
     generation_config.json, training.json and TRAINING.md.
With --tool-convs N, each data epoch also holds N tool-use samples (demo_data.tool_conversations: the built-in
list_models tool called and its result answered, rendered with Command R's tool_use template, which the tokenizer is
then also trained on and tokenizer_config.json names beside the default one); --copy-drills N adds short
copy-the-names conversations and --induction N synthetic copy runs (random token runs said twice); --induction-steps
K trains on copy runs alone first; --init FOLDER continues from a trained demo. The shipped recipe is STAGES (below),
each stage continuing the one before. What it took (eval_demo.py: help desk train / held-out, list_models calls, answers naming every
model of a result, direct answers with the tool present):
  --tool-convs 1100 --steps 750:                       100%/55%, calls 6/10, answers 0/10, direct 4/10
  --tool-convs 2000 --copy-drills 3000 --steps 1400:   98%/80%, calls 9/10, answers 0/10, direct 10/10
  stage 1 (copy runs alone first, then all mixed):     100%/75%, calls 8/10, answers 3/10, direct 9/10
  + stage 2, list_models' result as text:              100%/85%, calls 10/10, answers 6/10, direct 10/10
  + a third stage --copy-drills 5000, lr 5e-4, 600:    100%/85%, calls 10/10, answers 6/10, direct 10/10
  + stage 3 instead: --induction-hard 0.7 (shipped):   100%/80%, calls 8/10, answers 7/10, direct 10/10
With the result as JSON records the model listed the right number of names but made them up: copying a name out of
a record is more than the 8M model learns here. list_models now puts every name in one span on its first line
("3 installed models: a, b, c", chat/models_tool.py), and the answer repeats that span: plain copying, which the
copy runs teach. (The shipped stage 1 ran when the result was still JSON, at commit a7c54e0; stages 2-3 on the text.)
After stage 2, results of 4-5 names that share pieces ("frost-sun", "team/sun-medical-8b-int8") were merged or
skipped, as a copy keyed on the last token alone does; stage 3's hard copy runs (names of shared pieces) fixed that
one and not all: 4-5 names that differ in a few tokens (c4ai-command-r7b-12-2024 / -nf4 / -arabic) still lose one.
Every bar of eval_demo.py is met, two of them (calls, answers) exactly.
transformers is not used here (it is a test-only dependency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# Sleeping (not spinning) OpenMP workers: on a machine whose two cores are shared, spinning threads burn the cycles
# the other thread (and everyone else) needs. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import demo_data  # noqa: E402
from cohere_cli.model import CohereForCausalLM, ModelConfig  # noqa: E402

OUT = ROOT / "cohere_cli" / "data" / "demo"

BASE_SPECIALS = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>", "<EOP_TOKEN>"]
TURN_TOKENS = [
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|YES_TOKEN|>", "<|NO_TOKEN|>", "<|GOOD_TOKEN|>",
    "<|BAD_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>",
    *(f"<|USER_{i}_TOKEN|>" for i in range(10)),
    *(f"<|EXTRA_{i}_TOKEN|>" for i in range(10)),
]
SOT, EOT, USER, CHATBOT, SYSTEM = ("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                                   "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>")

# The model: ~8M parameters, 16 MB in bf16; GQA 5:1, head_dim 64.
MODEL = dict(hidden_size=320, num_hidden_layers=6, num_attention_heads=5, num_key_value_heads=1,
             intermediate_size=896, logit_scale=0.25, rope_theta=10000.0)
TRAIN_LOGIT_SCALE = 1.0
VOCAB = 4096  # BPE size incl. the 8 base specials; the turn tokens come on top


# ---- chat template -----------------------------------------------------------------------------------------------
def default_template() -> str:
    """The Command R default template: from cohere_cli's bundled templates, else the spec (section 3.2)."""
    try:
        from cohere_cli.engine.template import builtin_template

        return builtin_template("command-r-default")
    except ImportError:
        pass
    f = ROOT / "cohere_cli" / "data" / "templates" / "command-r-default.jinja"
    if f.is_file():
        return f.read_text(encoding="utf-8")
    spec = Path("/work/shared/cohere-spec.md").read_text(encoding="utf-8")
    block = spec.split("### 3.2", 1)[1].split("```jinja\n", 1)[1].split("\n```", 1)[0]
    return block


def tool_use_template() -> str:
    """Command R's named `tool_use` template (cohere_cli's bundled copy; spec section 3.3)."""
    f = ROOT / "cohere_cli" / "data" / "templates" / "command-r-tool_use.jinja"
    return f.read_text(encoding="utf-8")


def render(template: str, messages: list[dict], add_generation_prompt: bool = False,
           tools: list[dict] | None = None) -> str:
    specials = {"bos_token": "<BOS_TOKEN>", "eos_token": EOT, "pad_token": "<PAD>", "unk_token": "<UNK>"}
    try:
        from cohere_cli.engine.template import render_chat

        return render_chat(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                           special_tokens=specials)
    except ImportError:  # the same environment as transformers
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise ValueError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                tools=tools, **specials)


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def tool_prompt_lines(tool_template: str, seed: int, n: int = 300) -> list[str]:
    """Rendered tool_use prompts (with answers) cut at the special tokens: tokenizer training text, so that the
    template's preamble, tool definitions and results encode into few tokens."""
    import re

    cut = re.compile("|".join(re.escape(t) for t in BASE_SPECIALS + TURN_TOKENS))
    lines = []
    for s in demo_data.tool_conversations(seed + 99991, n):
        text = render(tool_template, s["messages"], True, s["tools"]) + s["target"]
        lines += [p for p in cut.split(text) if p.strip()]
    return lines


def build_tokenizer(out: Path, templates: dict[str, str], seed: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())  # like the real file: no unk, the byte alphabet covers everything
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=BASE_SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lines = demo_data.corpus_lines(seed)
    if "tool_use" in templates:
        lines += tool_prompt_lines(templates["tool_use"], seed)
    tok.train_from_iterator(lines, trainer=trainer)
    bos = tok.token_to_id("<BOS_TOKEN>")
    # What transformers writes for CohereTokenizer(add_bos_token=True, add_eos_token=False): BOS + text.
    tok.post_processor = processors.TemplateProcessing(
        single="<BOS_TOKEN> $A", pair="<BOS_TOKEN> $A <BOS_TOKEN> $B", special_tokens=[("<BOS_TOKEN>", bos)])
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for t in TURN_TOKENS:  # after the BPE vocabulary, "special": false, as in the real Command R file
        vocab[t] = next_id
        data["added_tokens"].append({"id": next_id, "content": t, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": False})
        next_id += 1
    text = json.dumps(data, ensure_ascii=False)
    Tokenizer.from_str(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(text, encoding="utf-8")

    added = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for t in data["added_tokens"]}
    cfg = {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
        "bos_token": "<BOS_TOKEN>", "clean_up_tokenization_spaces": False,
        # one template, or as Command R ships several: a list of named ones; never a "rag" one (the demo cannot
        # ground answers)
        "chat_template": (templates["default"] if list(templates) == ["default"] else
                          [{"name": n, "template": t} for n, t in templates.items()]),
        "eos_token": EOT, "legacy": True, "model_max_length": 8192, "pad_token": "<PAD>",
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "CohereTokenizer",
        "unk_token": None, "use_default_system_prompt": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def entry(c):
        return {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    stmap = {"bos_token": entry("<BOS_TOKEN>"), "eos_token": entry(EOT), "pad_token": entry("<PAD>")}
    (out / "special_tokens_map.json").write_text(json.dumps(stmap, indent=2) + "\n", encoding="utf-8")
    return Tokenizer.from_str(text)


# ---- data --------------------------------------------------------------------------------------------------------
class Encoder:
    """Conversation -> (ids, loss mask), turn by turn, so we know which tokens are the assistant's. Identical to
    encoding the rendered template (checked in `verify`): the turn tokens split the text exactly at turn edges."""

    def __init__(self, tok, tool_template: str | None = None):
        self.tok = tok
        self.tool_template = tool_template or tool_use_template()
        self.id = {t: tok.token_to_id(t) for t in BASE_SPECIALS + TURN_TOKENS}

    def text(self, s: str) -> list[int]:
        return self.tok.encode(s, add_special_tokens=False).ids

    def __call__(self, msgs: list[dict]) -> tuple[list[int], list[bool]]:
        i = self.id
        ids, mask = [i["<BOS_TOKEN>"]], [False]
        body = msgs
        if msgs and msgs[0]["role"] == "system":
            t = [i[SOT], i[SYSTEM], *self.text(msgs[0]["content"]), i[EOT]]
            ids += t
            mask += [False] * len(t)
            body = msgs[1:]
        for m in body:
            if m["role"] == "user":
                t = [i[SOT], i[USER], *self.text(m["content"].strip()), i[EOT]]
                ids += t
                mask += [False] * len(t)
            else:
                ids += [i[SOT], i[CHATBOT]]
                mask += [False, False]
                t = [*self.text(m["content"].strip()), i[EOT]]  # learn the answer and where it ends
                ids += t
                mask += [True] * len(t)
        return ids, mask

    def tool(self, sample: dict) -> tuple[list[int], list[bool]]:
        """A tool sample (demo_data.tool_conversations): the tool_use prompt, unscored, then its target and the end
        of turn, scored."""
        prompt = render(self.tool_template, sample["messages"], True, sample["tools"])
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        t = [*self.text(sample["target"]), self.id[EOT]]
        return ids + t, [False] * len(ids) + [True] * len(t)

    def verify(self, convs: list[list[dict]], template: str, tool_samples: list[dict] = ()) -> None:
        for msgs in convs:
            want = self.tok.encode(render(template, msgs), add_special_tokens=False).ids
            got, _ = self(msgs)
            if got != want:
                raise SystemExit(f"segment encoding differs from the rendered template for {msgs}")
        for s in tool_samples:  # the target's tokens are those of the whole turn rendered as history would be
            text = render(self.tool_template, s["messages"], True, s["tools"]) + s["target"] + EOT
            if self.tok.encode(text, add_special_tokens=False).ids != self.tool(s)[0]:
                raise SystemExit(f"segment encoding differs from the rendered tool prompt for {s}")


def truncate_last_answer(seq: tuple[list[int], list[bool]], rng: random.Random, frac: float):
    """With probability `frac`, keep only the first 6-16 tokens of the last answer. Those tokens are where the
    model shows that it understood the question (which command it names); the rest of an answer is a memorised
    continuation that the untruncated conversations teach anyway. A prefix trains the kept positions exactly as
    the full sequence would (causal attention), at a fraction of the compute."""
    ids, mask = seq
    if rng.random() >= frac:
        return seq
    start = len(mask)
    while start > 0 and mask[start - 1]:
        start -= 1
    keep = start + rng.randint(6, 16)
    return ids[:keep], mask[:keep]


def batches(seqs: list[tuple[list[int], list[bool]]], batch_tokens: int, rng: random.Random):
    """Length buckets: sort by length (with jitter), cut into batches of at most `batch_tokens` padded tokens,
    shuffle the batches."""
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k][0]) + rng.random() * 8)
    out, cur, width = [], [], 0
    for k in order:
        w = max(width, len(seqs[k][0]))
        if cur and w * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, w = [], len(seqs[k][0])
        cur.append(k)
        width = w
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(seqs, idx, pad: int, head_tokens: int, head_weight: float):
    """-> inputs, targets (-100 where not scored) and per-token loss weights. The first `head_tokens` tokens of
    each answer weigh `head_weight`: they decide *which* answer follows (the question's meaning); the rest of an
    answer is a memorised continuation that would otherwise dominate the loss."""
    T = max(len(seqs[k][0]) for k in idx)
    x = torch.full((len(idx), T), pad, dtype=torch.long)
    y = torch.full((len(idx), T), -100, dtype=torch.long)
    w = torch.zeros((len(idx), T))
    for r, k in enumerate(idx):
        ids, mask = seqs[k]
        n = len(ids)
        x[r, :n] = torch.tensor(ids)
        tgt = torch.tensor(ids[1:] + [pad])
        m = torch.tensor(mask[1:] + [False])  # position t predicts token t+1: keep it where t+1 is the assistant's
        y[r, :n] = torch.where(m, tgt, torch.full_like(tgt, -100))
        wr = m.float()
        start = torch.nonzero(m[1:] & ~m[:-1]).flatten() + 1  # first scored position of each answer
        if m[0]:
            start = torch.cat((torch.tensor([0]), start))
        for s0 in start.tolist():
            e = s0 + head_tokens
            wr[s0:e] = torch.where(m[s0:e], torch.full_like(wr[s0:e], head_weight), wr[s0:e])
        w[r, :n] = wr
    return x, y, w


# ---- model -------------------------------------------------------------------------------------------------------
def hf_config(vocab_size: int, eos_id: int, logit_scale: float) -> dict:
    return {
        "architectures": ["CohereForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 5, "eos_token_id": eos_id, "hidden_act": "silu", "hidden_size": MODEL["hidden_size"],
        "initializer_range": 0.02, "intermediate_size": MODEL["intermediate_size"], "layer_norm_eps": 1e-05,
        "logit_scale": logit_scale, "max_position_embeddings": 8192, "model_type": "cohere",
        "num_attention_heads": MODEL["num_attention_heads"], "num_hidden_layers": MODEL["num_hidden_layers"],
        "num_key_value_heads": MODEL["num_key_value_heads"], "pad_token_id": 0, "rope_theta": MODEL["rope_theta"],
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "use_qk_norm": False,
        "vocab_size": vocab_size,
    }


def init_weights(model: CohereForCausalLM, n_layers: int) -> None:
    """GPT-2 style: N(0, 0.02) everywhere, residual outputs (o_proj, down_proj) scaled by 1/sqrt(2L)."""
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            torch.nn.init.ones_(p)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            torch.nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layers))
        else:
            torch.nn.init.normal_(p, 0.0, 0.02)


def induction_samples(rng: random.Random, n: int, tok, hard: float = 0.0) -> list[tuple[list[int], list[bool]]]:
    """`n` runs of 6-40 random ordinary tokens, a newline, then the same run again, only the repeat scored: the
    cleanest signal for the attention pattern that copies (find the earlier occurrence of the current token, say
    what followed it). Without it the 8M demo never copied a name out of a list_models result (0/10).
    A `hard` fraction are lists of distinct "names" built from a few shared pieces and joined by one separator, as
    store names share words ("frost-sun", "team/sun-medical-8b"): the token just copied occurs several times, so
    what follows it is known only from the tokens before it, the longer match a one-token copy gets wrong."""
    lo, hi = len(BASE_SPECIALS), VOCAB  # ordinary BPE tokens: no specials, no turn tokens
    nl = tok.encode("\n", add_special_tokens=False).ids
    bos = tok.token_to_id("<BOS_TOKEN>")
    out = []
    for _ in range(n):
        if rng.random() < hard:
            pieces, sep = rng.sample(range(lo, hi), rng.randint(4, 8)), rng.randrange(lo, hi)
            names: list[tuple[int, ...]] = []
            for _ in range(rng.randint(3, 6)):
                name = tuple(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
                if name not in names:
                    names.append(name)
            run = [t for i, name in enumerate(names) for t in ((sep,) if i else ()) + name]
        else:
            run = [rng.randrange(lo, hi) for _ in range(rng.randint(6, 40))]
        ids = [bos, *run, *nl, *run]
        out.append((ids, [False] * (len(ids) - len(run)) + [True] * len(run)))
    return out


def save_model(model: CohereForCausalLM, out: Path, cfg: dict) -> int:
    from safetensors.torch import save_file

    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
          if k != "lm_head.weight"}  # tied to model.embed_tokens.weight: the checkpoints carry no lm_head
    # logits = logit_scale * (norm(x) * w) @ E^T: moving a power-of-two factor from logit_scale into w is exact.
    fold = TRAIN_LOGIT_SCALE / cfg["logit_scale"]
    assert math.log2(fold).is_integer()
    sd["model.norm.weight"] = (sd["model.norm.weight"].float() * fold).to(torch.bfloat16)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)  # safetensors writes 0600; package data must be world-readable
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"_from_model_config": True, "bos_token_id": 5, "eos_token_id": cfg["eos_token_id"], "pad_token_id": 0}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return (out / "model.safetensors").stat().st_size


# ---- main --------------------------------------------------------------------------------------------------------
# The shipped recipe (`python scripts/train_demo.py`, no arguments): stage 1 from scratch (copy runs alone first, for
# the induction pattern to form, then everything mixed), then a continuation at half the rate, heavier on the tool
# samples, then one on copy runs of names made of shared pieces (--induction-hard), where the answers failed.
STAGES = [
    ["--tool-convs", "2000", "--copy-drills", "3000", "--induction", "2000", "--induction-steps", "500",
     "--steps", "1900"],
    ["--tool-convs", "3000", "--copy-drills", "3000", "--induction", "1000", "--steps", "800", "--lr", "1e-3",
     "--warmup", "30"],
    ["--tool-convs", "3000", "--copy-drills", "3000", "--induction", "3000", "--induction-hard", "0.7",
     "--steps", "800", "--lr", "7e-4", "--warmup", "30"],
]


def shipped_recipe() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="demo-stages-") as tmp:
        init: list[str] = []
        for i, stage in enumerate(STAGES):
            out = str(OUT) if i == len(STAGES) - 1 else f"{tmp}/stage{i + 1}"
            main(stage + init + ["--out", out])
            init = ["--init", out]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--convs", type=int, default=16000, help="conversations per data epoch (fresh ones each epoch)")
    ap.add_argument("--tool-convs", type=int, default=0,
                    help="tool-use samples per data epoch (0: none, and no tool_use template); see "
                         "demo_data.tool_conversations and the shipped STAGES")
    ap.add_argument("--copy-drills", type=int, default=0,
                    help="short copy-the-names drills per data epoch (demo_data.copy_drills), with --tool-convs")
    ap.add_argument("--induction", type=int, default=0,
                    help="synthetic copy samples per data epoch (random token runs said twice, the repeat scored): "
                         "the plain copying that answering from a tool result needs")
    ap.add_argument("--induction-hard", type=float, default=0.0,
                    help="the fraction of --induction runs that are names made of a few shared pieces (see "
                         "induction_samples): copying them takes more than the last token")
    ap.add_argument("--induction-steps", type=int, default=0,
                    help="the first steps train on synthetic copy runs only (part of --steps)")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this demo checkpoint (its tokenizer and weights) instead of from scratch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--trunc-frac", type=float, default=0.5, help="conversations whose last answer is cut short")
    ap.add_argument("--head-tokens", type=int, default=6, help="first tokens of each answer weighted more")
    ap.add_argument("--head-weight", type=float, default=2.0)
    ap.add_argument("--save-every", type=int, default=0, help="also save OUT/step-N checkpoints (for trying)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    demo_data.check_heldout()
    demo_data.check_tool_heldout()
    demo_data.named_commands_and_flags()  # raises if an answer names an unknown command
    template = default_template()
    templates = {"default": template}
    if args.tool_convs:
        templates["tool_use"] = tool_use_template()
    if args.init:  # its tokenizer as it is: the weights were trained with it
        from tokenizers import Tokenizer as HFTokenizer

        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (out / f).write_bytes((args.init / f).read_bytes())
        tok = HFTokenizer.from_file(str(out / "tokenizer.json"))
    else:
        tok = build_tokenizer(out, templates, args.seed)
    enc = Encoder(tok)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = -(-n_tok // 64) * 64  # like the real models, the embedding has a few rows past the tokenizer
    eos_id = tok.token_to_id(EOT)
    cfg_dict = hf_config(vocab_size, eos_id, MODEL["logit_scale"])
    # Trained with logit_scale 1 (a small scale slows learning through the tied, small-initialised embedding a lot),
    # shipped with the Command R7B-like scale: save_model folds the ratio into model.norm.weight, exactly.
    cfg = ModelConfig.from_hf(hf_config(vocab_size, eos_id, TRAIN_LOGIT_SCALE))

    model = CohereForCausalLM(cfg)
    init_weights(model, cfg.n_layers)
    if args.init:
        from safetensors.torch import load_file

        sd = {k: v.float() for k, v in load_file(str(args.init / "model.safetensors")).items()}
        sd["model.norm.weight"] /= TRAIN_LOGIT_SCALE / MODEL["logit_scale"]  # undo save_model's fold, exactly
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer: {n_tok} tokens (embedding rows {vocab_size}); model: {n_params / 1e6:.2f}M parameters, "
          f"{n_params * 2 / 1e6:.1f} MB in bf16", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    rng = random.Random(args.seed)
    epoch, queue, seqs = 0, [], []
    step, tokens_seen, loss_tokens, t_train = 0, 0, 0, time.perf_counter()
    ema = None
    log = []
    ind_seqs, ind_queue = [], []
    while step < args.steps:
        if step < args.induction_steps:  # first only copying: the attention pattern forms, then everything else
            if not ind_queue:
                ind_seqs = induction_samples(random.Random(args.seed * 37 + step), 8000, tok)
                ind_queue = batches(ind_seqs, args.batch_tokens, rng)
            x, y, w = collate(ind_seqs, ind_queue.pop(), 0, args.head_tokens, args.head_weight)
        else:
            if not queue:
                t0 = time.perf_counter()
                convs = demo_data.training_conversations(args.seed + epoch, n=args.convs)
                tool_samples = (demo_data.tool_conversations(args.seed + epoch, n=args.tool_convs)
                                if args.tool_convs else [])
                if epoch == 0:
                    enc.verify(convs[:300], template, tool_samples[:100])
                seqs = [truncate_last_answer(enc(c), rng, args.trunc_frac) for c in convs]
                seqs += [enc.tool(s) for s in tool_samples]  # never cut: the prompt is most of it, the answer short
                seqs += [enc(c) for c in demo_data.copy_drills(args.seed + epoch, args.copy_drills)]  # never cut
                seqs += induction_samples(random.Random(args.seed * 31 + epoch), args.induction, tok,
                                          args.induction_hard)
                queue = batches(seqs, args.batch_tokens, rng)
                n_t = sum(len(s[0]) for s in seqs)
                print(f"epoch {epoch}: {len(convs)} conversations + {len(tool_samples)} tool samples, {n_t} tokens, "
                      f"{len(queue)} batches ({time.perf_counter() - t0:.1f}s to build)", flush=True)
                epoch += 1
            x, y, w = collate(seqs, queue.pop(), 0, args.head_tokens, args.head_weight)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if args.fp32:
            logits = model(x)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
        per_tok = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1), ignore_index=-100,
                                  reduction="none")
        wv = w.view(-1)
        loss = (per_tok * wv).sum() / wv.sum()
        plain = per_tok.sum() / (y != -100).sum()  # the unweighted loss, for the log
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_seen += x.numel()
        loss_tokens += int((y != -100).sum())
        ema = plain.item() if ema is None else 0.95 * ema + 0.05 * plain.item()
        if step % args.log_every == 0 or step == args.steps:
            el = time.perf_counter() - t_train
            eta = (args.steps - step) * el / step / 60
            print(f"step {step}/{args.steps} loss {plain.item():.4f} (ema {ema:.4f}, weighted {loss.item():.4f}) "
                  f"lr {lr_at(step - 1):.2e} {tokens_seen / el:.0f} tok/s, {el / 60:.1f} min, eta {eta:.1f} min",
                  flush=True)
            log.append({"step": step, "loss": round(plain.item(), 4), "ema": round(ema, 4)})
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            snap = out / f"step-{step}"
            snap.mkdir(exist_ok=True)
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                (snap / f).write_bytes((out / f).read_bytes())
            save_model(model, snap, cfg_dict)
    train_s = time.perf_counter() - t_train

    model.eval()
    size = save_model(model, out, cfg_dict)
    report = {
        "seed": args.seed, "steps": args.steps, "head_tokens": args.head_tokens, "head_weight": args.head_weight,
        "trunc_frac": args.trunc_frac, "batch_tokens": args.batch_tokens, "lr": args.lr,
        "warmup": args.warmup, "weight_decay": args.weight_decay, "convs_per_epoch": args.convs,
        "tool_samples_per_epoch": args.tool_convs, "copy_drills_per_epoch": args.copy_drills,
        "induction_per_epoch": args.induction, "induction_hard": args.induction_hard,
        "induction_steps": args.induction_steps, "init": str(args.init) if args.init else None,
        "data_epochs": epoch, "threads": args.threads, "autocast_bf16": not args.fp32,
        "tokens_seen": tokens_seen, "loss_tokens": loss_tokens, "final_loss_ema": round(ema, 4),
        "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - t_start, 1),
        "parameters": n_params, "model_file_bytes": size, "tokenizer_tokens": n_tok, "vocab_size": vocab_size,
        "model": MODEL, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "intents": len(demo_data.INTENTS), "loss_log": log,
    }
    if args.init and (args.init / "training.json").is_file():  # the run this one continued: recorded here
        before = json.loads((args.init / "training.json").read_text())
        report["init_training"] = {k: v for k, v in before.items() if k != "loss_log"}  # with its own init
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    write_training_md(out, report)
    print(f"saved {out} ({size / 1e6:.1f} MB) in {train_s / 60:.1f} min of training; final loss (ema) {ema:.4f}",
          flush=True)


def _run_lines(r: dict, label: str) -> str:
    data = [f"{r[k]} {what}" for k, what in (("tool_samples_per_epoch", "tool samples"),
                                            ("copy_drills_per_epoch", "copy drills"),
                                            ("induction_per_epoch", "copy runs")) if r.get(k)]
    if r.get("induction_hard"):
        data[-1] += f" ({r['induction_hard']:.0%} of them names made of shared pieces)"
    mix = f"; per data epoch also {', '.join(data)}" if data else ""
    alone = f"; the first {r['induction_steps']} steps copy runs alone" if r.get("induction_steps") else ""
    return (f"- {label}: {r['steps']} steps of <= {r['batch_tokens']} padded tokens ({r['tokens_seen'] / 1e6:.2f}M "
            f"tokens,\n  {r['loss_tokens'] / 1e6:.2f}M of them scored), AdamW lr {r['lr']} (warmup {r['warmup']}, "
            f"cosine to 10%),\n  weight decay {r['weight_decay']}, bf16 autocast: {r['autocast_bf16']}, seed "
            f"{r['seed']}, {r['threads']} threads{mix}{alone}" + (f"; {r['note']}" if r.get("note") else "") + "\n")


def write_training_md(out: Path, r: dict, eval_scores: dict | None = None) -> None:
    ev = ""
    if eval_scores is None and (out / "eval.json").is_file():
        eval_scores = json.loads((out / "eval.json").read_text())
    if eval_scores:
        needs = eval_scores.get("needs", {})

        def line(key: str, what: str) -> str:
            e = eval_scores
            need = needs.get(key)
            bar = "" if need is None else f"; bar {need:.0%}" + (", NOT met" if e[f"{key}_score"] < need else "")
            return f"- {what}: {e[f'{key}_right']}/{e[f'{key}_total']} ({e[f'{key}_score']:.0%}{bar})\n"

        ev = ("\n## Evaluation (scripts/eval_demo.py, greedy)\n\n" + line("train", "training questions")
              + line("heldout", "held-out paraphrases"))
        if "tool_call_total" in eval_scores:
            ev += (line("tool_call", "list_models calls on held-out paraphrases (parsed by cohere_cli.engine.toolcalls)")
                   + line("tool_answer", "answers naming every model of a list_models result")
                   + line("tool_direct", "help-desk questions with the tool present, answered directly"))
        if "NOT met" in ev:
            ev += ("\nA bar NOT met: this model still beats the one it replaced on every score it had, and its misses "
                   "are described in scripts/train_demo.py's docstring (what is left).\n")
    m = r["model"]
    n_tool = r.get("tool_samples_per_epoch", 0)
    tools = (f", and {n_tool} tool-use samples per data epoch: asked which models it has with the built-in "
             f"`list_models` tool, it calls it and answers with the names in its result" if n_tool else "")
    templates = ("chat templates `default` and `tool_use` (Command R's; no `rag`: the demo cannot ground answers)"
                 if n_tool else "default chat template")
    chain = [r]  # this run and the runs it continued, oldest first
    while chain[0].get("init_training"):
        chain.insert(0, chain[0]["init_training"])
    runs = ([(run, f"stage {i + 1}, " + ("from scratch" if i == 0 else f"continuing stage {i}"))
             for i, run in enumerate(chain)] if len(chain) > 1 else [(r, "training")])
    train_min = sum(run["train_seconds"] for run, _ in runs) / 60
    total_min = sum(run["total_seconds"] for run, _ in runs) / 60
    text = f"""# The built-in `demo` model

A {r['parameters'] / 1e6:.2f}M-parameter Command-R (`model_type: cohere`) trained from scratch by
`scripts/train_demo.py` on conversations generated by `scripts/demo_data.py` ({r['intents']} intents about
cohere-cli{tools}). Regenerate it with `python scripts/train_demo.py` whenever the CLI changes, then check it with
`python scripts/eval_demo.py` and `pytest tests/test_demo.py`.

- architecture: hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, {m['num_attention_heads']} heads /
  {m['num_key_value_heads']} kv heads, MLP {m['intermediate_size']}, logit_scale {m['logit_scale']}, tied embeddings,
  max_position_embeddings 8192
- tokenizer: byte-level BPE, {r['tokenizer_tokens']} tokens (embedding rows {r['vocab_size']}), Command R special
  tokens and {templates}
- weights: bf16 safetensors, {r['model_file_bytes'] / 1e6:.1f} MB
{"".join(_run_lines(run, label) for run, label in runs)}- time: {train_min:.1f} min of training ({total_min:.1f} min in all) on {r['cpu']}, torch {r['torch']}
- final training loss (assistant tokens, EMA): {r['final_loss_ema']}
{ev}"""
    (out / "TRAINING.md").write_text(text)


if __name__ == "__main__":
    shipped_recipe() if len(sys.argv) == 1 else main()
