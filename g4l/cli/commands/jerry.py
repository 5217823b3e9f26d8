"""``g4l jerry``: a clip (or a loop) from text with the text-to-audio model (Stable Audio
Open Small): a job of the HTTP API (``POST /api/v1/text-to-audio``), followed live or by
polling as ``generate`` is, then downloaded."""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from g4l.cli import files
from g4l.cli.commands.generate import run_http_job
from g4l.cli.errors import EXIT_USAGE, CliError
from g4l.cli.http import API
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome

_BPM = re.compile(r"\d+\s*bpm", re.IGNORECASE)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``jerry``."""
    p = sub.add_parser("jerry", parents=parents, help="make a clip or loop from text (Stable Audio Open Small)",
                       description="POST /api/v1/text-to-audio, follow the job live, download the 44.1 kHz "
                                   "stereo WAV.")
    p.add_argument("prompt", help="what the audio is")
    p.add_argument("--bpm", type=int, help="the tempo, appended to the prompt as ' <bpm>bpm' (as the device does)")
    p.add_argument("-s", "--seconds", type=int, metavar="S", help="seconds of audio, 1-11 (default 11)")
    p.add_argument("--steps", type=int, help="sampler steps, 1-250 (default 8)")
    p.add_argument("--cfg", type=float, help="guidance, 0-20 (default 1.0; a loop's 6.0)")
    p.add_argument("--negative", metavar="TEXT", help="what to steer away from")
    p.add_argument("--sampler", help="pingpong (default), euler, rk4 or dpmpp")
    p.add_argument("--seed", type=int, help="seed for a reproducible result (-1 or none: the server picks one)")
    p.add_argument("-m", "--model", help="a text-to-audio model id from the allowlist (default: the server's)")
    p.add_argument("--loop", action="store_true", help="make a loop of whole bars at the tempo (needs --bpm)")
    p.add_argument("--bars", help="a loop's bars: 1, 2, 4, 8 or auto (default: the most that fit)")
    p.add_argument("--loop-type", choices=("auto", "drums", "instruments"), help="a loop's content")
    p.add_argument("-o", "--out", "--output", dest="output",
                   help="where to write the WAV (default: g4l-<job>-jerry.wav)")
    p.add_argument("--poll", action="store_true", help="poll GET /api/v1/jobs/<id> instead of live Socket.IO updates")
    p.set_defaults(run=run_jerry)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The ``/api/v1/text-to-audio`` body of the options (left-out ones: the server's defaults)."""
    prompt = args.prompt
    if args.bpm is not None and not _BPM.search(prompt):
        prompt = f"{prompt} {args.bpm}bpm"
    if args.loop and not _BPM.search(prompt):
        raise CliError("USAGE", "a loop needs its tempo: give --bpm (or NNNbpm in the prompt)", EXIT_USAGE)
    bars: int | str | None = None
    if args.bars is not None:
        bars = "auto" if args.bars == "auto" else int(args.bars) if args.bars.isdigit() else args.bars
    body = {"prompt": prompt, "seconds_total": args.seconds, "steps": args.steps, "cfg_scale": args.cfg,
            "negative_prompt": args.negative, "sampler_type": args.sampler, "seed": args.seed, "model": args.model,
            "loop": True if args.loop else None, "bars": bars, "loop_type": args.loop_type}
    return {k: v for k, v in body.items() if v is not None}


def run_jerry(args: argparse.Namespace, opts: Options) -> Outcome:
    """Queue the job, follow it to the end, download its audio."""
    body = request_body(args)
    job_id, job, path, size, started = run_http_job(opts, "jerry", f"{API}/text-to-audio", body, timeout=60.0,
                                                    output=args.output, poll=args.poll)
    info = files.describe(path.read_bytes())
    elapsed = time.monotonic() - started
    data = {"command": "jerry", "job_id": job_id, "prompt": body["prompt"], "seed": job.get("seed"),
            "model": job.get("model"), "output": str(path), **info, "bytes": size, "elapsed_s": round(elapsed, 3)}
    return Outcome(data, f"wrote {files.summary(path, info)} (job {job_id}, seed {job.get('seed')}, {elapsed:.1f} s)")
