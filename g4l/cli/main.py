"""``g4l``: parse the command line, run one command, print its result, exit with its code.

Output contract (docs/cli.md): the result on stdout (one JSON object with ``--json``),
the progress display and errors on stderr (``error: <CODE>: <message>``); exit 0 on
success, 1 when the server refused or failed, 2 for usage errors, 3 when the server
could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from g4l.cli.commands import MODULES
from g4l.cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError
from g4l.cli.options import Options, add_global_options

EPILOG = ("The current session (after bang, continue, retry, crop) is remembered in $G4L_CLI_STATE "
          "(default ~/.config/g4l/state.json). Exit codes: 0 ok, 1 refused by the server, 2 usage, "
          "3 server unreachable. See docs/cli.md.")


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the CLI's ``error: USAGE: ...`` form."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"error: USAGE: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the shared options, then one sub-command."""
    parser = _Parser(prog="g4l", description="Command line client of a g4l server: device sessions "
                                             "(bang, continue, retry, crop), text-to-music jobs, live "
                                             "listening and stations.", epilog=EPILOG)
    add_global_options(parser, suppress=False)
    shared = _Parser(add_help=False)
    add_global_options(shared, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in MODULES:
        module.register(sub, [shared])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``g4l`` with ``argv`` (default: the process's); returns the exit code."""
    args = build_parser().parse_args(argv)
    opts = Options.from_args(args)
    try:
        outcome = args.run(args, opts)
    except CliError as exc:
        return _fail(exc, opts.json)
    except KeyboardInterrupt:
        return _fail(CliError("INTERRUPTED", "stopped by Ctrl-C", EXIT_INTERRUPTED), opts.json)
    if opts.json:
        print(json.dumps(outcome.data, sort_keys=True))
    else:
        print(outcome.text)
    sys.stdout.flush()
    if outcome.error is not None:
        _report(outcome.error)
        return outcome.error.exit_code
    if outcome.after is not None:
        try:
            return outcome.after()
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK


def _fail(exc: CliError, as_json: bool) -> int:
    if as_json:  # scripts reading stdout get one object either way
        print(json.dumps({"error": {"code": exc.code, "message": exc.message}}, sort_keys=True))
    _report(exc)
    return exc.exit_code


def _report(exc: CliError) -> None:
    print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
