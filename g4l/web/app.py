"""Builds the web application: Flask routes, the Socket.IO server, the notice relay.

The one composition root of the web process: every blueprint, the API's access control,
JSON errors and CORS, the ``/ws`` hub and the Socket.IO namespace are wired here, so the
route packages (``g4l.web.api``, ``g4l.web.compat``) never import the app around them."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from flask_cors import CORS
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix

from g4l.context import Context
from g4l.log import get_logger
from g4l.services.auth import HEADER, ApiKeys
from g4l.services.history import HistoryService
from g4l.services.job_waits import JobWaits
from g4l.services.jobs import JobService
from g4l.services.sessions import SessionService
from g4l.services.text_to_audio import TextToAudioService
from g4l.settings import Settings
from g4l.web import dashboard, health, job_socket, listen, metrics, nodes, transport
from g4l.web.api import access, history, jobs, openapi, prompts, routing, sessions, streams, text_to_audio, transform
from g4l.web.compat import generative, jerry, juce, realtime, swift, tellurstori
from g4l.web.offload import offload
from g4l.web.packets import ServerPacket
from g4l.web.relay import Relay
from g4l.web.socket_namespace import SocketNamespace
from plugin_protocol import fastjson

log = get_logger(__name__)


@dataclass
class WebApp:
    app: Flask
    socketio: SocketIO
    ctx: Context
    service: SessionService
    relay: Relay
    heartbeat: nodes.NodeHeartbeat


def create_app(settings: Settings) -> WebApp:
    """Wire everything; ``python -m g4l.web`` then starts the relay and the heartbeat."""
    ctx = Context.from_settings(settings)
    try:
        ctx.queue.ensure_groups()
        ctx.blobs.ensure_indexes()
    except Exception as exc:  # start anyway: /health reports the store that is down
        log.warning("store not ready at start", error=str(exc)[:200])
    app = Flask("g4l")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes + 1024 * 1024
    CORS(app, resources={r"/health*": {"origins": settings.cors_list}})
    socketio = SocketIO(
        app,
        async_mode="gevent",
        json=fastjson,  # result packets are up to ~100 MB of JSON, encoded on the event loop
        serializer=ServerPacket,  # decodes 60 MB uploads without slicing copies; answers unparsable ones
        cors_allowed_origins=settings.cors_list,
        max_http_buffer_size=settings.max_payload_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        # Handlers run in their own greenlets: one client's 100 MB upload being decoded
        # never delays another client's events.
        async_handlers=True,
    )
    transport.install(socketio.server)
    node = nodes.node_name(settings)
    nodes.prefix_session_ids(socketio.server.eio, node)  # the balancer routes polling requests by it
    heartbeat = nodes.NodeHeartbeat(ctx.redis, node, lambda: {
        "port": settings.port, "sockets": len(socketio.server.eio.sockets)})
    service = SessionService(ctx, offload=offload)
    relay = Relay(socketio, ctx, service)
    app.register_blueprint(health.blueprint(ctx))
    app.register_blueprint(metrics.blueprint(ctx))
    install_api(app, socketio, ctx, service, relay)  # Socket.IO events; /api/v1; docs; API keys
    listen.install(app, ctx)  # HLS files and the listen page (public, token-guarded)
    dashboard.install(app, ctx)  # the operator's station pages (their own key check: cookie or header)
    app.register_blueprint(juce.blueprint(service))  # the JUCE plugin's and musicgen-server's routes
    app.register_blueprint(swift.blueprint(service))  # the Swift app's recovery route
    if settings.trusted_proxies:  # outermost, so Socket.IO and /ws see the client's address too
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,  # type: ignore[method-assign]
                                x_proto=settings.trusted_proxies)
    return WebApp(app, socketio, ctx, service, relay, heartbeat)


def install_api(app: Flask, socketio: SocketIO, ctx: Context, service: SessionService, relay: Relay) -> JobService:
    """Add the API to ``app``: access control, JSON errors, CORS, the blueprints, the
    OpenAPI document, the ``/ws`` hub and the Socket.IO namespace (device events,
    ``subscribe``, ``connect``); returns the job service it uses."""
    settings = ctx.settings
    api_keys = ApiKeys(settings)
    app.config["G4L_SETTINGS"] = settings
    access.install_http(app, api_keys)
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
    app.register_blueprint(transform.blueprint(service))
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
    hub = job_socket.JobSocketHub(job_service, api_keys)
    relay.hooks.append(hub.on_notice)
    app.register_blueprint(job_socket.blueprint())
    job_socket.install(app, hub)  # WS /ws upgrades, before Flask
    app.register_blueprint(openapi.blueprint(settings))
    socketio.on_namespace(SocketNamespace(service, job_service, relay, api_keys))
    return job_service
