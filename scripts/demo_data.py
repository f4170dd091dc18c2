"""What the built-in `demo` model knows, and the conversations it is trained on.

One table, INTENTS: for each thing a user may ask about cohere-cli, the command a right answer must name
(`expect`), the questions (templates with `(a|b|c)` alternatives and {MACROS}), and a few answers: well-formed
sentences that name the exact command and flags. Everything the answers say must be true of the CLI as the open
issues specify it: retrain the demo (scripts/train_demo.py) whenever the CLI changes, and keep
tests/test_demo.py green (it checks that every command, flag and slash command named here exists in the app).

Public API (used by scripts/train_demo.py, scripts/eval_demo.py and tests/test_demo.py):
  training_conversations(seed)  -> list of conversations, each a list of {"role", "content"} messages
  eval_questions()              -> (train_qs, heldout_qs), lists of (question, expected_substring)
  named_commands_and_flags()    -> {"commands": {...}, "flags": {(command, flag), ...}, "slash": {...}}
  corpus_lines()                -> text for training the tokenizer
  tool_conversations(seed, n)   -> tool-use samples {"tools", "messages", "target"} (train_demo --tool-convs)
  tool_eval_cases()             -> held-out tool checks for scripts/eval_demo.py
Nothing here downloads anything or imports torch.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# ---- slot macros ------------------------------------------------------------------------------------------------
# A macro must be followed by a bare verb phrase ("{HOW} download a model").
HOW = (
    "(How do I|How can I|How would I|How should I|How to|What is the command to|What's the command to|"
    "Which command do I use to|What do I run to|What do I type to|Tell me how to|Show me how to|Explain how to|"
    "Can you tell me how to|Is there a way to|I want to|I need to|I would like to|how do i|how can i|"
    "What's the best way to|Can I|Is it possible to|What should I type to|What should I do to|What's the way to|"
    "Any way to|How am I supposed to|Where do I|Do you know how to|Could you explain how to|How could I|"
    "What is the right way to|Which command lets me|Please tell me how to|So how do I|And how do I)"
)
MACROS = {
    "HOW": HOW,
    "MODEL": "(a model|a checkpoint|Command R|Command R7B|Command R+|Aya Expanse|Aya 23|Command A|the weights|"
             "model weights|a Cohere model|an LLM|my model|the model)",
    "CHAT": "(the chat|a chat|the REPL|chat mode|the chat session|a conversation|cohere chat)",
    "IN_CHAT": "(in the chat|in chat|in the REPL|during a chat|while chatting|inside cohere chat)",
}

# ---- the table --------------------------------------------------------------------------------------------------
# name: key; expect: substring a right answer contains (None: small talk, not scored); cmds: the commands that the
# --flags written in prose (outside `code spans`) belong to; questions; answers; follow: short follow-ups that only
# make sense after another turn (used in multi-turn conversations only).


@dataclass(frozen=True)
class Intent:
    name: str
    expect: str | None
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    cmds: tuple[str, ...] = ()
    follow: tuple[str, ...] = ()
    weight: float = 1.0


INTENTS: list[Intent] = [
    # ---------------------------------------------------------------- small talk
    Intent(
        "greet", None,
        ("(Hello|Hi|Hey|Hi there|Hello there|Hey there|Good morning|Good evening|Greetings|Howdy|Yo)(!|.|)",
         "(Hello|Hi|Hey), (how are you|what's up|anyone there)?"),
        ("Hello! I am the cohere-cli demo model. Ask me how to download, quantize, chat with or benchmark Cohere's "
         "Command-R models.",
         "Hi! I am demo, the small model built into cohere-cli. I can explain how to download, list, quantize, chat "
         "with and benchmark Cohere models. What would you like to do?"),
        weight=0.6,
    ),
    Intent(
        "thanks", None,
        ("(Thanks|Thank you|Thanks a lot|Great, thanks|Perfect, thank you|Cool, thanks|Awesome, thanks|Thx|Ok thanks|"
         "That helps, thanks)(!|.|)",),
        ("You're welcome! Type /help in the chat whenever you want to see the chat commands.",
         "Glad I could help. Ask me anything else about cohere-cli."),
        weight=0.4,
    ),
    Intent(
        "bye", None,
        ("(Bye|Goodbye|See you|See you later|Bye bye|Good night|Cya|I'm done)(!|.|)",),
        ("Goodbye! To leave the chat, type /exit or press Ctrl-D.",),
        weight=0.3,
    ),
    Intent(
        "identity", "demo",
        ("(Who are you|What are you|What model is this|What model are you|Which model am I talking to|"
         "Are you Command R|Are you a real model|What is your name|Who am I talking to)(?|)",
         "(Tell me about yourself|Introduce yourself)(.|)"),
        ("I am demo, the small model built into cohere-cli. I was trained only to answer questions about this "
         "toolkit, so I work without any download. For real work, download a Command-R model with "
         "`cohere download`.",
         "I am the cohere-cli demo model, a tiny network of the cohere architecture that ships inside the package. "
         "I only know about cohere-cli; for anything else, download a real model with `cohere download`."),
        weight=0.6,
    ),
    Intent(
        "offtopic", None,
        ("(What is|Tell me about|Explain|What do you know about) (the capital of France|quantum physics|"
         "photosynthesis|the meaning of life|black holes|the French revolution|the stock market|football|"
         "the moon landing|climate change|the Roman empire|dinosaurs|jazz music|the human heart|gravity)(?|)",
         "(Write|Compose|Give me) (a poem|a story|a haiku|an email|a song|a limerick) about (cats|the sea|love|"
         "autumn|my boss|coffee|space|dogs)(.|)",
         "(What's the weather like today|Tell me a joke|What time is it|Who won the world cup|"
         "Can you help me with my homework|What should I cook tonight|Translate hello into Spanish|"
         "What is 2 plus 2|Who is the president|Recommend a good movie|How tall is Mount Everest|"
         "How do I bake bread|What is love|Solve x squared equals 9|Can you write Python code for me|"
         "Sing me a song|What's your favourite colour|How old is the universe)(?|)"),
        ("I am only the cohere-cli demo model and I know about this toolkit, not about that. A real model can "
         "help: download one with `cohere download CohereForAI/c4ai-command-r7b-12-2024` and chat with it.",
         "Sorry, that is outside what I know: I was trained only to explain cohere-cli. For general questions, "
         "download a real Cohere model with `cohere download` and start it with `cohere chat`."),
        weight=1.5,
    ),
    Intent(
        "overview", "cohere chat",
        ("What can (you|this tool|cohere-cli|this CLI) do(?|)",
         "What (is|does) cohere-cli( do|)(?|)",
         "(What commands are there|What commands does cohere-cli have|List the commands|Which commands exist|"
         "What are the main commands|Give me an overview|What features does it have)(?|)",
         "(How do I get started|Where do I start|I'm new here, where do I begin|How do I use this tool|"
         "How does this work)(?|)"),
        ("cohere-cli runs Cohere's open-weight models on your own machine. `cohere download` fetches a model, "
         "`cohere models` lists what you have, `cohere quantize` makes it smaller, `cohere chat` and "
         "`cohere generate` talk to it, and `cohere bench` measures its speed.",
         "Start with `cohere chat`, which talks to me, the built-in demo. Then fetch a real model with "
         "`cohere download`, shrink it with `cohere quantize` and measure it with `cohere bench`; "
         "`cohere --help` lists every command."),
    ),
    Intent(
        "help", "--help",
        ("{HOW} see (all|the) (options|flags|arguments) (of a command|for chat|for quantize|for download)(?|)",
         "(Where is the help|How do I get help|Is there a help page|Where can I read the docs|"
         "How do I see the usage|Show me the usage|What options does a command take)(?|)",
         "{HOW} (get|see|show|print) the help( text| page|)(?|)"),
        ("Run `cohere --help` for the list of commands, and add --help to any command for its options, for "
         "example `cohere chat --help` or `cohere quantize --help`.",
         "Every command explains itself: `cohere --help` lists the commands and `cohere download --help` shows "
         "the options of one of them. In a chat, type /help for the chat commands."),
        cmds=("cohere",),
    ),
    Intent(
        "version", "--version",
        ("(Which|What) version (is installed|do I have|of cohere-cli is this|am I running)(?|)",
         "{HOW} (check|see|print|find) the (version|installed version)(?|)"),
        ("Run `cohere --version` to print the installed version of cohere-cli.",),
        weight=0.5,
    ),
    Intent(
        "demo", "cohere chat demo",
        ("What is the demo( model|)(?|)",
         "(What is|Tell me about) the (built-in|bundled|included|default) model(?|)",
         "(Does it work without a download|Can I try it without downloading anything|Is there a model included|"
         "Can I test it without a big model|Do I need to download a model first)(?|)",
         "{HOW} (use|try|run|chat with) the demo( model|)(?|)"),
        ("demo is a tiny model of the cohere architecture that ships inside cohere-cli, so `cohere chat demo` "
         "works on a fresh install without any download. It only knows about this toolkit.",
         "The demo model is built in: `cohere chat demo` starts it right away, and `cohere generate demo` works "
         "too. It is small and only answers questions about cohere-cli; download a real model for anything else."),
    ),
    # ---------------------------------------------------------------- download
    Intent(
        "download", "cohere download",
        ("{HOW} (download|get|fetch|pull|grab|install|obtain) {MODEL}(?|)",
         "{HOW} (download|get|fetch) {MODEL} from Hugging Face(?|)",
         "(Where do I get|Where can I download|Where do I find) {MODEL}(?|)",
         "(download|downloading|fetch) (a model|models|weights|Command R)(?|)",
         "(I need|I want) {MODEL} on my (machine|computer|laptop|server)(.|)",
         "How do I put {MODEL} (on my machine|on my computer|on my laptop|in the store)(?|)",
         "(Can you|Could you|Please) (download|fetch|get) {MODEL} for me(?|.|)",
         "(I'd like to|Let me|I wanna) (try|use|run) (Command R7B|Aya Expanse|Command R|a real model|a bigger model), "
         "(how do I get it|where do I get it|what do I do first)(?|)"),
        ("Run `cohere download REPO_ID` with a Hugging Face repo id, for example "
         "`cohere download CohereForAI/c4ai-command-r7b-12-2024`. The download resumes if it is interrupted, every "
         "file is verified, and the model is saved in the local store.",
         "Use `cohere download` followed by the repo id, for example `cohere download CohereForAI/aya-expanse-8b`. "
         "Files are checked after download and an interrupted download picks up where it stopped. Afterwards "
         "`cohere models` lists it."),
        follow=("And how do I download one?", "Where do I get it?", "How do I fetch it?"),
        weight=1.5,
    ),
    Intent(
        "token", "--token",
        ("(The|My) download (fails|failed|doesn't work|says access denied|gives 401|gives 403|is forbidden)(.|!|)",
         "(I get|I'm getting|I keep getting|I got) (an error|401|403|access denied|a permission error) "
         "(when I download|from Hugging Face|while downloading Command R)(.|!|)",
         "(Why do I get|What does|I get) (401|403|error 401|error 403|access denied|unauthorized|forbidden|"
         "a gated repo error)( when downloading| mean|)(?|)",
         "{HOW} (use|pass|give|set|provide) my (Hugging Face|HF|hf) token(?|)",
         "(Where do I put|What do I do with) my (Hugging Face|HF|access) token(?|)",
         "{HOW} download (a gated model|a gated repo|gated weights|Command R if it is gated)(?|)",
         "(Is Command R gated|Why is the repo gated|What does gated mean|Do I need a token|Do I need to log in|"
         "Do I need a Hugging Face account)(?|)",
         "{HOW} (log in|login|sign in|authenticate) (to|with) Hugging Face(?|)"),
        ("The official Cohere repos are gated. Open the model page on Hugging Face, accept the license, create an "
         "access token, then pass it with --token or set HF_TOKEN, for example "
         "`cohere download CohereForAI/c4ai-command-r-08-2024 --token hf_xxx`.",
         "That repo is gated: accept the license on its Hugging Face model page first. Then give your access "
         "token with `cohere download REPO_ID --token hf_xxx`, or export HF_TOKEN once and download as usual."),
        cmds=("cohere download",),
    ),
    Intent(
        "dry_run", "--dry-run",
        ("{HOW} (see|check|preview|list) (what|which files) (would be|will be) downloaded(?|)",
         "{HOW} (check|see|know|find out) (the size|how big a model is|the download size|how much disk space I need) "
         "before downloading(?|)",
         "(How much disk space does a download need|How large is the download|Will the model fit on my disk|"
         "Can I preview a download|Is there a dry run|Can I simulate a download)(?|)",
         "{HOW} (preview|simulate|test) a download( without downloading|)(?|)",
         "{HOW} (see|view|get|print) (the list of files|the files|the file sizes) (before downloading|of a repo "
         "without downloading|first)(?|)"),
        ("Add --dry-run: `cohere download CohereForAI/c4ai-command-r7b-12-2024 --dry-run` lists the files and their "
         "total size, the free disk space and the memory needed to run the model, and downloads nothing.",
         "Use `cohere download REPO_ID --dry-run`. It shows every file, the total size, how much disk is free and "
         "how much memory the model will need, without downloading anything."),
        cmds=("cohere download",),
    ),
    Intent(
        "revision", "--revision",
        ("{HOW} download (a specific|an older|a particular) (revision|version|commit|branch|tag)( of a model|)(?|)",
         "(Can I pin a revision|Can I download a branch|Can I choose the commit|Can I get an older version of a "
         "model)(?|)"),
        ("Pass --revision with a branch, tag or commit hash, for example "
         "`cohere download CohereForAI/c4ai-command-r-v01 --revision main`.",),
        cmds=("cohere download",),
        weight=0.6,
    ),
    Intent(
        "include", "--include",
        ("{HOW} download only (some files|the safetensors|the config|the tokenizer|part of a repo|certain files)(?|)",
         "{HOW} (skip|exclude|leave out|ignore) (some files|files|the .bin files|the gguf files) (when|while) "
         "downloading(?|)",
         "(Can I filter the files|Can I pick which files to download|Can I use a glob pattern when downloading)(?|)"),
        ("Filter with glob patterns: --include keeps only matching files and --exclude skips them, and both can be "
         "repeated, for example `cohere download REPO_ID --include '*.json' --include '*.safetensors'`.",
         "Use --include GLOB to download only matching files and --exclude GLOB to skip files, for example "
         "`cohere download REPO_ID --exclude '*.bin'`."),
        cmds=("cohere download",),
        weight=0.6,
    ),
    Intent(
        "workers", "--max-workers",
        ("{HOW} (speed up|parallelize|make faster) (downloads|the download|downloading)(?|)",
         "(Can downloads run in parallel|How many files download at once|Can I download several files at once|"
         "The download is slow)(?|.|)"),
        ("Set the number of parallel downloads with --max-workers, for example "
         "`cohere download REPO_ID --max-workers 8`.",),
        cmds=("cohere download",),
        weight=0.5,
    ),
    Intent(
        "resume", "cohere download",
        ("{HOW} (resume|continue|restart) (a|an interrupted|a failed|a broken|my) download(?|)",
         "(My download was interrupted|The download stopped halfway|I lost my connection while downloading|"
         "The download crashed)(, what now|. What do I do|)(?|.|)",
         "(Are downloads resumable|Does the download resume|Do I have to start the download over)(?|)"),
        ("Run the same `cohere download REPO_ID` command again. Downloads are resumable: files that are already "
         "complete and verified are kept, and the rest continues where it stopped.",
         "Just start `cohere download REPO_ID` again: it resumes where it stopped instead of starting over, and "
         "it verifies every file at the end."),
        weight=0.7,
    ),
    Intent(
        "store", "COHERE_CLI_HOME",
        ("Where are (models|the models|downloaded models|the files|my models) (stored|saved|kept)(?|)",
         "Where (do|does) (models|the models|downloaded models|the files|my models|a download) (go|end up|live)(?|)",
         "{HOW} (change|move|set) (where models are stored|the model folder|the storage location|the store "
         "location|the cache folder|the download folder)(?|)",
         "(What is the store|Which folder holds the models|Where is the cache|Where is the local store)(?|)",
         "{HOW} (keep|store|put) models on (another|a bigger|an external|a different) disk(?|)"),
        ("Models are stored in ~/.cache/cohere-cli. Set the COHERE_CLI_HOME environment variable to use another "
         "folder, for example a bigger disk. `cohere models` lists what is there.",
         "The local store is ~/.cache/cohere-cli unless COHERE_CLI_HOME points somewhere else; set it, for "
         "example export COHERE_CLI_HOME=/data/models, to keep models on another disk."),
    ),
    # ---------------------------------------------------------------- models
    Intent(
        "list", "cohere models",
        ("{HOW} (list|see|show|view|check) (my|the|all|the downloaded|the installed|the local|which) "
         "(models|checkpoints)( I have| that are installed| I downloaded|)(?|)",
         "(Which models do I have|What models are installed|What did I download|What is in my store|"
         "Show my models|List models)(?|)",
         "{HOW} (get|print) the (model list|list of models) as JSON(?|)"),
        ("Run `cohere models` to list the models in your local store. Add --json, as in `cohere models --json`, "
         "to get the list as JSON.",
         "`cohere models` shows every model you have downloaded or made with quantize; `cohere models --json` "
         "prints the same list as JSON."),
        cmds=("cohere models",),
        follow=("How do I see them?", "Which ones do I have?"),
    ),
    Intent(
        "rm", "cohere models rm",
        ("{HOW} (remove|delete|uninstall|get rid of|erase|drop) {MODEL}(?|)",
         "{HOW} (free|free up|reclaim|recover) disk space(?|)",
         "(remove|delete) (a model|models|a checkpoint)(?|)",
         "{HOW} delete a model without (a confirmation|being asked|the prompt)(?|)"),
        ("Run `cohere models rm NAME` to delete a model from the store and free its disk space. It asks for "
         "confirmation first; add --yes to skip the question.",
         "Use `cohere models rm NAME`, for example `cohere models rm demo-nf4`. Pass --yes to delete without "
         "being asked."),
        cmds=("cohere models rm",),
        follow=("And how do I delete it?", "How do I remove it again?", "And to delete it?"),
    ),
    Intent(
        "info", "cohere models info",
        ("{HOW} (see|get|show|check) (details|information|info|the config|the manifest) (about|of|for) {MODEL}(?|)",
         "{HOW} (see|check|find out) how much (memory|RAM) {MODEL} (needs|uses|takes)(?|)",
         "(How much memory does|How much RAM does|How much memory will) {MODEL} (need|use|take)(?|)",
         "{HOW} (see|estimate) the (KV cache|kv cache) (size|memory)( for a long prompt| at 8192 tokens|)(?|)",
         "(Will|Does) {MODEL} fit in (memory|my RAM|16 GB of RAM)(?|)"),
        ("Run `cohere models info NAME`. It shows the manifest, a summary of the config and the memory needed for "
         "the weights and the KV cache; add --seq N to size the KV cache for N tokens, as in "
         "`cohere models info NAME --seq 8192`.",
         "`cohere models info NAME --seq 8192` prints the model's manifest and config and how much memory the "
         "weights and the KV cache for 8192 tokens need. Before downloading, "
         "`cohere download REPO_ID --dry-run` estimates the memory too."),
        cmds=("cohere models info",),
    ),
    Intent(
        "verify", "cohere models verify",
        ("{HOW} (verify|check|validate) (a model|the files|my download|the checksums|the hashes|that a model is "
         "intact|a checkpoint)(?|)",
         "(My model seems broken|A file looks corrupt|I think my download is corrupted|The weights fail to load)"
         "(, what can I do|)(?|.|)",
         "(Is my model corrupted|Are the files complete|Can I re-check the hashes)(?|)",
         "{HOW} (make sure|be sure|ensure|confirm) (my model|the files|the download|the weights) (is|are) "
         "(intact|complete|not corrupted|ok|correct|healthy)(?|)"),
        ("Run `cohere models verify NAME`. It hashes every file again and compares it with the manifest, so a "
         "corrupt or missing file shows up; download the model again with `cohere download` to repair it.",
         "`cohere models verify NAME` re-hashes all files of a model and reports any that do not match."),
        weight=0.8,
    ),
    # ---------------------------------------------------------------- quantize
    Intent(
        "quantize", "cohere quantize",
        ("{HOW} (quantize|quantise|compress|shrink) {MODEL}(?|)",
         "{HOW} make {MODEL} (smaller|lighter|use less memory|fit in less RAM|take less disk space)(?|)",
         "{HOW} (make|create|get) a (4-bit|4 bit|quantized|smaller|compressed) (model|version|copy)( of {MODEL}|)(?|)",
         "{HOW} (run|load) {MODEL} in 4 bits(?|)",
         "(quantize|quantization|4-bit quantization)(?|)",
         "(My model is too big|The model does not fit in memory|I don't have enough RAM)(, what can I do|)(?|.|)"),
        ("Run `cohere quantize MODEL --bits 4`, for example `cohere quantize demo --bits 4`. It writes a new store "
         "entry named MODEL-nf4, about 4x smaller than bf16, and prints a quality report against the original.",
         "Use `cohere quantize MODEL --bits 4` for nf4, about 4x smaller than bf16, or --bits 8 for int8, about 2x "
         "smaller. The result is a new model in the store, such as demo-nf4, and you chat with it like any other."),
        cmds=("cohere quantize",),
        follow=("And how do I make it smaller?", "Can I quantize it?", "How do I shrink it?"),
        weight=1.5,
    ),
    Intent(
        "int8", "--bits 8",
        ("{HOW} (quantize|make) {MODEL} (to|in|with|into) (8 bits|8-bit|8 bit|int8)(?|)",
         "{HOW} (make|create|get) an (8-bit|int8|8 bit) (model|version|copy)( of {MODEL}|)(?|)",
         "(int8 quantization|8-bit quantization|quantize to int8)(?|)"),
        ("Run `cohere quantize MODEL --bits 8`. It stores 8-bit vector-wise int8 weights, about 2x smaller than "
         "bf16 and very close to it in quality, as a new store entry named MODEL-int8.",
         "Use `cohere quantize MODEL --bits 8`, for example `cohere quantize demo --bits 8` makes demo-int8, "
         "about half the size of bf16."),
        cmds=("cohere quantize",),
        follow=("And with 8 bits?", "What about int8?", "And in 8-bit?"),
    ),
    Intent(
        "nf4", "cohere quantize",
        ("(What is|What's|What is the meaning of) (nf4|NF4|NormalFloat|NormalFloat4|4-bit NormalFloat)(?|)",
         "What does (nf4|NF4) (mean|stand for)(?|)",
         "(Explain|Tell me about|What do you know about) (nf4|NF4|NormalFloat|4-bit quantization)(.|?|)",
         "(How does nf4 work|How much smaller is nf4|Is nf4 good|Does nf4 hurt quality|How much does nf4 save)(?|)"),
        ("nf4 is 4-bit NormalFloat from bitsandbytes: weights are stored as 4-bit codes in blocks of 64, each block "
         "with its own scale, which makes the model about 4x smaller than bf16 with a small loss of quality. "
         "Make one with `cohere quantize MODEL --bits 4`.",
         "NormalFloat 4 (nf4) is a 4-bit data type whose 16 levels follow a normal distribution, like the weights "
         "do. It is about 4x smaller than bf16. `cohere quantize MODEL --bits 4` makes an nf4 copy and reports its "
         "quality."),
        cmds=("cohere quantize",),
    ),
    Intent(
        "int8_what", "cohere quantize",
        ("(What is|What's|What is the meaning of) (int8|INT8|8-bit quantization|LLM.int8)(?|)",
         "What does (int8|INT8) (mean|stand for)(?|)",
         "(Explain|Tell me about|What do you know about) (int8|INT8|8-bit quantization)(.|?|)",
         "(How does int8 work|How much smaller is int8|Is int8 good|Does int8 hurt quality)(?|)"),
        ("int8 stores every weight in 8 bits with one scale per row, the vector-wise scheme of bitsandbytes. It is "
         "about 2x smaller than bf16 and stays very close to it in quality. Make one with "
         "`cohere quantize MODEL --bits 8`.",),
        cmds=("cohere quantize",),
    ),
    Intent(
        "compare_quant", "cohere quantize",
        ("(Should I use|Which is better,) (nf4 or int8|int8 or nf4|4-bit or 8-bit|8-bit or 4-bit)(?|)",
         "What is the difference between (nf4 and int8|int8 and nf4|4 bits and 8 bits|4-bit and 8-bit)(?|)",
         "(nf4 vs int8|int8 vs nf4|4-bit vs 8-bit)(?|)",
         "Which quantization (should I pick|is best|do you recommend|keeps the most quality)(?|)"),
        ("nf4 (--bits 4) is the smallest, about 4x smaller than bf16, and loses a little quality; int8 (--bits 8) "
         "is about 2x smaller and nearly lossless. Try `cohere quantize MODEL --bits 4` first and read its quality "
         "report.",),
        cmds=("cohere quantize",),
    ),
    Intent(
        "fp4", "--quant-type",
        ("(What is fp4|Can I use fp4|fp4 or nf4|nf4 or fp4|What is the difference between fp4 and nf4)(?|)",
         "{HOW} (choose|pick|change|select) the (4-bit format|4-bit type|quant type|quantization type)(?|)",
         "{HOW} quantize (to|with) fp4(?|)"),
        ("With --bits 4 you can choose the 4-bit format with --quant-type: nf4, the default, or fp4, for example "
         "`cohere quantize MODEL --bits 4 --quant-type fp4`. nf4 usually keeps more quality.",),
        cmds=("cohere quantize",),
        weight=0.6,
    ),
    Intent(
        "blocksize", "--blocksize",
        ("(What is the block size|What does blocksize do|What is blocksize|Can I change the block size|"
         "Which block size does quantize use)(?|)",
         "{HOW} (change|set) the (block size|blocksize)( for nf4| when quantizing|)(?|)"),
        ("--blocksize sets how many weights share one scale in 4-bit quantization. The default is 64, as in "
         "`cohere quantize MODEL --bits 4 --blocksize 64`; smaller blocks are a bit more accurate and a bit "
         "larger.",),
        cmds=("cohere quantize",),
        weight=0.5,
    ),
    Intent(
        "double_quant", "--double-quant",
        ("(What is double quantization|What does double quant do|What is --double-quant|Should I use double "
         "quantization)(?|)",
         "{HOW} (turn off|disable|enable|turn on) double (quantization|quant)(?|)"),
        ("Double quantization also quantizes the per-block scales of 4-bit weights, which saves about 0.4 bits per "
         "weight. Switch it with --double-quant or --no-double-quant on `cohere quantize`.",),
        cmds=("cohere quantize",),
        weight=0.5,
    ),
    Intent(
        "keep", "--keep",
        ("{HOW} (keep|leave|exclude) (some layers|a layer|certain layers|the attention layers|some weights) "
         "(unquantized|in bf16|out of quantization|at full precision)(?|)",
         "(Can I skip quantizing some layers|Can I quantize only some layers|Can I keep layers in bf16)(?|)"),
        ("Use --keep with a glob of layer names to leave those layers unquantized, for example "
         "`cohere quantize MODEL --bits 4 --keep '*down_proj*'`. You can repeat --keep.",),
        cmds=("cohere quantize",),
        weight=0.5,
    ),
    Intent(
        "output", "--output",
        ("{HOW} (name|rename|choose the name of|pick a name for|save) the quantized model( somewhere else| "
         "in a folder| under another name|)(?|)",
         "(Where does the quantized model go|What is the quantized model called|Can I choose the output name|"
         "Can I overwrite a quantized model)(?|)",
         "{HOW} (overwrite|replace|redo) (a|an existing|the) quantized model(?|)"),
        ("By default the result is stored as MODEL-nf4 or MODEL-int8. Choose another name or a folder with "
         "--output, as in `cohere quantize MODEL --bits 4 --output my-model-4bit`, and add --force to overwrite "
         "an existing one.",),
        cmds=("cohere quantize",),
        weight=0.6,
    ),
    Intent(
        "report", "cohere quantize",
        ("(What is the quality report|How do I read the quality report|What does perplexity mean|"
         "What is KL divergence|What is top-1 agreement|How do I know if quantization hurt the model|"
         "How good is the quantized model)(?|)",
         "{HOW} (check|measure|compare) the quality of a quantized model(?|)",
         "{HOW} (skip|turn off|disable) the (evaluation|quality check|quality report)( after quantizing|)(?|)"),
        ("After quantizing, `cohere quantize` compares the new model with its parent and prints perplexity, KL "
         "divergence and top-1 agreement. Low KL and high agreement mean it behaves like the original. Add "
         "--no-eval to skip this check.",),
        cmds=("cohere quantize",),
        weight=0.7,
    ),
    # ---------------------------------------------------------------- chat
    Intent(
        "chat", "cohere chat",
        ("{HOW} (chat|talk) with {MODEL}(?|)",
         "{HOW} (start|open|begin|launch) (a chat|a conversation|the chat|chat mode|the REPL|an interactive "
         "session)( with {MODEL}|)(?|)",
         "{HOW} (ask|use) {MODEL}( questions| interactively|)(?|)",
         "(chat|chatting|interactive chat|start chatting)(?|)",
         "{HOW} (run|use) the model I downloaded(?|)",
         "{HOW} start (chatting|speaking) (with|to) {MODEL}(?|)",
         "{HOW} (talk to|speak with|speak to|converse with|have a conversation with) {MODEL}(?|)",
         "(I'd like to|I want to|Let me) (chat|talk) (with|to) {MODEL}(.|)"),
        ("Run `cohere chat MODEL`, for example `cohere chat demo`. Without MODEL it uses the last model you used, "
         "or demo if there is none, and tells you which one it loaded. Type /help in the chat for the chat "
         "commands.",
         "Start `cohere chat MODEL` and type your message, then press Enter. Ctrl-C stops an answer, /exit or "
         "Ctrl-D leaves the chat."),
        follow=("And how do I chat with it?", "How do I talk to it now?", "Now how do I use it?"),
        weight=1.5,
    ),
    Intent(
        "chat_default", "cohere chat",
        ("(Which model does cohere chat use|What happens if I run cohere chat without a model|"
         "Do I have to give a model to cohere chat|Which model is used by default|What is the default model|"
         "Can I omit the model name)(?|)",),
        ("When you run `cohere chat` without a model, it picks the last model you used, or the built-in demo if "
         "you have not used one yet, and prints which model it loaded.",),
    ),
    Intent(
        "oneshot", "--prompt",
        ("{HOW} (ask|send) (one|a single) (question|prompt|message) (and exit|without the REPL|from a script|"
         "non-interactively|from the shell)(?|)",
         "{HOW} use cohere chat in a (script|pipeline|shell script|cron job)(?|)",
         "(Can I chat without the interactive mode|Is there a one-shot mode|Can I pass the question on the "
         "command line)(?|)"),
        ("Use --prompt: `cohere chat MODEL --prompt \"How do I quantize a model?\"` answers that one message and "
         "exits, which suits scripts.",
         "Pass the message with --prompt, for example `cohere chat demo --prompt \"What is nf4?\"`; add --json "
         "for machine-readable output."),
        cmds=("cohere chat",),
    ),
    Intent(
        "system", "--system",
        ("{HOW} (set|change|give|add|use) a (system prompt|system message|preamble|system preamble|persona)"
         "( for the model| in chat|)(?|)",
         "{HOW} (tell|instruct) the model (how to behave|to be concise|to answer in French|to act as a pirate)(?|)",
         "(What is the system preamble|Can I give the model instructions)(?|)"),
        ("Start the chat with `cohere chat MODEL --system \"You are a concise assistant.\"`, or type /system "
         "followed by the new text while chatting.",
         "Give a system preamble with --system TEXT on `cohere chat`; in a running chat, /system TEXT replaces "
         "it."),
        cmds=("cohere chat",),
    ),
    Intent(
        "temperature", "--temperature",
        ("{HOW} (change|set|raise|lower|adjust) the temperature(?|)",
         "{HOW} make (the answers|the model|the output|it) more (creative|random|varied|deterministic|focused)(?|)",
         "(What does temperature do|What is temperature|Why do I always get the same answer|Is the output "
         "greedy)(?|)",
         "(I want|I'd like) (the answers|the output|the replies|the model) to be (more|less) (creative|random|"
         "diverse|varied|deterministic|predictable|boring)(, what do I change|, which setting|)(.|?|)",
         "(The answers are too boring|The output is too random|The answers are always the same|The model is not "
         "creative enough)(, what can I do|)(?|.|)"),
        ("Pass --temperature, for example `cohere chat MODEL --temperature 0.7`, or type /set temperature 0.7 in "
         "the chat. The default 0 means greedy decoding: the most likely token every time, so the same answer "
         "each time.",
         "Higher temperature gives more varied answers. Use --temperature 0.8 on `cohere chat` or "
         "`cohere generate`; 0, the default, is greedy and always gives the same answer."),
        cmds=("cohere chat", "cohere generate"),
    ),
    Intent(
        "sampling", "--top-p",
        ("{HOW} (use|set|change) (top-p|top p|top-k|top k|min-p|min p|nucleus sampling)(?|)",
         "(What is top-p|What is top-k|What is min-p|What sampling options are there|Which sampling settings "
         "exist|How do I control sampling)(?|)"),
        ("Sampling is shaped by --top-k K, --top-p P and --min-p P on `cohere chat` and `cohere generate`; they "
         "only matter when --temperature is above 0. In a chat, /set top_p 0.9, /set top_k 40 or /set min_p 0.05 "
         "change them.",),
        cmds=("cohere chat", "cohere generate"),
    ),
    Intent(
        "repetition", "--repetition-penalty",
        ("{HOW} (stop|prevent|avoid|reduce) (repetition|the model repeating itself|repeated words|loops)(?|)",
         "(The model keeps repeating itself|The answer repeats|What is the repetition penalty)(?|.|)"),
        ("Use --repetition-penalty, for example `cohere chat MODEL --repetition-penalty 1.1`; 1 turns it off. In "
         "a chat, /set repetition_penalty 1.1 changes it.",),
        cmds=("cohere chat",),
        weight=0.6,
    ),
    Intent(
        "seed", "--seed",
        ("{HOW} (get|make) (reproducible|repeatable|the same) (answers|output|results|samples)(?|)",
         "{HOW} (set|fix|choose) the (random seed|seed)(?|)"),
        ("Pass --seed with a number, for example `cohere chat MODEL --temperature 0.8 --seed 42`: with the same "
         "seed and settings, sampling gives the same answer again. In a chat, use /set seed 42.",),
        cmds=("cohere chat",),
        weight=0.6,
    ),
    Intent(
        "max_tokens", "--max-tokens",
        ("{HOW} (limit|shorten|cap|restrict) (the answer length|the length of answers|how much it writes|"
         "the number of tokens|the output)(?|)",
         "{HOW} (get|make) (shorter|longer) answers(?|)",
         "(The answer gets cut off|The answers are too long|Why does the answer stop in the middle)(?|.|)"),
        ("Limit the answer with --max-tokens N, for example `cohere chat MODEL --max-tokens 200`, or type "
         "/set max_tokens 200 in the chat.",),
        cmds=("cohere chat",),
        weight=0.7,
    ),
    Intent(
        "save", "/save",
        ("{HOW} (save|store|export|keep) (the|a|my|this) (conversation|chat|chat history|transcript)(?|)",
         "{HOW} (load|open|restore|reopen) a (saved|previous|old) (conversation|chat)(?|)",
         "(Can I save the chat|Can I save my conversation|Is the conversation saved)(?|)"),
        ("Type /save FILE in the chat to write the conversation to a JSON file, and /load FILE to bring it back. "
         "You can also continue a saved conversation with `cohere chat MODEL --history FILE`.",),
        follow=("And how do I save it?", "Can I save this?"),
    ),
    Intent(
        "history", "--history",
        ("{HOW} (continue|resume|pick up) a (saved|previous|old|earlier) (conversation|chat)"
         "( from the command line| later|)(?|)",
         "(Can I start a chat from a saved file|Can I continue yesterday's chat)(?|)"),
        ("Pass the saved file with --history: `cohere chat MODEL --history chat.json` continues that "
         "conversation. Inside a chat, /load FILE does the same.",),
        cmds=("cohere chat",),
        weight=0.6,
    ),
    Intent(
        "slash", "/help",
        ("(What are the|Which|List the|Show me the|What) (chat commands|slash commands|REPL commands|commands "
         "{IN_CHAT}|commands can I use {IN_CHAT})(?|)",
         "(What can I type|What can I do) {IN_CHAT}(?|)",
         "(help {IN_CHAT}|slash commands)(?|)"),
        ("Type /help in the chat for the list. The chat commands are /help, /exit, /reset, /system, /set, /show, "
         "/regen, /undo, /edit, /copy, /save, /load, /doc add, /doc list, /doc clear, /sources and /stats.",
         "In the chat, /help lists every command. The most used are /reset to start over, /regen for a new "
         "answer, /set to change a setting and /exit to leave."),
    ),
    Intent(
        "exit", "/exit",
        ("{HOW} (exit|quit|leave|close|get out of|stop) {CHAT}(?|)",
         "(How do I get out|exit|quit)(?|)"),
        ("Type /exit or press Ctrl-D to leave the chat.",
         "Press Ctrl-D, or type /exit, and the chat ends."),
    ),
    Intent(
        "reset", "/reset",
        ("{HOW} (clear|reset|restart|wipe) (the conversation|the chat|the history|the context)(?|)",
         "{HOW} start (over|a new conversation|fresh|from scratch) {IN_CHAT}(?|)",
         "(How do I forget the conversation|Can I clear the chat)(?|)",
         "(Forget|Clear|Erase|Delete|Drop) (everything|our conversation|the history|what I said|all previous "
         "messages)( and start over| and begin again|, please|)(.|!|)"),
        ("Type /reset to clear the conversation and start fresh with the same model and settings.",),
    ),
    Intent(
        "regen", "/regen",
        ("{HOW} (regenerate|redo|retry|reroll) (the|an|the last) answer(?|)",
         "{HOW} get (another|a different|a new) answer( to the same question|)(?|)",
         "(I don't like the answer|That answer was bad)(, can I get another one|)(?|.|)"),
        ("Type /regen to throw away the last answer and generate a new one for the same message. With the default "
         "greedy decoding it is the same answer, so first raise the temperature, for example /set temperature 0.8.",
         ),
    ),
    Intent(
        "undo", "/undo",
        ("{HOW} (undo|take back|remove|delete) (my last message|the last turn|the last exchange|the last "
         "question)(?|)",),
        ("Type /undo to remove your last message and the answer to it from the conversation.",),
        weight=0.6,
    ),
    Intent(
        "edit", "/edit",
        ("{HOW} (edit|change|fix|correct) (my last message|the last question|a typo in my message|my "
         "prompt)(?|)",),
        ("Type /edit to change your last message and get a new answer to it.",),
        weight=0.6,
    ),
    Intent(
        "copy", "/copy",
        ("{HOW} (copy|grab) (the answer|the last answer|the response|the output) (to the clipboard|)(?|)",),
        ("Type /copy to copy the last answer to the clipboard.",),
        weight=0.5,
    ),
    Intent(
        "show", "/show",
        ("{HOW} (see|show|check|view) the (current settings|settings|sampling settings|parameters)( {IN_CHAT}|)(?|)",
         "(What settings am I using|Which temperature is set)(?|)"),
        ("Type /show to see the current model, its precision, the sampling settings and how much of the context "
         "is used; /set NAME VALUE changes a setting.",),
        weight=0.6,
    ),
    Intent(
        "set", "/set",
        ("{HOW} change (a setting|settings|the sampling|parameters) {IN_CHAT}(?|)",
         "(What can I change with /set|What does /set do|How does /set work)(?|)"),
        ("Use /set NAME VALUE in the chat, for example /set temperature 0.5. The names are temperature, top_p, "
         "top_k, min_p, max_tokens, seed and repetition_penalty.",),
        weight=0.7,
    ),
    Intent(
        "stats", "/stats",
        ("{HOW} (see|check|measure) (the speed|tokens per second|how fast the answer was|the generation "
         "speed)( {IN_CHAT}|)(?|)",
         "(How fast was that|How many tokens per second was that)(?|)"),
        ("Type /stats in the chat to see the tokens and the speed of each turn. For a full measurement, use "
         "`cohere bench`.",),
        weight=0.6,
    ),
    Intent(
        "multiline", "Alt-Enter",
        ("{HOW} (write|type|enter|paste) (several lines|a multi-line message|multiple lines|a long text|a "
         "newline|code)( {IN_CHAT}|)(?|)",
         "(Enter sends my message too early|Can I paste code)(?|.|)"),
        ("Press Alt-Enter for a new line, or type \"\"\" to begin and end a multi-line message; Enter alone sends "
         "it.",),
        weight=0.7,
    ),
    Intent(
        "interrupt", "Ctrl-C",
        ("{HOW} (stop|interrupt|cancel|abort) (an answer|the answer|the generation|the model|a long answer)(?|)",
         "(The answer is too long, can I stop it|The model won't stop talking)(?|.|)"),
        ("Press Ctrl-C to stop the answer being generated; the chat stays open. Ctrl-D leaves the chat.",),
        weight=0.7,
    ),
    Intent(
        "doc", "--doc",
        ("{HOW} (chat with|ask questions about|use|add|give the model|load) (a document|my documents|a file|a PDF|"
         "my notes|a text file)(?|)",
         "(Does it support RAG|Can it answer from my files|Can the model cite sources|What is grounded "
         "generation|Can I use retrieval)(?|)",
         "{HOW} (add|remove|list|clear) documents {IN_CHAT}(?|)"),
        ("Pass files with --doc: `cohere chat MODEL --doc notes.txt --doc report.md`. The model answers from them "
         "and cites its sources, and /sources shows them. In a chat, /doc add FILE adds a document, /doc list "
         "shows them and /doc clear removes them.",),
        cmds=("cohere chat",),
    ),
    Intent(
        "citations", "--citations",
        ("(What are citation modes|What is the difference between accurate and fast citations|How do citations "
         "work|Can I make citations faster)(?|)",
         "{HOW} (change|choose|set) the citation mode(?|)"),
        ("With documents, --citations accurate first writes a plain answer and then the cited one, while "
         "--citations fast writes the cited answer directly, for example "
         "`cohere chat MODEL --doc notes.txt --citations fast`.",),
        cmds=("cohere chat",),
        weight=0.5,
    ),
    Intent(
        "json", "--json",
        ("{HOW} get (JSON|json|machine-readable) output(?|)",
         "(Is there JSON output|Can I parse the output|Can I get the answer as JSON)(?|)"),
        ("Add --json, for example `cohere chat MODEL --prompt TEXT --json` or `cohere generate MODEL PROMPT "
         "--json`, to get one JSON object with the text, the tokens and the speed.",),
        cmds=("cohere chat", "cohere generate"),
        weight=0.6,
    ),
    Intent(
        "plain", "--plain",
        ("{HOW} (turn off|disable|get rid of) (colors|Markdown rendering|formatting|the pretty output)(?|)",
         "(Can I get plain text output|Is there a plain mode)(?|)"),
        ("Add --plain to `cohere chat` to print answers as raw text instead of rendered Markdown.",),
        cmds=("cohere chat",),
        weight=0.5,
    ),
    Intent(
        "overflow", "--on-overflow",
        ("(What happens when the conversation gets too long|What if the chat exceeds the context|What happens "
         "when the context is full|The context is full)(?|.|)",
         "{HOW} (handle|deal with) (a long conversation|context overflow|a full context)(?|)"),
        ("When a conversation outgrows the model's context, --on-overflow drop removes the oldest turns to make "
         "room, and --on-overflow error stops with an error instead; set it on `cohere chat`.",),
        cmds=("cohere chat",),
        weight=0.5,
    ),
    Intent(
        "dtype", "--dtype",
        ("{HOW} (run|use|load) {MODEL} in (float32|bfloat16|float16|fp32|bf16|fp16|full precision|half precision)"
         "(?|)",
         "(What does --dtype do|Which dtype is used|Can I choose the precision)(?|)"),
        ("Use --dtype: auto, the default, picks the fastest type your CPU or GPU supports, usually bfloat16; you "
         "can force float32, bfloat16 or float16, as in `cohere chat MODEL --dtype float32`.",),
        cmds=("cohere chat", "cohere generate"),
        weight=0.5,
    ),
    Intent(
        "template", "--template",
        ("{HOW} (use|choose|pick|change) (a different|another|the rag|the tool_use) (chat template|template)(?|)",
         "(Which chat template is used|What is --template)(?|)"),
        ("--template NAME picks one of the chat templates that come with the model, for example "
         "`cohere chat MODEL --template rag`; without it the default template is used.",),
        cmds=("cohere chat",),
        weight=0.4,
    ),
    # ---------------------------------------------------------------- generate
    Intent(
        "generate", "cohere generate",
        ("{HOW} (complete|continue) (some text|a prompt|raw text|a sentence)( without the chat template|)(?|)",
         "{HOW} (run|do|get) (a raw completion|a one-shot completion|plain text generation|raw generation)(?|)",
         "(What is cohere generate|What is the difference between chat and generate|When should I use generate)"
         "(?|)",
         "(Which|What) command (continues|completes|extends) (text|my text|a prompt|a sentence)( without chat| with "
         "no template|)(?|)",
         "{HOW} (use|run) a model without the chat (template|format)(?|)"),
        ("Run `cohere generate MODEL PROMPT`, for example `cohere generate demo \"The cohere quantize command\"`. "
         "It continues the raw text without a chat template, streams it to stdout and prints speed to stderr.",
         "`cohere chat` wraps your message in the chat template, while `cohere generate MODEL PROMPT` continues "
         "the raw text as it is; both take --max-tokens, --temperature and --json."),
        cmds=("cohere chat", "cohere generate"),
    ),
    # ---------------------------------------------------------------- bench
    Intent(
        "bench", "cohere bench",
        ("{HOW} (benchmark|measure the speed of|test the speed of|time|profile) {MODEL}(?|)",
         "(How fast is|How fast does|How quick is) {MODEL}( run| on my machine| here|)(?|)",
         "How (fast|quickly|many tokens per second) (can|will) {MODEL} (run|answer|produce tokens|write)( here|)(?|)",
         "(Is|Will) {MODEL} (fast|quick|slow) (on my machine|on my laptop|on this CPU|enough)(?|)",
         "{HOW} (measure|see|check) (tokens per second|the throughput|the latency|the time to first token|"
         "prefill speed|decode speed)(?|)",
         "(benchmark|benchmarking|speed test)(?|)"),
        ("Run `cohere bench MODEL`. It measures prefill and decode speed in tokens per second, the time to first "
         "token, memory use and the fraction of the hardware limit reached (roofline).",
         "`cohere bench MODEL` prints prefill and decode tokens per second, time to first token and memory; "
         "--seq and --gen set the prompt and answer lengths."),
        cmds=("cohere bench",),
        follow=("And how fast is it?", "How do I benchmark it?"),
    ),
    Intent(
        "bench_options", "--seq",
        ("{HOW} (benchmark|measure) (with|at) (a long prompt|8192 tokens|a longer context|a different prompt "
         "length)(?|)",
         "{HOW} (change|set) (the prompt length|the number of generated tokens|the repeats) (in|for) (the "
         "benchmark|bench)(?|)"),
        ("`cohere bench MODEL --seq 8192 --gen 128` uses an 8192-token prompt and generates 128 tokens, and "
         "--repeat 3 runs each measurement three times.",),
        cmds=("cohere bench",),
        weight=0.6,
    ),
    Intent(
        "bench_precision", "--precision",
        ("{HOW} (compare|benchmark) (bf16, int8 and nf4|the precisions|quantized and unquantized|nf4 against "
         "bf16|different precisions)(?|)",
         "(Is nf4 faster|Is int8 faster|Which precision is fastest)(?|)"),
        ("`cohere bench MODEL --precision bf16,int8,nf4` benchmarks the model in bf16, int8 and nf4 in one run, "
         "so you can compare their speed and memory side by side.",),
        cmds=("cohere bench",),
        weight=0.6,
    ),
    Intent(
        "bench_compare", "--compare-to",
        ("{HOW} (compare|check) (two benchmark runs|against an earlier run|a benchmark with a previous one|"
         "benchmark results)(?|)",
         "{HOW} (save|keep) benchmark results(?|)"),
        ("Save a run with `cohere bench MODEL --json > before.json`, and later run "
         "`cohere bench MODEL --compare-to before.json` to see what changed.",),
        cmds=("cohere bench",),
        weight=0.5,
    ),
    # ---------------------------------------------------------------- servers
    Intent(
        "endpoint", "--endpoint",
        ("{HOW} (use|connect to|talk to|chat with) (a server|vLLM|TGI|a llama.cpp server|an OpenAI-compatible "
         "server|a remote model|an API|a model on another machine)(?|)",
         "(Does it work with vLLM|Can I use a remote server|Does it support OpenAI-compatible APIs|Can I point it "
         "at an endpoint)(?|)",
         "{HOW} benchmark (a server|vLLM|an endpoint)(?|)",
         "{HOW} (use|talk to|query) a model (hosted|running) (on|in|with) (vLLM|TGI|llama.cpp|another machine|"
         "a server|the cloud)(?|)",
         "(My model runs in vLLM|I have a llama.cpp server|I already run TGI)(, can I use it|, how do I connect|)"
         "(?|.|)"),
        ("Add --endpoint with the server URL to `cohere chat`, `cohere generate` or `cohere bench`, for example "
         "`cohere chat --endpoint http://localhost:8000/v1 --served-model command-r`. It works with OpenAI-compatible "
         "servers such as vLLM, TGI and llama.cpp server; pass --api-key if the server needs one.",),
        cmds=("cohere chat", "cohere generate", "cohere bench"),
    ),
    # ---------------------------------------------------------------- the Cohere models
    Intent(
        "family", "Command R7B",
        ("(Which|What) (Cohere models|models|open-weight models|Command models) (are there|exist|can I use|can I "
         "download|are available|does Cohere have)(?|)",
         "(List the Cohere models|Tell me about the Command R family|What is the Command R family|What models "
         "does this tool support)(?|.|)"),
        ("Cohere's open-weight models are Command R (35B, and the 32B 08-2024 version), Command R+ (104B), "
         "Command R7B (8B), Command A (111B), Aya 23 (8B and 35B) and Aya Expanse (8B and 32B). "
         "`cohere download` fetches them from the CohereForAI organization on Hugging Face.",),
    ),
    Intent(
        "command_r", "c4ai-command-r",
        ("(What is|Tell me about|How big is|How large is) (Command R|"
         "Command-R|command r|c4ai-command-r-v01|Command R 35B)(?|)",
         "How much (memory|disk|disk space|RAM) does (Command R|"
         "Command-R|command r|c4ai-command-r-v01|Command R 35B) (need|take|use)(?|)",
         "{HOW} (download|get) (Command R|Command-R|the 35B model)(?|)"),
        ("Command R (CohereForAI/c4ai-command-r-v01) has 35 billion parameters, about 70 GB in bf16; the newer "
         "CohereForAI/c4ai-command-r-08-2024 has 32 billion, about 65 GB. Download it with "
         "`cohere download CohereForAI/c4ai-command-r-08-2024`.",),
    ),
    Intent(
        "command_r_plus", "c4ai-command-r-plus",
        ("(What is|Tell me about|How big is|How large is) (Command R+|"
         "Command R plus|Command-R+|command r plus|R+|the 104B model)(?|)",
         "How much (memory|disk|disk space|RAM) does (Command R+|"
         "Command R plus|Command-R+|command r plus|R+|the 104B model) (need|take|use)(?|)",
         "{HOW} (download|get) (Command R+|Command R plus)(?|)"),
        ("Command R+ (CohereForAI/c4ai-command-r-plus-08-2024) has 104 billion parameters, about 208 GB in bf16 "
         "and roughly a quarter to a third of that with nf4. Download it with "
         "`cohere download CohereForAI/c4ai-command-r-plus-08-2024`.",),
    ),
    Intent(
        "command_r7b", "c4ai-command-r7b-12-2024",
        ("(What is|Tell me about|How big is|How large is) (Command R7B|"
         "Command R 7B|R7B|command r7b|the 7B model)(?|)",
         "How much (memory|disk|disk space|RAM) does (Command R7B|"
         "Command R 7B|R7B|command r7b|the 7B model) (need|take|use)(?|)",
         "{HOW} (download|get) (Command R7B|R7B|the smallest Command model)(?|)",
         "(Which model is the smallest|What is the smallest model|Which model fits on my laptop|Which model "
         "should I start with|Which model runs on a small machine)(?|)"),
        ("Command R7B (CohereForAI/c4ai-command-r7b-12-2024) has 8 billion parameters, about 16 GB in bf16, and "
         "`cohere quantize MODEL --bits 4` brings it to about 6 GB. Download it with "
         "`cohere download CohereForAI/c4ai-command-r7b-12-2024`.",),
    ),
    Intent(
        "command_a", "c4ai-command-a-03-2025",
        ("(What is|Tell me about|How big is|How large is) (Command A|"
         "command a|Command-A|the 111B model)(?|)",
         "How much (memory|disk|disk space|RAM) does (Command A|"
         "command a|Command-A|the 111B model) (need|take|use)(?|)",
         "{HOW} (download|get) Command A(?|)",
         "(Which model is the biggest|What is the largest Cohere model|"
         "Which Cohere model has the most parameters)(?|)"),
        ("Command A (CohereForAI/c4ai-command-a-03-2025) is the largest, with 111 billion parameters, about "
         "222 GB in bf16. Download it with `cohere download CohereForAI/c4ai-command-a-03-2025`.",),
    ),
    Intent(
        "aya", "aya",
        ("(What is|Tell me about|How big is|How large is) (Aya|Aya 23|Aya Expanse|aya-23|aya-expanse)(?|)",
         "{HOW} (download|get) (Aya|Aya 23|Aya Expanse|a multilingual model)(?|)",
         "(Which model is multilingual|Which model speaks other languages|Is there a model for other languages|"
         "Which model speaks French)(?|)"),
        ("Aya 23 and Aya Expanse are Cohere's multilingual models, covering 23 languages. Each comes in 8B, about "
         "16 GB in bf16, and a larger size: Aya 23 35B and Aya Expanse 32B. Download one with "
         "`cohere download CohereForAI/aya-expanse-8b`.",),
    ),
    Intent(
        "formats", "cohere download",
        ("(Does it support GGUF|Can I load a GGUF file|Can I use .bin files|Which file formats are supported|"
         "Can I load a model from a folder|Can I use a model I already have)(?|)",),
        ("cohere-cli reads Hugging Face checkpoints with safetensors weights, from the store or from a folder "
         "given as MODEL; .bin and GGUF files are not supported. Get the original repo with `cohere download`.",),
        weight=0.5,
    ),
]

INTENT_BY_NAME = {it.name: it for it in INTENTS}

SYSTEM_PREAMBLES = (
    "You are a helpful assistant.",
    "You are the cohere-cli help desk. Answer briefly.",
    "You are a helpful assistant that answers questions about cohere-cli.",
    "Answer questions about the cohere command line tool.",
    "You are Command, a helpful AI assistant.",
    "Be concise.",
    "You are a support bot for a CLI that runs Cohere models.",
    "You help users of cohere-cli. Always name the exact command.",
)

PREFIXES = ("Hi, ", "Hello! ", "Hey, ", "Quick question: ", "Question: ", "Sorry, ", "OK, ", "So ", "Please, ",
            "Hi there. ")
SUFFIXES = (" with cohere-cli", " in cohere-cli", " with this tool", " using the CLI", " from the terminal",
            " please")

# ---- held-out paraphrases: never in training (checked by _check_heldout) -----------------------------------------
HELDOUT: list[tuple[str, str]] = [
    ("What should I type to fetch Command R7B onto this computer?", "cohere download"),
    ("Is there some way to make my model use less RAM?", "cohere quantize"),
    ("I no longer need a model, how do I get rid of it for good?", "cohere models rm"),
    ("Show me all the checkpoints that are already on this machine.", "cohere models"),
    ("How quickly does a model generate text on this computer?", "cohere bench"),
    ("How can I begin talking to a model?", "cohere chat"),
    ("I'd like the answers to be more surprising, what should I change?", "--temperature"),
    ("Please wipe everything we said so far and start again.", "/reset"),
    ("I am finished chatting, how do I leave now?", "/exit"),
    ("What does NF4 actually mean?", "cohere quantize"),
    ("I'd like an 8-bit copy of my checkpoint.", "--bits 8"),
    ("How can I make sure the downloaded files are not damaged?", "cohere models verify"),
    ("Can I chat with a model served by vLLM?", "--endpoint"),
    ("Which command just continues my text, no chat format?", "cohere generate"),
    ("How many gigabytes is Command R plus?", "c4ai-command-r-plus"),
    ("I keep getting a 403 error when downloading, why?", "--token"),
    ("How do I see how much RAM a checkpoint will need?", "cohere models info"),
    ("Can my message span several lines?", "Alt-Enter"),
    ("How can I let the model answer from my own document?", "--doc"),
    ("Can I look at the file list before really downloading?", "--dry-run"),
]

# 40 training questions for scripts/eval_demo.py, spread over the intents. They are forced into every training set.
_HELDOUT_KEYS = {" ".join(re.sub(r"[^a-z0-9+]+", " ", q.lower()).split()) for q, _ in HELDOUT}
_EVAL_TRAIN_PER_INTENT = 1
_N_EVAL_TRAIN = 40


# ---- template expansion ------------------------------------------------------------------------------------------
def _apply_macros(template: str) -> str:
    return re.sub(r"\{([A-Z_]+)\}", lambda m: MACROS[m.group(1)], template)


def _parse(t: str):
    """'a (b|c) d' -> list of parts; a part is a str or a list of alternatives (each itself parsed)."""
    parts, i, buf = [], 0, ""
    while i < len(t):
        ch = t[i]
        if ch == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(t[j], 0)
                j += 1
            inner = t[i + 1 : j - 1]
            alts, depth, start = [], 0, 0
            for k, c in enumerate(inner):
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                elif c == "|" and depth == 0:
                    alts.append(inner[start:k])
                    start = k + 1
            alts.append(inner[start:])
            if buf:
                parts.append(buf)
                buf = ""
            parts.append([_parse(a) for a in alts])
            i = j
        else:
            buf += ch
            i += 1
    if buf:
        parts.append(buf)
    return parts


def _expand_parsed(parts) -> list[str]:
    out = [""]
    for p in parts:
        if isinstance(p, str):
            out = [o + p for o in out]
        else:
            opts = [s for alt in p for s in _expand_parsed(alt)]
            out = [o + s for o in out for s in opts]
    return out


def _sample_parsed(parts, rng: random.Random) -> str:
    s = ""
    for p in parts:
        s += p if isinstance(p, str) else _sample_parsed(rng.choice(p), rng)
    return s


def _tidy(q: str) -> str:
    q = re.sub(r"\s+", " ", q).strip()
    q = re.sub(r"\s+([?.!,])", r"\1", q)
    if re.match(r"(?i)i (want|need|would like) to ", q) and q.endswith("?"):
        q = q[:-1] + "."  # a statement, not a question
    return q


def expand(template: str) -> list[str]:
    return sorted({_tidy(q) for q in _expand_parsed(_parse(_apply_macros(template)))})


def normalize(q: str) -> str:
    """Comparison key for questions: case, punctuation and spacing do not make a question new."""
    return " ".join(re.sub(r"[^a-z0-9+]+", " ", q.lower()).split())


_PARSED: dict[str, object] = {}


# Other sentence frames around a template's verb phrase ("{HOW} download a model" -> "Need to download a model.
# How?"), so that the model sees the meaning words in many syntactic positions, not only after "How do I".
FRAMES = (
    "I'm trying to {VP}, what's the command?", "{VP}: which command?", "What's the command if I want to {VP}?",
    "Need to {VP}. How?", "Is there a command to {VP}?", "I'd like to {VP}, what should I run?",
    "How would one {VP}?", "{VP}, how?", "Teach me to {VP}.", "What do I need to {VP}?",
    "Explain to me how I can {VP}.", "Which option lets me {VP}?", "I don't know how to {VP}.",
    "Remind me how to {VP}.", "How does one {VP} with it?", "Wait, how do I {VP} again?",
)
# Sentences that carry no request: prepended now and then, so that the model learns to look past them.
DISTRACTORS = (
    "I'm new to this tool.", "I just installed cohere-cli.", "I'm on a laptop with 16 GB of RAM.",
    "This is my first time here.", "Sorry if this is a silly question.", "I have a question.", "I'm using Linux.",
    "I work on a Mac.", "My colleague recommended this tool.", "I'm done with that part.", "Okay, next thing.",
    "Another question.", "I read the README.", "I'm a beginner.", "It's for a school project.",
    "I have a small server at home.", "Hope you can help.", "I've been stuck on this for a while.",
    "Let me ask something else.", "Good to know.",
)
_HOW_PREFIX = "{HOW} "


def _frame_parts(t: str):
    """'{HOW} download {MODEL}(?|)' -> the parsed verb phrase without its final punctuation group, else None."""
    if not t.startswith(_HOW_PREFIX):
        return None
    vp = re.sub(r"\((?:[?.!]\|)+[?.!]?\)$", "", t[len(_HOW_PREFIX):])
    return _parse(_apply_macros(vp))


def sample_question(intent: Intent, rng: random.Random, frames: bool = True) -> str:
    t = rng.choice(intent.questions)
    if frames and t.startswith(_HOW_PREFIX) and rng.random() < 0.3:
        key = "VP:" + t
        if key not in _PARSED:
            _PARSED[key] = _frame_parts(t)
        vp = _tidy(_sample_parsed(_PARSED[key], rng)).rstrip("?.!")
        frame = rng.choice(FRAMES)
        q = frame.replace("{VP}", vp)
        return _tidy(q[0].upper() + q[1:])
    if t not in _PARSED:
        _PARSED[t] = _parse(_apply_macros(t))
    return _tidy(_sample_parsed(_PARSED[t], rng))


def all_questions(intent: Intent) -> list[str]:
    out = {q for t in intent.questions for q in expand(t)}
    for t in intent.questions:
        parts = _frame_parts(t)
        if parts is not None:
            vps = {_tidy(v).rstrip("?.!") for v in _expand_parsed(parts)}
            out |= {_tidy(f.replace("{VP}", v)) for f in FRAMES for v in vps}
    return sorted(out)


# ---- eval questions ----------------------------------------------------------------------------------------------
def eval_questions() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train_qs, heldout_qs): 40 questions that every training set contains, and 20 paraphrases that none does.
    Each item is (question, substring the answer must contain)."""
    rng = random.Random(1234)
    scored = [it for it in INTENTS if it.expect is not None]
    chosen: list[tuple[str, str]] = []
    order = sorted(scored, key=lambda it: -it.weight)  # the most asked intents first
    for it in order:
        if len(chosen) >= _N_EVAL_TRAIN:
            break
        for _ in range(_EVAL_TRAIN_PER_INTENT):
            q = sample_question(it, rng, frames=False)
            while q[0].islower() or not q.endswith("?"):  # pick well-formed ones
                q = sample_question(it, rng, frames=False)
            chosen.append((q, it.expect))
    return chosen[:_N_EVAL_TRAIN], list(HELDOUT)


