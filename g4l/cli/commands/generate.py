"""``g4l generate``: a job of the HTTP API (``POST /api/v1/generate``), watched over
Socket.IO (``subscribe {job_id}``) or by polling, then downloaded."""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path
from typing import Any

from g4l.cli import files
from g4l.cli.commands.params import add_sampling
from g4l.cli.errors import CliError, unreachable
from g4l.cli.http import API, Api
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome
from g4l.cli.progress import Progress

#: Seconds between polls of ``GET /api/v1/jobs/{id}`` (the fallback to live updates).
POLL_S = 0.5


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``generate``."""
    p = sub.add_parser("generate", parents=parents, help="generate music from a text prompt (HTTP job)",
                       description="POST /api/v1/generate, follow the job live, download the WAV.")
    p.add_argument("prompt", nargs="?", default=None, help="what the music is (none: unguided)")
    p.add_argument("-d", "--duration", type=float, default=30.0, metavar="S",
                   help="seconds to produce, a prompt audio included (default 30)")
    p.add_argument("-o", "--output", help="where to write the WAV (default: g4l-<job>-generate.wav)")
    p.add_argument("--audio", metavar="WAV", help="a WAV to continue (its last --prompt-duration seconds)")
    p.add_argument("--prompt-duration", type=int, metavar="S", help="seconds of --audio to continue from (default 6)")
    p.add_argument("--poll", action="store_true", help="poll GET /api/v1/jobs/<id> instead of live Socket.IO updates")
    add_sampling(p, model_help="model id from the server's allowlist (default: the server's default)")
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace, opts: Options) -> Outcome:
    """Queue the job, follow it to the end, download its audio."""
    body: dict[str, Any] = {"prompt": args.prompt, "duration": args.duration, "model": args.model,
                            "seed": args.seed, "top_k": args.top_k, "top_p": args.top_p,
                            "temperature": args.temperature, "cfg_coef": args.cfg_coef,
                            "prompt_duration": args.prompt_duration}
    if args.audio:
        body["audio"] = base64.b64encode(files.read_input(args.audio)).decode("ascii")
    job_id, job, path, size, started = run_http_job(
        opts, "generate", f"{API}/generate", {k: v for k, v in body.items() if v is not None},
        timeout=300.0, output=args.output, poll=args.poll)
    info = files.describe(path.read_bytes())
    elapsed = time.monotonic() - started
    data = {"command": "generate", "job_id": job_id, "session_id": None, "seed": job.get("seed"),
            "model": job.get("model"), "output": str(path), **info, "bytes": size, "elapsed_s": round(elapsed, 3)}
    seed = f", seed {job.get('seed')}" if job.get("seed") is not None else ""
    return Outcome(data, f"wrote {files.summary(path, info)} (job {job_id}{seed}, {elapsed:.1f} s)")


def run_http_job(opts: Options, command: str, url: str, body: dict[str, Any], *, timeout: float,
                 output: str | None, poll: bool) -> tuple[str, dict[str, Any], Path, int, float]:
    """POST ``body`` to ``url``, follow the job it queues to the end (Ctrl-C cancels it), check it
    succeeded and download its audio: ``(job_id, job, path, bytes, started)``, ``started`` the
    monotonic time before the POST (shared by every command that runs one HTTP job)."""
    api = Api(opts.url, opts.api_key)
    started = time.monotonic()
    with Progress(command, enabled=opts.progress) as progress:
        accepted = api.post(url, body, timeout=timeout)
        job_id = str(accepted["job_id"])
        progress.queued(accepted.get("position"), None, accepted.get("estimated_seconds"))
        try:
            job = _follow(api, opts, job_id, progress, poll=poll)
        except KeyboardInterrupt:
            _cancel(api, job_id)
            raise
        _check(job, job_id)
        path = files.output_path(output, job_id, command)
        size = api.download(f"{API}/jobs/{job_id}/audio", path)
        progress.done()
    return job_id, job, path, size, started


def _follow(api: Api, opts: Options, job_id: str, progress: Progress, *, poll: bool) -> dict[str, Any]:
    """The job's final JSON: from live ``job_update`` events, or polls when asked or
    when the Socket.IO connection cannot be made."""
    if not poll:
        from g4l.cli.device import Device  # python-socketio takes 0.3 s to import: only where used

        try:
            with Device(opts.url, api_key=opts.api_key, timeout=opts.timeout) as device:
                return device.watch_job(job_id, progress, opts.timeout)
        except CliError as exc:
            if exc.code != "UNREACHABLE":
                raise
    deadline = time.monotonic() + opts.timeout
    while True:
        job = api.get(f"{API}/jobs/{job_id}")
        progress.on_job(job)
        if job.get("status") in ("completed", "failed", "canceled"):
            return job
        if time.monotonic() > deadline:
            raise unreachable("TIMEOUT", f"job {job_id} did not finish within {opts.timeout:.0f} s")
        time.sleep(POLL_S)


def _check(job: dict[str, Any], job_id: str) -> None:
    status = job.get("status")
    error = job.get("error")
    if not isinstance(error, dict):
        error = {}
    if status == "completed":
        return
    if status == "canceled":
        raise CliError("CANCELED", f"job {job_id} was canceled")
    raise CliError(str(error.get("code") or "GENERATION_FAILED"), str(error.get("message") or f"job {job_id} failed"))


def _cancel(api: Api, job_id: str) -> None:
    """Ctrl-C: cancel the job rather than leave a worker busy for nobody."""
    try:
        api.delete(f"{API}/jobs/{job_id}", timeout=5.0)
    except CliError:
        pass
