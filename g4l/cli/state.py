"""The CLI's memory between runs: the current session of each server.

A small JSON file (``$G4L_CLI_STATE``, default ``~/.config/g4l/state.json``)::

    {"servers": {"http://127.0.0.1:8000": {"session_id": "...", "last_output": "/abs/out.wav",
                                           "updated": 1767000000.0}}}

Keyed by server URL, so a session id is never sent to a server that does not know it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_PATH = "~/.config/g4l/state.json"


def state_path() -> Path:
    """Where the state lives: ``$G4L_CLI_STATE`` or :data:`DEFAULT_PATH`."""
    return Path(os.environ.get("G4L_CLI_STATE") or DEFAULT_PATH).expanduser()


class State:
    """The remembered sessions, read once per run and written when they change."""

    def __init__(self, path: Path, servers: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = path
        self.servers = servers or {}

    @classmethod
    def load(cls, path: Path | None = None) -> State:
        """Read the state file; a missing or unreadable one is an empty state (it is only
        a convenience, never worth failing a command for)."""
        path = path or state_path()
        try:
            data = json.loads(path.read_text())
            servers = data.get("servers") if isinstance(data, dict) else None
        except (OSError, ValueError):
            servers = None
        return cls(path, servers if isinstance(servers, dict) else {})

    def session(self, url: str) -> str | None:
        """The current session id for the server at ``url``, if any."""
        entry = self.servers.get(_key(url)) or {}
        sid = entry.get("session_id")
        return sid if isinstance(sid, str) and sid else None

    def remember(self, url: str, session_id: str, output: Path | None = None) -> None:
        """Make ``session_id`` the current session of ``url`` (and note its latest file)."""
        entry: dict[str, Any] = {"session_id": session_id, "updated": time.time()}
        if output is not None:
            entry["last_output"] = str(output)
        self.servers[_key(url)] = entry
        self.save()

    def forget(self, url: str) -> None:
        """Drop the current session of ``url``."""
        if self.servers.pop(_key(url), None) is not None:
            self.save()

    def save(self) -> None:
        """Write atomically (a crash never leaves half a file), private to the user."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"servers": self.servers}, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _key(url: str) -> str:
    return url.rstrip("/")