# ---- conversations -----------------------------------------------------------------------------------------------
FILLERS = ("just", "actually", "really", "exactly", "please", "again", "now", "quickly", "here", "simply")
PLACES = (" on this computer", " on my machine", " on my laptop", " here", " for me", " right now", " today")


def _noise(q: str, rng: random.Random) -> str:
    """Small perturbations so that the model keys on meaning words, not on exact templates: a filler word, a dropped
    word, a typo, or a place phrase."""
    words = q.split()
    r = rng.random()
    if r < 0.10 and len(words) > 3:
        words.insert(rng.randrange(1, len(words)), rng.choice(FILLERS))
    elif r < 0.17 and len(words) > 4:
        del words[rng.randrange(1, len(words) - 1)]
    elif r < 0.24:
        k = rng.randrange(len(words))
        w = words[k]
        if len(w) > 4 and w.isalpha():
            j = rng.randrange(1, len(w) - 2)
            words[k] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif r < 0.31 and q.endswith("?"):
        return " ".join(words)[:-1] + rng.choice(PLACES) + "?"
    return " ".join(words)


def _surface(q: str, rng: random.Random) -> str:
    """Casual variants: noise, a distractor sentence, prefixes, suffixes, lower case, no final punctuation."""
    q = _noise(q, rng)
    if rng.random() < 0.12:
        q = rng.choice(DISTRACTORS) + " " + q
    r = rng.random()
    if r < 0.12 and q[:1].isupper():
        q = rng.choice(PREFIXES) + q[0].lower() + q[1:]
    elif r < 0.2 and q.endswith("?"):
        q = q[:-1] + rng.choice(SUFFIXES) + "?"
    r = rng.random()
    if r < 0.12:
        q = q.lower()
    elif r < 0.22:
        q = q.rstrip("?.!")
    return q


