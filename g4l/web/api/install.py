"""Wires the HTTP API into the web app: access control, JSON errors, CORS, blueprints,
the OpenAPI document and the Socket.IO namespace (device events, ``subscribe``, ``connect``)."""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS
from flask_socketio import SocketIO

from g4l.context import Context
from g4l.services.auth import HEADER, ApiKeys
from g4l.services.history import HistoryService
from g4l.services.job_waits import JobWaits
from g4l.services.jobs import JobService
from g4l.services.sessions import SessionService
from g4l.services.text_to_audio import TextToAudioService
from g4l.web import job_socket
from g4l.web.api import access, history, jobs, openapi, prompts, routing, sessions, streams, text_to_audio
from g4l.web.compat import generative, jerry, realtime, tellurstori
from g4l.web.relay import Relay
from g4l.web.socket_namespace import SocketNamespace


def install(app: Flask, socketio: SocketIO, ctx: Context, service: SessionService, relay: Relay) -> JobService:
    """Add the API to ``app``; returns the job service it uses."""
    settings = ctx.settings
    keys = ApiKeys(settings)
    app.config["G4L_SETTINGS"] = settings
    access.install_http(app, keys)
    routing.install_errors(app)
    CORS(app, resources={r"/api/*": {"origins": settings.cors_list},
                    r"/generative/*": {"origins": settings.cors_list}},
         allow_headers=["Content-Type", HEADER, "Range", "If-Range"],
         expose_headers=["Retry-After", "Content-Range", "Content-Length", "Accept-Ranges", "ETag"],
         methods=["GET", "POST", "DELETE", "OPTIONS"], max_age=600)
    job_service = JobService(ctx, service)
    app.register_blueprint(jobs.blueprint(job_service))
    app.register_blueprint(sessions.blueprint(service, job_service))
    app.register_blueprint(history.blueprint(HistoryService(service)))
    app.register_blueprint(streams.blueprint(service))
    app.register_blueprint(prompts.blueprint())
    # The brief's own HTTP systems, in their shapes (g4l/web/compat/).
    app.register_blueprint(tellurstori.blueprint(job_service))
    app.register_blueprint(realtime.blueprint(job_service))
    app.register_blueprint(generative.blueprint(ctx))
    # jerry (text to audio): our /api/v1 operation, and the upstream routes that answer with the audio.
    waits = JobWaits(ctx)
    relay.hooks.append(waits.on_notice)
    text_audio = TextToAudioService(ctx, job_service, waits)
    app.register_blueprint(text_to_audio.blueprint(text_audio))
    app.register_blueprint(jerry.blueprint(text_audio))
    routing.error_shape(app, jerry.plain_error_path, jerry.plain_error)
    hub = job_socket.JobSocketHub(job_service, keys)
    relay.hooks.append(hub.on_notice)
    app.register_blueprint(job_socket.blueprint())
    job_socket.install(app, hub)  # WS /ws upgrades, before Flask
    app.register_blueprint(openapi.blueprint(settings))
    socketio.on_namespace(SocketNamespace(service, job_service, relay, keys))
    return job_service
