"""The CLI's one error type and its exit codes (docs/cli.md lists them)."""

from __future__ import annotations

#: Success.
EXIT_OK = 0
#: The server refused or failed the request; the message carries its error code.
EXIT_REFUSED = 1
#: The command line cannot be served: bad arguments, a missing file, no current session.
EXIT_USAGE = 2
#: The server could not be reached, did not answer in time or answered nonsense.
EXIT_UNREACHABLE = 3
#: Ctrl-C (the shell's convention: 128 + SIGINT).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to report as ``error: <code>: <message>`` and exit with ``exit_code``.

    :param code: the server's stable error code (``MODEL_NOT_ALLOWED``...) or one of the
        CLI's own (``USAGE``, ``UNREACHABLE``, ``TIMEOUT``, ``BAD_REPLY``).
    :param message: what went wrong, fit to show a person.
    :param exit_code: one of the ``EXIT_*`` constants.
    """

    def __init__(self, code: str, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.exit_code = exit_code


def usage(message: str) -> CliError:
    """A usage error (exit 2)."""
    return CliError("USAGE", message, EXIT_USAGE)


def unreachable(code: str, message: str) -> CliError:
    """The server could not be talked to (exit 3)."""
    return CliError(code, message, EXIT_UNREACHABLE)