def _pick_intent(rng: random.Random, exclude: str | None = None) -> Intent:
    while True:
        it = rng.choices(INTENTS, weights=[i.weight for i in INTENTS])[0]
        if it.name != exclude:
            return it


def _qa(it: Intent, rng: random.Random) -> tuple[str, str]:
    return _surface(sample_question(it, rng), rng), rng.choice(it.answers)


def training_conversations(seed: int, n: int = 16000) -> list[list[dict]]:
    """`n` deterministic conversations (lists of {"role", "content"}) + the eval training questions, each 3 times.
    Mix: 55% single turn, 30% two or three turns (some with an elliptical follow-up), 15% greeting first and/or
    thanks last; a third start with a system preamble."""
    rng = random.Random(seed)
    convs: list[list[dict]] = []
    for _ in range(n):
        msgs: list[dict] = []
        if rng.random() < 0.33:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PREAMBLES)})
        kind = rng.random()
        turns: list[tuple[str, str]] = []
        if kind < 0.55:
            turns.append(_qa(_pick_intent(rng), rng))
        elif kind < 0.85:
            k = rng.choice((2, 2, 3))
            prev = None
            for _ in range(k):
                it = _pick_intent(rng, exclude=prev)
                if prev is not None and it.follow and rng.random() < 0.35:
                    turns.append((rng.choice(it.follow), rng.choice(it.answers)))
                else:
                    turns.append(_qa(it, rng))
                prev = it.name
        else:
            if rng.random() < 0.7:
                turns.append(_qa(INTENT_BY_NAME["greet"], rng))
            turns.append(_qa(_pick_intent(rng, exclude="greet"), rng))
            if rng.random() < 0.6:
                turns.append(_qa(INTENT_BY_NAME["thanks"], rng))
        if any(normalize(q) in _HELDOUT_KEYS for q, _ in turns):
            continue  # noise could, in principle, turn a question into a held-out one
        for q, a in turns:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        convs.append(msgs)
    train_qs, _ = eval_questions()
    for q, _exp in train_qs:
        it = next(i for i in INTENTS if i.expect == _exp and normalize(q) in _norm_questions(i))
        for _ in range(3):
            convs.append([{"role": "user", "content": q}, {"role": "assistant", "content": rng.choice(it.answers)}])
    rng.shuffle(convs)
    return convs


