"""``/health`` in the upstream shape, plus ``/health/live`` and ``/health/ready``.

Anyone may read them (status pages, load balancers, the launcher): they say what works and
how much there is (``web_nodes_alive``, ``workers``), never where the processes run. The
hosts, pids and ports of the web processes (``web_nodes``) are shown only to a request
that presents an operator key (``G4L_OPERATOR_KEYS``) in ``X-API-Key``.

A degraded server answers 503 (Service Unavailable) with the same body, its reason in the
fields that are not ``live``: a dependency is down, which is no fault of the web process.
"""

from __future__ import annotations

import json
from typing import Any

import gevent
from flask import Blueprint, jsonify, request

from g4l.context import Context
from g4l.jobs import recovery
from g4l.services.auth import HEADER, ApiKeys
from g4l.services.models import family_states
from g4l.web import nodes

#: The status of a degraded ``/health`` and of a ``/health/ready`` that is not ready.
UNAVAILABLE = 503

#: A store that has not answered a ping within this is reported down (a status page, and an
#: orchestrator's probe, must get an answer at once, not when a paused store wakes up).
CHECK_TIMEOUT_S = 1.0


def _check(fn: Any) -> str:
    try:
        fn()
        return "live"
    except Exception as exc:  # report, never raise: a status page must always get an answer
        return f"down: {type(exc).__name__}: {exc}"[:200]


def _checks(**pings: Any) -> dict[str, str]:
    """Run the pings side by side; one that takes over ``CHECK_TIMEOUT_S`` is down."""
    jobs = {name: gevent.spawn(_check, fn) for name, fn in pings.items()}
    gevent.joinall(list(jobs.values()), timeout=CHECK_TIMEOUT_S)
    out = {}
    for name, job in jobs.items():
        if job.ready():
            out[name] = job.value
        else:
            job.kill(block=False)
            out[name] = f"down: no answer within {CHECK_TIMEOUT_S:g} s"
    return out


def report(ctx: Context, details: bool = False) -> tuple[dict[str, Any], bool]:
    """The health document and whether the server can serve generations.

    :param details: include ``web_nodes`` (each web process's node name, host, pid, port
        and sockets): for an operator only.
    """
    states = _checks(mongodb=ctx.blobs.ping, redis=ctx.redis.ping)
    mongodb, redis_state = states["mongodb"], states["redis"]
    workers: list[dict[str, Any]] = []
    web_nodes: list[dict[str, Any]] = []
    queue_depth = None
    if redis_state == "live":
        try:
            workers = [json.loads(v) for v in recovery.alive_workers(ctx).values()]
            web_nodes = [{k: n.get(k) for k in ("node", "host", "pid", "port", "sockets")}
                         for n in nodes.alive_nodes(ctx.redis)]
            queue_depth = ctx.queue.depth()
        except Exception as exc:
            redis_state = f"down: {exc}"[:200]
    if workers:
        w = workers[0]
        pytorch = f"live: torch {w.get('torch')} on {w.get('device')}"
    else:
        pytorch = "down: no generation worker is alive"
    models = sorted({m for w in workers for m in w.get("models", [])})
    failed: dict[str, str] = {}
    for w in workers:
        failed.update({m: r for m, r in (w.get("models_failed") or {}).items() if m not in models})
    families_now = family_states(ctx, workers)
    ready = [w for w in workers if w.get("state") == "ready"]
    if workers and not ready:
        default = families_now["musicgen"]["default_model"] or ctx.settings.model_default
        pytorch = f"down: {failed[default]}" if default in failed else "down: workers are still loading models"
    ok = mongodb == "live" and redis_state == "live" and bool(ready)
    body = {
        "status": "live" if ok else "degraded",
        "mongodb": mongodb,
        "redis": redis_state,
        "pytorch": pytorch,
        "workers": len(workers),
        "workers_ready": len(ready),
        "workers_busy": sum(1 for w in workers if w.get("job_id")),
        # A batching worker holds several jobs (heartbeat job_ids; job_id alone before batching).
        "jobs_running": sum(len(w.get("job_ids") or ([w["job_id"]] if w.get("job_id") else [])) for w in workers),
        "queue_depth": queue_depth,
        "web_nodes_alive": len(web_nodes),
        "models_loaded": models,
        "models_failed": failed,
        "models_allowed": ctx.settings.models,
        # gary, jerry and terry: each family's state (loaded, loading, failed with the reason...).
        "families": families_now,
    }
    if details:
        body["web_nodes"] = web_nodes
    return body, ok


def blueprint(ctx: Context) -> Blueprint:
    bp = Blueprint("health", __name__)
    api_keys = ApiKeys(ctx.settings)

    def operator() -> bool:
        return api_keys.is_operator_key(request.headers.get(HEADER))

    @bp.get("/health")
    def health() -> Any:
        body, ok = report(ctx, details=operator())
        return jsonify(body), 200 if ok else UNAVAILABLE

    @bp.get("/health/live")
    def live() -> Any:
        return jsonify({"status": "live"}), 200

    @bp.get("/health/ready")
    def ready() -> Any:
        body, ok = report(ctx, details=operator())
        return jsonify({**body, "status": "ready" if ok else "not ready"}), 200 if ok else UNAVAILABLE

    return bp
