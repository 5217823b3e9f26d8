"""``g4l health``: ``/health`` and ``/health/ready``; exits 1 when the server cannot serve."""

from __future__ import annotations

import argparse
from typing import Any

from g4l.cli.errors import CliError
from g4l.cli.http import Api
from g4l.cli.options import Options
from g4l.cli.outcome import Outcome


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``health``."""
    p = sub.add_parser("health", parents=parents, help="is the server up and ready to generate?",
                       description="GET /health and /health/ready; exit 0 when both are ok, 1 when not, "
                                   "3 when the server cannot be reached.")
    p.set_defaults(run=run_health)


def run_health(args: argparse.Namespace, opts: Options) -> Outcome:
    """Report the server's health; a not-ready server is an error (exit 1)."""
    api = Api(opts.url, opts.api_key)
    status, body = api.request("GET", "/health", accept=(500, 503))
    ready_status, ready = api.request("GET", "/health/ready", accept=(500, 503))
    ok = status == 200 and ready_status == 200
    data = {"command": "health", "ok": ok, "url": opts.url, "health": body, "ready": ready_status == 200}
    text = (f"{opts.url}: {body.get('status')}, {'ready' if ready_status == 200 else 'not ready'}\n"
            f"  redis {body.get('redis')}, mongodb {body.get('mongodb')}\n"
            f"  pytorch {body.get('pytorch')}\n"
            f"  workers {body.get('workers')} (ready {body.get('workers_ready')}, busy {body.get('workers_busy')}), "
            f"queue {body.get('queue_depth')}, models {', '.join(body.get('models_loaded') or []) or '-'}")
    error = None if ok else CliError("NOT_READY", _reason(body))
    return Outcome(data, text, error=error)


def _reason(body: dict[str, Any]) -> str:
    down = [f"{k} {body[k]}" for k in ("redis", "mongodb", "pytorch") if str(body.get(k, "")).startswith("down")]
    return "; ".join(down) or f"status {body.get('status')}"
