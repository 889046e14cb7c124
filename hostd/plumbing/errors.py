"""The one error type a user sees as a single line and exit code 2, and the exit codes hostd ends with."""

EXIT_CHECK_FAILED = 1  # measured, but a check failed (or a child died): the figures are not to be trusted
EXIT_USAGE = 2         # bad input, refused before anything ran
EXIT_SIGNAL = 130      # Ctrl-C or SIGTERM: everything stopped and removed
EXIT_SIGPIPE = 141     # the reader of our output went away (`| head`): 128 + SIGPIPE, as a killed `git log | head`


class UsageError(Exception):
    """Bad input: printed as `hostd: error: <message>` with exit code 2, never a traceback."""