_NORM_CACHE: dict[str, set[str]] = {}


def _norm_questions(it: Intent) -> set[str]:
    if it.name not in _NORM_CACHE:
        _NORM_CACHE[it.name] = {normalize(q) for q in all_questions(it)}
    return _NORM_CACHE[it.name]


def all_training_question_keys() -> set[str]:
    """Normalized form of every question any training set can contain (templates fully expanded; the casual
    prefixes/suffixes only add words, so a held-out question that matches none of these bare forms and has none
    of those prefixes/suffixes cannot occur)."""
    keys: set[str] = set()
    for it in INTENTS:
        keys |= _norm_questions(it)
        keys |= {normalize(f) for f in it.follow}
    return keys


def check_heldout() -> None:
    keys = all_training_question_keys()
    affixes = [normalize(p) for p in PREFIXES + DISTRACTORS] + [normalize(s) for s in SUFFIXES + PLACES]
    for q, _ in HELDOUT:
        k = normalize(q)
        assert k not in keys, f"held-out question appears in training: {q!r}"
        for a in affixes:  # a held-out question with a casual affix stripped must not be a training question
            if k.startswith(a + " "):
                assert k[len(a) + 1 :] not in keys, q
            if k.endswith(" " + a):
                assert k[: -len(a) - 1] not in keys, q


