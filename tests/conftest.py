import os
import signal
import sys
from pathlib import Path

# Factories (factory_checkpoint, factory_tokenizer) are imported by name from this folder.
sys.path.insert(0, str(Path(__file__).parent))

# The Ctrl-C tests need commands that Ctrl-C can stop. A suite started in the background of a non-interactive shell
# (`.ci/run &`, nohup) inherits SIGINT *ignored*, and every command it starts would inherit that too (Python then
# never raises KeyboardInterrupt). A handler is not inherited across exec: the commands start with the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests must never touch the user's store or reach the real Hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A throwaway store for the whole run (subprocesses inherit it); tests that need their own set it themselves.
if "COHERE_CLI_HOME" not in os.environ or not os.environ.get("COHERE_CLI_TEST_KEEP_HOME"):
    import tempfile

    os.environ["COHERE_CLI_HOME"] = tempfile.mkdtemp(prefix="cohere-cli-test-home-")
