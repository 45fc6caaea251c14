"""User-facing errors.

A `BenchError` is a problem the user can fix (bad input file, unknown method, invalid config value, missing
network...). The CLI prints its message as one line and exits non-zero, without a traceback. Anything else
that escapes is a bug in the harness and keeps its traceback.
"""


class BenchError(Exception):
    """A user error: the message names the problem and, where possible, what to do."""