# ---- what the answers name ---------------------------------------------------------------------------------------
# The CLI as the open issues specify it: top-level commands and their subcommands.
COMMAND_TREE = {"download": (), "models": ("rm", "info", "verify"), "quantize": (), "chat": (), "generate": (),
                "bench": ()}
_CODE = re.compile(r"`([^`]+)`")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_SLASH = re.compile(r"(?:(?<=\s)|(?<=^)|(?<=`)|(?<=,))/[a-z]+(?![\w/.])")


def _command_path(words: list[str]) -> str:
    """['cohere', 'models', 'rm', 'NAME'] -> 'cohere models rm'. Lower-case unknown words are errors."""
    path = ["cohere"]
    rest = words[1:]
    if rest and not rest[0].startswith("-"):
        w = rest[0]
        if w in COMMAND_TREE:
            path.append(w)
            if len(rest) > 1 and rest[1] in COMMAND_TREE[w]:
                path.append(rest[1])
        elif w.islower():
            raise ValueError(f"answer names unknown command 'cohere {w}'")
    return " ".join(path)


def named_commands_and_flags() -> dict[str, set]:
    """Every command (`cohere models rm`), (command, --flag) pair and /slash command that any answer names.
    Flags inside a `cohere ...` code span belong to that command; flags in prose belong to each of the intent's
    `cmds` (an answer naming a prose flag without `cmds` is an error)."""
    commands: set[str] = set()
    flags: set[tuple[str, str]] = set()
    slash: set[str] = set()
    for it in INTENTS:
        for ans in it.answers:
            for span in _CODE.findall(ans):
                words = span.split()
                if words and words[0] == "cohere":
                    cmd = _command_path(words)
                    commands.add(cmd)
                    flags |= {(cmd, f) for f in _FLAG.findall(span)}
            prose = _CODE.sub(" ", ans)
            for f in _FLAG.findall(prose):
                if not it.cmds:
                    raise ValueError(f"intent {it.name}: flag {f} in prose but no cmds to attach it to")
                flags |= {(c, f) for c in it.cmds}
            slash |= set(_SLASH.findall(ans))
            if re.search(r"(?<![`\w-])cohere (download|models|quantize|chat|generate|bench)\b", prose):
                raise ValueError(f"intent {it.name}: write commands in `code spans`: {ans!r}")
    commands |= {c for c, _ in flags}
    return {"commands": commands, "flags": flags, "slash": slash}


