"""One exception type for every mistake a user can make.

The CLI prints a `DistillError` as one line and exits non-zero; anything else is a bug in
distill and keeps its traceback.
"""


class DistillError(Exception):
    """A user's mistake (config, data, checkpoint, request): the message names what to fix."""


class MissingFeatureError(LookupError):
    """A model asked a batch for a feature the batch does not carry (e.g. a privileged one)."""
