"""The options every command shares, resolved once from the command line and environment."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from g4l.cli.state import State

DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds to wait for a generation's result: long enough for a queue in front of a
#: large model, short enough that a lost server does not hang a script forever.
DEFAULT_TIMEOUT_S = 1800.0


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Add the shared options to ``parser``.

    :param suppress: leave unset options out of the namespace, so that an option given
        after the command does not reset one given before it (``g4l --json bang ...`` and
        ``g4l bang ... --json`` both work).
    """
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("server and output")
    group.add_argument("--url", default=default(None),
                       help=f"server URL (default: $G4L_URL or {DEFAULT_URL})")
    group.add_argument("--api-key", default=default(None), help="API key (default: $G4L_API_KEY)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print one JSON object with the result on stdout, nothing else")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default(None),
                       help="show (or hide) the live progress display on stderr (default: when stderr is a terminal)")
    group.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT_S), metavar="S",
                       help=f"seconds to wait for a result (default {DEFAULT_TIMEOUT_S:g})")


@dataclass
class Options:
    """What every command needs to know besides its own arguments."""

    url: str
    api_key: str | None
    json: bool
    progress: bool
    timeout: float
    state: State = field(repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        """Resolve the shared options (flags first, then the environment, then defaults)."""
        url = (args.url or os.environ.get("G4L_URL") or DEFAULT_URL).rstrip("/")
        if "://" not in url:
            url = "http://" + url
        key = args.api_key or os.environ.get("G4L_API_KEY") or None
        progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
        return cls(url=url, api_key=key, json=bool(args.json), progress=progress,
                   timeout=float(args.timeout), state=State.load())
