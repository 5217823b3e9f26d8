"""Prometheus metrics of the web process (``/metrics``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from g4l.context import Context

EVENTS = Counter("g4l_socket_events_total", "Socket.IO events received", ["event"])
ERRORS = Counter("g4l_errors_total", "Errors sent to clients", ["code"])
QUEUE_DEPTH = Gauge("g4l_queue_depth", "Jobs waiting in the queue")


def blueprint(ctx: Context) -> Blueprint:
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Any:
        try:
            QUEUE_DEPTH.set(ctx.queue.depth())
        except Exception:
            pass
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    return bp