def corpus_lines(seed: int = 0) -> list[str]:
    """Text for training the BPE tokenizer: every answer, system preamble and a sample of every question
    template, plus some general text so that unseen words still tokenize sensibly."""
    rng = random.Random(seed)
    lines = [a for it in INTENTS for a in it.answers] * 4
    lines += list(SYSTEM_PREAMBLES)  # held-out questions stay out of the tokenizer corpus too
    for it in INTENTS:
        for _ in range(60):
            lines.append(_surface(sample_question(it, rng), rng))
    lines += _GENERAL_TEXT
    for _ in range(3000):  # word salad of everyday English, capitalized or not
        words = [rng.choice(_COMMON_WORDS) for _ in range(rng.randint(5, 14))]
        line = " ".join(words)
        lines.append(line.capitalize() + rng.choice((".", "?", "!", ",")) if rng.random() < 0.5 else line)
    return lines


# Everyday English for the tokenizer only (so that questions outside the toolkit still tokenize into words).
_COMMON_WORDS = """
about above accept account across act action active actually add address admit adult affect after again against
age agency agent ago agree agreement ahead air all allow almost alone along already also although always american
among amount analysis and animal another answer any anyone anything appear apply approach area argue arm around
arrive art article artist as ask assume at attack attention attorney audience author authority available avoid
away baby back bad bag ball bank bar base be beat beautiful because become bed before begin behavior behind
believe benefit best better between beyond big bill billion bit black blood blue board body book born both box boy
break bring brother budget build building business but buy by call camera campaign can cancer candidate capital
car card care career carry case catch cause cell center central century certain certainly chair challenge chance
change character charge check child choice choose church citizen city civil claim class clear clearly close coach
cold collection college color come commercial common community company compare computer concern condition
conference congress consider consumer contain continue control cost could country couple course court cover create
crime cultural culture cup current customer cut dark data daughter day dead deal death debate decade decide
decision deep defense degree democrat democratic describe design despite detail determine develop development die
difference different difficult dinner direction director discover discuss discussion disease do doctor dog door
down draw dream drive drop drug during each early east easy eat economic economy edge education effect effort eight
either election else employee end energy enjoy enough enter entire environment environmental especially establish
even evening event ever every everybody everyone everything evidence exactly example executive exist expect
experience expert explain eye face fact factor fail fall family far fast father fear federal feel feeling few
field fight figure fill film final finally financial find fine finger finish fire firm first fish five floor fly
focus follow food foot for force foreign forget form former forward four free friend from front full fund future
game garden gas general generation get girl give glass go goal good government great green ground group grow
growth guess gun guy hair half hand hang happen happy hard have he head health hear heart heat heavy help her here
herself high him himself his history hit hold home hope hospital hot hotel hour house how however huge human
hundred husband idea identify if image imagine impact important improve in include including increase indeed
indicate individual industry information inside instead institution interest interesting international interview
into investment involve issue it item its itself job join just keep key kid kill kind kitchen know knowledge land
language large last late later laugh law lawyer lay lead leader learn least leave left leg legal less let letter
level lie life light like likely line list listen little live local long look lose loss lot love low machine
magazine main maintain major majority make man manage management manager many market marriage material matter may
maybe me mean measure media medical meet meeting member memory mention message method middle might military
million mind minute miss mission modern moment money month more morning most mother mouth move movement movie
much music must my myself name nation national natural nature near nearly necessary need network never new news
newspaper next nice night none nor north not note nothing notice now number occur of off offer office officer
official often oil old on once one only onto open operation opportunity option or order organization other others
our out outside over own owner page pain painting paper parent part participant particular particularly partner
party pass past patient pattern pay peace people per perform performance perhaps period person personal phone
physical pick picture piece place plan plant play player point police policy political politics poor popular
population position positive possible power practice prepare present president pressure pretty prevent price
private probably problem process produce product production professional professor program project property
protect prove provide public pull purpose push put quality question quickly quite race radio raise range rate
rather reach read ready real reality realize really reason receive recent recently recognize record red reduce
reflect region relate relationship religious remain remember remove report represent require research resource
respond response responsibility rest result return reveal rich right rise risk road rock role room rule run safe
same save say scene school science scientist score sea season seat second section security see seek seem sell
send senior sense series serious serve service set seven several shake share she shoot short shot should shoulder
show side sign significant similar simple simply since sing single sister sit site situation six size skill skin
small smile so social society soldier some somebody someone something sometimes son song soon sort sound source
south southern space speak special specific speech spend sport spring staff stage stand standard star start state
statement station stay step still stock stop store story strategy street strong structure student study stuff
style subject success successful such suddenly suffer suggest summer support sure surface system table take talk
task tax teach teacher team technology television tell ten tend term test than thank that the their them
themselves then theory there these they thing think third this those though thought thousand threat three through
throughout throw thus time to today together tonight too top total tough toward town trade traditional training
travel treat treatment tree trial trip trouble true truth try turn two type under understand unit until up upon
us use usually value various very victim view violence visit voice vote wait walk wall want war watch water way we
weapon wear week weight well west western what whatever when where whether which while white who whole whom whose
why wide wife will win wind window wish with within without woman wonder word work worker world worry would write
writer wrong yard yeah year yes yet you young your yourself
""".split()

