"""Device commands: bang, continue, retry, crop (the device protocol, as the Max4Live
device speaks it), plus a session's listen link and status."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from g4l.cli import files
from g4l.cli.commands.params import DEFAULT_PROMPT_S, add_session_params, session_params
from g4l.cli.errors import unreachable, usage
from g4l.cli.http import API, Api
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome
from g4l.cli.progress import Progress

#: Seconds ``listen --play`` waits for a new stream's first playlist.
STREAM_WAIT_S = 30.0

if TYPE_CHECKING:
    from g4l.cli.device import Generation


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``bang``, ``continue``, ``retry``, ``crop``, ``listen`` and ``status``."""
    p = sub.add_parser("bang", parents=parents, help="start a session: continue the start of a WAV",
                       description="A new session: the model continues the FIRST --prompt-duration seconds of "
                                   "the WAV; the result (30 s by default) is written to -o.")
    p.add_argument("input", help="the WAV to start from")
    p.add_argument("-o", "--output", help="where to write the result (default: g4l-<session>-bang.wav)")
    add_session_params(p, prompt_default=DEFAULT_PROMPT_S)
    p.set_defaults(run=run_bang)

    p = sub.add_parser("continue", parents=parents, help="continue the session (or a WAV)",
                       description="Continue the LAST --prompt-duration seconds. With a file: that file, in the "
                                   "current session (or a new session when there is none, or with --new). "
                                   "Without: the session's current audio on the server (its last result or crop).")
    p.add_argument("input", nargs="?", help="the WAV to continue (default: the session's current audio)")
    p.add_argument("-o", "--output", help="where to write the result (default: g4l-<session>-continue.wav)")
    session_option(p, new=True)
    add_session_params(p, prompt_default=None)
    p.set_defaults(run=run_continue)

    p = sub.add_parser("retry", parents=parents, help="redo the session's last continue",
                       description="Redo the last continue from the input it used (a new take of it).")
    p.add_argument("-o", "--output", help="where to write the result (default: g4l-<session>-retry.wav)")
    session_option(p)
    add_session_params(p, prompt_default=None)
    p.set_defaults(run=run_retry)

    p = sub.add_parser("crop", parents=parents, help="make a WAV the session's current audio",
                       description="Upload a cropped take (update_cropped_audio): it becomes the session's current "
                                   "audio, what `g4l continue` without a file continues.")
    p.add_argument("input", help="the cropped WAV")
    session_option(p, new=True)
    p.set_defaults(run=run_crop)

    p = sub.add_parser("listen", parents=parents, help="the session's live listen link (HLS)",
                       description="Print the session's read-only live stream: the HLS playlist and the listen page.")
    session_option(p)
    p.add_argument("--play", action="store_true", help="play it with ffplay -nodisp (Ctrl-C stops)")
    p.set_defaults(run=run_listen)

    p = sub.add_parser("status", parents=parents, help="the current session's state on the server",
                       description="verify_session: whether the session exists, its status, version and seed.")
    session_option(p)
    p.add_argument("--forget", action="store_true", help="forget the current session (no server call)")
    p.set_defaults(run=run_status)


def session_option(parser: argparse.ArgumentParser, *, new: bool = False) -> None:
    """``--session ID`` (and ``--new`` where a new session can be made)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--session", "-s", metavar="ID", help="the session (default: the current one, from the "
                                                             "last bang/continue/retry/crop)")
    if new:
        group.add_argument("--new", action="store_true", help="start a new session (ignore the current one)")


def session_or_current(args: argparse.Namespace, opts: Options) -> str:
    """``--session``, else the current session. :raises CliError: neither (usage)."""
    sid = _session(args, opts, required=True)
    assert sid is not None
    return sid


def _session(args: argparse.Namespace, opts: Options, *, required: bool) -> str | None:
    sid = args.session or (None if getattr(args, "new", False) else opts.state.session(opts.url))
    if required and not sid:
        raise usage("no current session: start one with `g4l bang`, or give --session ID")
    return sid


# ---------------------------------------------------------------- generations
def run_bang(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l bang in.wav``: a new session from the WAV."""
    wav = files.read_input(args.input)
    params = session_params(args)
    if not params["model_name"]:
        # The protocol requires a model: take the server's own default (GET /api/models).
        params["model_name"] = _default_model(opts)
    return _generate(opts, "bang", args.output, wav=wav, params=params)


