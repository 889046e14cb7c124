"""The one error type a user sees as a single line and exit code 2."""


class UsageError(Exception):
    """Bad input: printed as `hostd: error: <message>` with exit code 2, never a traceback."""
