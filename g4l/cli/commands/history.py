"""History commands: ``history``, ``undo``, ``redo`` and ``checkout V`` of a session, over
``/api/v1``; a move writes the session's new current audio to a file, as a generation does."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from g4l.cli import files
from g4l.cli.commands.session import session_option, session_or_current
from g4l.cli.errors import usage
from g4l.cli.http import API, Api
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``history``, ``undo``, ``redo`` and ``checkout``."""
    p = sub.add_parser("history", parents=parents, help="the session's versions (undo, redo, branches)",
                       description="Every version of the session's audio: what made it, from which version, "
                                   "and which is current (*).")
    session_option(p)
    p.set_defaults(run=run_history)
    for name, text in (("undo", "make the current version's parent current"),
                       ("redo", "go back to the version undo came from")):
        p = sub.add_parser(name, parents=parents, help=text,
                           description=f"{text[0].upper()}{text[1:]}, and write its audio to -o (default: "
                                       f"g4l-<session>-v<N>.wav). Refused while a generation runs.")
        p.add_argument("-o", "--output", help="where to write the audio (default: g4l-<session>-v<N>.wav)")
        session_option(p)
        p.set_defaults(run=run_move, move=name)
    p = sub.add_parser("checkout", parents=parents, help="make any version of the session current",
                       description="Make version V current (continue and retry then act on it; a new operation "
                                   "starts a branch), and write its audio to -o.")
    p.add_argument("version", help="the version number (see `g4l history`)")
    p.add_argument("-o", "--output", help="where to write the audio (default: g4l-<session>-v<N>.wav)")
    session_option(p)
    p.set_defaults(run=run_move, move="checkout")


def run_history(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l history``: the session's tree, oldest version first."""
    sid = session_or_current(args, opts)
    doc = Api(opts.url, opts.api_key).get(f"{API}/sessions/{sid}/history")
    lines = [f"session {sid}: {len(doc['versions'])} versions, current {doc['current']}"]
    for v in doc["versions"]:
        mark = "*" if v.get("current") else " "
        parent = f"from v{v['parent']}" if v.get("parent") is not None else "root"
        seconds = f"{v['duration']:.1f} s" if v.get("duration") is not None else ""
        seed = v.get("params", {}).get("seed")
        extra = ", ".join(x for x in (seconds, f"seed {seed}" if seed is not None else "",
                                      "pruned" if v.get("pruned") else "") if x)
        lines.append(f"{mark} v{v['version']:<4} {v['operation']:<9} {parent:<9} {extra}".rstrip())
    return Outcome({"command": "history", **doc}, "\n".join(lines))


def run_move(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l undo`` / ``redo`` / ``checkout V``: move, then download the new current audio."""
    sid = session_or_current(args, opts)
    api = Api(opts.url, opts.api_key)
    if args.move == "checkout":
        if not args.version.isdigit() or int(args.version) < 1:
            raise usage(f"checkout takes a version number from 1 (got {args.version!r})")
        reply = api.post(f"{API}/sessions/{sid}/versions/{int(args.version)}/checkout")
    else:
        reply = api.post(f"{API}/sessions/{sid}/{args.move}")
    version = reply["version"]
    path = files.output_path(args.output, sid, f"v{version['version']}")
    api.download(str(reply["links"]["audio"]), Path(path))
    info = files.describe(Path(path).read_bytes())
    data = {"command": args.move, "session_id": sid, "version": version["version"],
            "operation": version["operation"], "parent": version["parent"], "output": str(path), **info}
    text = (f"{args.move}: version {version['version']} ({version['operation']}) is current; "
            f"wrote {files.summary(Path(path), info)}")
    return Outcome(data, text)