def run_continue(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l continue [file]``: continue the file or the session's current audio."""
    sid = _session(args, opts, required=args.input is None)
    wav = files.read_input(args.input) if args.input else None
    return _generate(opts, "continue", args.output, session_id=sid, wav=wav, params=session_params(args))


def run_retry(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l retry``: redo the last continue."""
    sid = _session(args, opts, required=True)
    return _generate(opts, "retry", args.output, session_id=sid, params=session_params(args))


def _generate(opts: Options, kind: str, output: str | None, *, session_id: str | None = None,
              wav: bytes | None = None, params: dict[str, Any]) -> Outcome:
    from g4l.cli.device import Device  # python-socketio takes 0.3 s to import: only where used

    with Progress(kind, enabled=opts.progress) as progress:
        with Device(opts.url, api_key=opts.api_key, timeout=opts.timeout) as device:
            gen = device.generate(kind, progress, session_id=session_id, wav=wav, params=params)
        path = files.write_output(files.output_path(output, gen.result.session_id, kind), gen.result.audio)
        progress.done()
    opts.state.remember(opts.url, gen.result.session_id, path)
    return _written(kind, gen, path)


def _written(kind: str, gen: Generation, path: Any) -> Outcome:
    info = files.describe(gen.result.audio)
    data = {"command": kind, "session_id": gen.result.session_id, "job_id": gen.result.job_id or None,
            "seed": gen.seed, "output": str(path), **info, "elapsed_s": round(gen.result.seconds, 3)}
    seed = f", seed {gen.seed}" if gen.seed is not None else ""
    text = (f"wrote {files.summary(path, info)} "
            f"(session {gen.result.session_id}{seed}, {gen.result.seconds:.1f} s)")
    return Outcome(data, text)


def _default_model(opts: Options) -> str:
    models = Api(opts.url, opts.api_key).get("/api/models")
    default = models.get("default")
    if not isinstance(default, str) or not default:
        raise usage("the server names no default model: give --model")
    return default


# ---------------------------------------------------------------- session operations
def run_crop(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l crop file.wav``: the file becomes the session's current audio."""
    from g4l.cli.device import Device
    sid = _session(args, opts, required=False)
    wav = files.read_input(args.input)
    with Device(opts.url, api_key=opts.api_key, timeout=opts.timeout) as device:
        reply = device.crop(sid, wav)
    new_sid = str(reply.get("session_id") or sid)
    opts.state.remember(opts.url, new_sid)
    info = files.describe(wav)
    data = {"command": "crop", "session_id": new_sid, "input": args.input, "new_session": new_sid != sid, **info}
    what = "a new session" if new_sid != sid else "the session"
    length = f"{info['seconds']:.1f} s" if info["seconds"] is not None else f"{info['bytes']} bytes"
    return Outcome(data, f"cropped: {args.input} ({length}) is now the current audio of {what} {new_sid}")


def run_listen(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l listen``: the session's HLS link (and ``--play`` it)."""
    sid = _session(args, opts, required=True)
    api = Api(opts.url, opts.api_key)
    link = api.post(f"{API}/sessions/{sid}/listen")
    playlist, page = api.absolute(str(link["playlist_url"])), api.absolute(str(link["page_url"]))
    data = {"command": "listen", "session_id": sid, "playlist_url": playlist, "page_url": page}
    after: Callable[[], int] | None = None
    if args.play:
        player = shutil.which("ffplay")
        if player is None:
            raise usage("--play needs ffplay (Debian: apt-get install ffmpeg)")

        def after() -> int:
            _wait_for_stream(api, playlist, opts.timeout)
            return subprocess.call([player, "-nodisp", "-loglevel", "warning", playlist])
    return Outcome(data, f"playlist: {playlist}\npage:     {page}", after=after)


def _wait_for_stream(api: Api, playlist: str, timeout: float) -> None:
    """A new stream's playlist appears a moment after its link (the packager starts it):
    wait for it, or a player would give up on the first 404."""
    deadline = time.monotonic() + min(timeout, STREAM_WAIT_S)
    while api.status(playlist) != 200:
        if time.monotonic() > deadline:
            raise unreachable("NOT_READY", f"the stream did not start within {STREAM_WAIT_S:g} s: {playlist}")
        time.sleep(0.25)


def run_status(args: argparse.Namespace, opts: Options) -> Outcome:
    """``g4l status``: ``verify_session`` of the current session."""
    from g4l.cli.device import Device
    if args.forget:
        opts.state.forget(opts.url)
        return Outcome({"command": "status", "forgotten": True}, "forgot the current session")
    sid = _session(args, opts, required=True)
    assert sid is not None
    with Device(opts.url, api_key=opts.api_key, timeout=min(opts.timeout, 60.0)) as device:
        status = device.verify(sid)
    if not status.get("exists"):
        return Outcome({"command": "status", **status}, f"session {sid}: unknown to {opts.url}")
    text = (f"session {sid}: {status.get('status')}, version {status.get('version')}, "
            f"model {status.get('model_name')}, seed {status.get('seed')}")
    if status.get("generation_in_progress"):
        text += f", {status.get('progress')}% done"
    return Outcome({"command": "status", **status}, text)
