"""The command line's user-facing error and exit codes, shared by every ``mobile-o`` verb.

A leaf module: it imports nothing from the package, so the main CLI and each tier's verbs (``ros``, ``trt``,
``shapes``) raise the same error without importing one another.
"""

from __future__ import annotations

EXIT_FAILURE = 1
"""The verb ran and failed (a check failed, a request was refused, a file could not be written)."""

EXIT_BAD_INPUT = 2
"""The arguments or input files are wrong; also argparse's own exit status."""

EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT)."""


class CliError(Exception):
    """A user-facing failure; ``mobile-o`` prints the message as one line and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code
