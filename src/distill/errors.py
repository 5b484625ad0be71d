"""One exception type for every mistake a user can make.

The CLI prints a `DistillError` as one line and exits non-zero; anything else is a bug in
distill and keeps its traceback.
"""


class DistillError(Exception):
    """A user's mistake (config, data, checkpoint, request): the message names what to fix."""