_GENERAL_TEXT = [
    "The quick brown fox jumps over the lazy dog. A large language model predicts the next token of a text.",
    "Machine learning models are trained on data; bigger models usually need more memory and more compute.",
    "Please write the answer in one short paragraph, and use simple words that everyone can understand.",
    "Yesterday I installed Python, created a virtual environment and ran the tests on my laptop and my server.",
    "Numbers such as 1, 2, 3, 10, 64, 128, 256, 4096, 8192 and 131072 are split into single digits.",
    "Je voudrais un café. Ich möchte eine Tasse Tee. Quiero aprender español. "
    "我想学习中文。 こんにちは。",
    "The weather is nice today, the sun is shining and the birds are singing in the garden near the river.",
    "Can you explain why the sky is blue, how computers work, and what happens when water boils at 100 degrees?",
    "Files, folders, disks, memory, processors, graphics cards and networks are parts of a computer system.",
    "She said that they would meet again next week, after the meeting with their teacher and his friends.",
]



# ---- tool use: the built-in list_models tool ---------------------------------------------------------------------
# With tools (`cohere chat --tools list_models`) the prompt is rendered with Command R's `tool_use` template. Asked
# which models it has, the demo calls list_models exactly as that template renders an assistant tool call (so the
# history replays token for token), then answers from the result, copying the names from it. Asked anything else
# with tools present, it answers directly in plain text (no `directly-answer` action: a plain answer needs no second
# round in the chat loop, and ToolCallParser reads it as answer text).
# A tool sample is {"tools": [OpenAI schemas], "messages": [...], "target": the assistant's next text}; the trainer
# renders messages + tools with the tool_use template (add_generation_prompt) and scores target + end of turn.

LIST_MODELS_SCHEMA = {"type": "function", "function": {
    "name": "list_models",
    "description": "The models installed locally: the store's entries and the built-in demo.",
    "parameters": {"type": "object", "properties": {}}}}  # = load_tools("list_models")[0].schema (tests check it)

# What the tool_use template renders for an assistant turn calling list_models, after "<|CHATBOT_TOKEN|>\n".
ACTION = 'Action:\n```json\n[\n    {\n        "tool_name": "list_models",\n        "parameters": {}\n    }\n]```'
DEMO_DESCRIPTION = "the small demo model shipped with cohere"


def _fn(name: str, description: str, params: dict[str, tuple[str, str]], required=()) -> dict:
    props = {k: {"type": t, "description": d} for k, (t, d) in params.items()}
    parameters = {"type": "object", "properties": props}
    if required:
        parameters["required"] = list(required)
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# Made-up tools shown beside list_models, so that the demo learns to pick it by its name and description.
OTHER_TOOLS = (
    _fn("internet_search", "Returns a list of relevant document snippets for a textual query retrieved from the "
        "internet.", {"query": ("string", "Query to search the internet with")}, ("query",)),
    _fn("get_weather", "The current weather in a city.", {"city": ("string", "Name of the city")}, ("city",)),
    _fn("calculator", "Evaluates an arithmetic expression.", {"expression": ("string", "The expression")},
        ("expression",)),
    _fn("git_log", "The latest commits of the current git repository.",
        {"count": ("integer", "How many commits to show")}),
    _fn("read_file", "The text of a file on this computer.", {"path": ("string", "Path of the file")}, ("path",)),
    _fn("send_email", "Sends an email.", {"to": ("string", "The recipient's address"),
                                          "subject": ("string", "Subject line"), "body": ("string", "The text")},
        ("to", "body")),
    _fn("disk_usage", "Free and used space on the disks of this computer.", {}),
    _fn("list_files", "The files in a folder.", {"folder": ("string", "The folder to list")}),
    _fn("current_time", "The current date and time.", {}),
    _fn("search_docs", "Searches the cohere-cli documentation.", {"query": ("string", "What to look for")},
        ("query",)),
)

