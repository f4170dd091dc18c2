"""Typed errors. Every failure a user can cause is one of these; the CLI boundary (cli.main) turns them into a
single line on stderr and a non-zero exit. Messages say what went wrong *and* what to do about it."""


class CohereError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_code = 1


class UsageError(CohereError):
    """Bad arguments or options (exit 2, like click's usage errors)."""

    exit_code = 2


class ModelNotFound(CohereError):
    """MODEL is neither a checkpoint folder nor a name in the store."""


class CheckpointError(CohereError):
    """The folder is not a loadable checkpoint: bad config, missing/unexpected/corrupt tensors."""


class TokenizerError(CohereError):
    """tokenizer.json / tokenizer_config.json missing or unusable."""


class TemplateError(CohereError):
    """The chat template is missing or rejected the conversation."""


class ContextOverflow(CohereError):
    """The prompt (plus generation) does not fit in the model's context."""


class StoreError(CohereError):
    """The checkpoint store is in a state we cannot work with."""


class DownloadError(CohereError):
    """Fetching from the Hub failed (network, auth, verification)."""


class QuantizeError(CohereError):
    """Quantization cannot proceed."""


class CohereWarning(UserWarning):
    """Something the user should know that does not stop the command: library code warns with this category and the
    CLI boundary (cli.py) shows it as one "warning:" line on stderr."""


class UnsafeInput(CohereError):
    """Something from outside (a Hub listing, a checkpoint's file, a server's answer) names a path outside where it
    belongs, or is too big, too deep or not the kind of file it must be."""


class NotARegularFile(UnsafeInput):
    """A FIFO (reading it would block forever), a device (/dev/zero never ends) or a folder where a file belongs."""


class TooBig(UnsafeInput):
    """A file over the size bound of what it is."""


class EngineBusy(CohereError):
    """A server's batch engine has as many requests waiting as it queues: the client should retry later."""
