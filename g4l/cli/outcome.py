"""What a command hands back to :func:`g4l.cli.main.main` to print."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from g4l.cli.errors import CliError


@dataclass
class Outcome:
    """A command's result.

    :param data: the ``--json`` object (printed as one line on stdout).
    :param text: the lines for a person (printed on stdout without ``--json``).
    :param error: a failure to report after the output (``g4l health`` when not ready).
    :param after: run after printing, returns the exit code (``g4l listen --play``).
    """

    data: dict[str, Any]
    text: str
    error: CliError | None = None
    after: Callable[[], int] | None = None