MODEL_QUESTIONS = (
    "(Which|What) models do I have( installed| downloaded| locally| on this machine| on this computer| available|)"
    "(?|)",
    "(Which|What) (models|checkpoints) (are|are there|do I have) (installed|downloaded|in my store|on my machine|"
    "available|here)(?|)",
    "(List|Show|Show me|Tell me|Give me) (my|the|all my|all the|the installed|the local|the downloaded) "
    "(models|checkpoints)(.|!|)",
    "(Do I have|Have I got) any models( installed| downloaded| yet|)(?|)",
    "What('s| is) in my (store|model store|local store|cache)(?|)",
    "(Can you|Could you|Please) (list|check|tell me|look up) (my models|which models I have|what models I have|"
    "the models I have)(?|.|)",
    "(What|Which) models (can I use|are available to me|did I download|have I downloaded)(?|)",
    "How many models do I have( installed|)(?|)",
    "(Check|See) (which|what) models (are installed|I have)(.|)",
    "Models?",
    "(Which|What) models (exist|are there) (here|locally|on this machine|in my store)(?|)",
    "(Are there|Is there) any (models|checkpoints) (on this computer|in my store|installed|downloaded)(?|)",
    "(What|Which) (models|checkpoints) (could|can) I (chat with|use|try) (here|now|locally|)(?|)",
    "(Show|List|Give me) (every|each|all) (model|checkpoint|installed model|local model)( I have|)(.|)",
    "(What|Which) models (are|sit|live) (in|on) my (disk|computer|machine|store)(?|)",
    "(Find|Look up|Check) (the|my) (models|checkpoints)(, please|)(.|)",
)

# Paraphrases scored by scripts/eval_demo.py and never trained on (check_tool_heldout).
TOOL_HELDOUT = (
    "Could you find out which models are on this computer?",
    "Tell me which models are on my disk.",
    "What checkpoints do I currently have?",
    "Are there any models installed here?",
    "Give me the list of my models, please.",
    "Which models can I run right now?",
    "What have I got in the model store?",
    "Show the models I've downloaded so far.",
    "Please list every installed checkpoint.",
    "what local models exist",
)

# Store entries: realistic names and made-up ones, so that the answer is copied from the result, not remembered.
_REPOS = ("c4ai-command-r7b-12-2024", "c4ai-command-r-v01", "c4ai-command-r-08-2024", "c4ai-command-r-plus-08-2024",
          "c4ai-command-a-03-2025", "aya-expanse-8b", "aya-expanse-32b", "aya-23-8B", "aya-23-35B",
          "c4ai-command-r7b-arabic-02-2025", "command-a-vision-07-2025", "aya-vision-8b")
_ORGS = ("CohereLabs", "CohereForAI", "me", "acme", "my-org", "local", "team", "lab", "home")
_WORDS = ("tiny", "small", "mini", "test", "chat", "coder", "helper", "draft", "old", "new", "fast", "base", "tuned",
          "alpha", "beta", "gamma", "delta", "omega", "nova", "blue", "red", "green", "sun", "moon", "star", "river",
          "stone", "fox", "owl", "cat", "wolf", "bear", "hawk", "pine", "oak", "maple", "cedar", "iris", "rose",
          "atlas", "orion", "vega", "lyra", "nimbus", "pixel", "quill", "ember", "frost", "echo", "spark", "north",
          "south", "west", "east", "copper", "silver", "gold", "iron", "zinc", "legal", "medical", "support", "notes",
          "summary", "review", "lab", "work", "home", "my", "demo", "model", "llm", "bot", "agent", "writer")
_SIZES = ("", "", "7b", "8b", "1b", "3b", "32b", "35b", "104b", "2b", "13b")
_PRECISIONS = (("bf16", 1.0), ("nf4", 0.5), ("int8", 0.3), ("float16", 0.1), ("float32", 0.05))
_ARCHS = (("CohereForCausalLM", "cohere"), ("Cohere2ForCausalLM", "cohere2"))


def _made_up_name(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.choice((1, 2, 2, 3)))]
    size = rng.choice(_SIZES)
    name = "-".join(words + ([size] if size else []))
    if rng.random() < 0.35:
        name = f"{rng.choice(_ORGS)}/{name}"
    return name


def _store_name(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return f"{rng.choice(('CohereLabs', 'CohereForAI'))}/{rng.choice(_REPOS)}"
    if r < 0.55:
        return rng.choice(_REPOS)
    return _made_up_name(rng)


def store_entries(rng: random.Random, n: int, demo: bool | None = None) -> list[dict]:
    """What list_models returns for a store of `n` entries (each as `cohere_cli.chat.tools.list_models` writes it);
    the built-in demo first unless `demo` is False (it is hidden when the store has an entry named demo)."""
    out = []
    if demo is None:
        demo = rng.random() < 0.85
    if demo:
        out.append({"name": "demo", "builtin": True, "description": DEMO_DESCRIPTION})
    names: list[str] = []
    while len(names) < n:
        if rng.random() < 0.15:
            name = f"demo-{rng.choice(('nf4', 'int8'))}"
        else:
            name = _store_name(rng)
        if rng.random() < 0.3 and "/" in name:
            name = name.split("/", 1)[1]
        if rng.random() < 0.25 and not name.endswith(("nf4", "int8")):
            name += rng.choice(("-nf4", "-int8"))
        if name not in names and name != "demo":
            names.append(name)
    for name in names:
        prec = ("nf4" if name.endswith("nf4") else "int8" if name.endswith("int8") else
                rng.choices([p for p, _ in _PRECISIONS], weights=[w for _, w in _PRECISIONS])[0])
        arch = rng.choice(_ARCHS)[0]
        params = 7966720 if name.startswith("demo") else rng.choice(
            (8028033024, 34980831232, 103810674688, 8030261248, 111057580032, 32298647552, 35000000000))
        if rng.random() < 0.05:
            arch, params = None, None
        out.append({"name": name, "builtin": False, "architecture": arch, "parameters": params, "precision": prec})
    return out


def tool_result(entries: list[dict]) -> str:
    """The `tool` message text run_tool gives for list_models' return value (the tool's own formatter)."""
    from cohere_cli.chat.models_tool import models_text

    return models_text(entries)


def models_answer(entries: list[dict], rng: random.Random | None = None) -> str:
    """The answer from list_models' result: every name, in the result's order, as the result's first line has
    them ("You have " + that line + ".")."""
    names = [e["name"] for e in entries]
    if not names:
        return "You have no models yet. Download one with `cohere download`, or chat with the built-in demo."
    return f"You have {tool_result(entries).splitlines()[0]}."


def _tools_for(rng: random.Random) -> list[dict]:
    tools = [LIST_MODELS_SCHEMA]
    k = rng.choices((0, 1, 2, 3), weights=(0.4, 0.3, 0.2, 0.1))[0]
    tools += rng.sample(OTHER_TOOLS, k)
    rng.shuffle(tools)
    return tools


def _call_message(rng: random.Random) -> dict:
    return {"role": "assistant", "tool_calls": [{"id": f"call_{rng.getrandbits(48):012x}", "type": "function",
                                                 "function": {"name": "list_models", "arguments": {}}}]}


def sample_model_question(rng: random.Random) -> str:
    t = rng.choice(MODEL_QUESTIONS)
    if t not in _PARSED:
        _PARSED[t] = _parse(t)
    q = _tidy(_sample_parsed(_PARSED[t], rng))
    return q[0].upper() + q[1:]


_TOOL_HELDOUT_KEYS = {normalize(q) for q in TOOL_HELDOUT}


def tool_conversations(seed: int, n: int = 1100) -> list[dict]:
    """`n` deterministic tool samples: 25% a models question -> the list_models action; 35% the same with the
    action and its result in the history -> the answer naming the result's models (0-5 store entries); 40% another
    question (a help-desk one) with tools present -> its plain answer. A fifth start with a system preamble, some
    after an earlier help-desk exchange."""
    rng = random.Random(seed * 7919 + 17)
    out: list[dict] = []
    while len(out) < n:
        msgs: list[dict] = []
        if rng.random() < 0.2:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PREAMBLES)})
        if rng.random() < 0.15:
            q, a = _qa(_pick_intent(rng, exclude="list"), rng)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        kind = rng.random()
        if kind < 0.6:  # 0-0.25 the call, 0.25-0.6 the answer from its result
            q = sample_model_question(rng) if rng.random() < 0.85 else _surface(sample_model_question(rng), rng)
            if normalize(q) in _TOOL_HELDOUT_KEYS:
                continue
            msgs.append({"role": "user", "content": q})
            if kind < 0.25:
                target = ACTION
            else:
                entries = store_entries(rng, rng.choices(range(6), weights=(0.1, 0.25, 0.25, 0.2, 0.12, 0.08))[0])
                if rng.random() < 0.03:
                    entries = []
                msgs += [_call_message(rng), {"role": "tool", "tool_call_id": "x", "content": tool_result(entries)}]
                msgs[-1]["tool_call_id"] = msgs[-2]["tool_calls"][0]["id"]
                target = models_answer(entries)
        else:
            q, target = _qa(_pick_intent(rng, exclude="list"), rng)
            if normalize(q) in _HELDOUT_KEYS:
                continue
            msgs.append({"role": "user", "content": q})
        out.append({"tools": _tools_for(rng), "messages": msgs, "target": target})
    return out


COPY_ASKS = ("Which models are in this list?", "Name the models in this list.", "List the model names.",
             "Here is what list_models returned. Which models do I have?", "Which models does this show?",
             "What are the names here?", "Give me just the names.", "My store has these models:",
             "This is the output of list_models:", "Which of these models do I have?")


def copy_drills(seed: int, n: int) -> list[list[dict]]:
    """`n` short conversations (default template) drilling the skill the tool answers need and an 8M model learns
    slowly inside a long tool prompt: copying every name out of a list_models result, in order. The result is pasted
    into the user's message; the answer is models_answer's. Made-up names, so they are copied, not remembered."""
    rng = random.Random(seed * 104729 + 5)
    out = []
    for _ in range(n):
        entries = store_entries(rng, rng.choices(range(1, 7), weights=(0.15, 0.25, 0.25, 0.15, 0.12, 0.08))[0])
        ask, res = rng.choice(COPY_ASKS), tool_result(entries)
        content = f"{ask}\n{res}" if rng.random() < 0.6 else f"{res}\n{ask}"
        out.append([{"role": "user", "content": content}, {"role": "assistant", "content": models_answer(entries)}])
    return out


def tool_eval_cases() -> dict:
    """For scripts/eval_demo.py: held-out model questions (-> a list_models call), stores of held-out made-up names
    (-> an answer naming all of them) and help-desk questions with tools present (-> a plain answer naming the
    command)."""
    rng = random.Random(4321)
    stores = []
    for k in (1, 2, 2, 3, 3, 4, 4, 5, 2, 3):
        entries = store_entries(rng, k, demo=rng.random() < 0.5)
        stores.append((TOOL_HELDOUT[len(stores) % len(TOOL_HELDOUT)], entries))
    direct = [(q, e) for q, e in eval_questions()[0] if e in ("cohere quantize", "cohere download", "/exit",
                                                              "cohere bench", "--temperature")]
    return {"calls": list(TOOL_HELDOUT), "stores": stores, "direct": direct}


def check_tool_heldout() -> None:
    keys = {normalize(q) for t in MODEL_QUESTIONS for q in expand(t)}
    for q in TOOL_HELDOUT:
        assert normalize(q) not in keys, f"held-out tool question appears in training: {q!r}"

if __name__ == "__main__":  # a quick look at the data and the self-checks
    check_heldout()
    named = named_commands_and_flags()
    convs = training_conversations(0)
    print(f"{len(INTENTS)} intents, {sum(len(all_questions(i)) for i in INTENTS)} question variants, "
          f"{len(convs)} conversations")
    for c in convs[:5]:
        print(c)
    print(sorted(named["commands"]))
    print(sorted(named["flags"]))
    print(sorted(named["slash"]))
    tq, hq = eval_questions()
    for q in tq:
        print("TRAIN", q)
