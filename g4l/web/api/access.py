"""Access control at the web edge: the API-key check for every HTTP route, and the caller
of a Socket.IO event.

Every route needs a key when keys are configured, except ``/health*``, CORS preflights,
views marked with :func:`public` and blueprints named in :data:`PUBLIC_BLUEPRINTS` (an
HLS playlist, say, which a player fetches with a listen token instead of a key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, g, request

from g4l.errors import Unauthorized
from g4l.services.auth import AUTH_FIELD, HEADER, ApiKeys, Caller, ip_owner

#: Blueprint names whose routes need no key (each guards itself, e.g. with a listen token).
PUBLIC_BLUEPRINTS: set[str] = set()
#: Where a connected socket's caller is kept: the connection's WSGI environ, which
#: Flask-SocketIO hands to every later event of that socket.
_ENVIRON_KEY = "g4l.caller"


def public(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view as reachable without an API key."""
    view.g4l_public = True  # type: ignore[attr-defined]
    return view


def _is_public(app: Flask) -> bool:
    if request.method == "OPTIONS" or request.path == "/health" or request.path.startswith("/health/"):
        return True
    if request.blueprint in PUBLIC_BLUEPRINTS:
        return True
    view = app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "g4l_public", False))


def install_http(app: Flask, keys: ApiKeys) -> None:
    """Check the key before every request; the caller is then ``flask.g.caller``."""

    @app.before_request
    def _authenticate() -> None:
        try:
            g.caller = keys.caller(request.headers.get(HEADER), request.remote_addr)
        except Unauthorized:
            if _is_public(app):
                g.caller = Caller(ip_owner(request.remote_addr), keyed=False)
                return
            raise


def http_caller() -> Caller:
    """The caller of the current HTTP request (set by :func:`install_http`)."""
    caller = getattr(g, "caller", None)
    if caller is None:
        raise Unauthorized("an API key is required")
    return caller


def connect_socket(keys: ApiKeys, auth: Any) -> Caller:
    """Authenticate a Socket.IO connection from its ``auth`` payload (``{"api_key": ...}``)
    or, for clients that cannot set one, the ``X-API-Key`` header of the handshake.

    :raises Unauthorized: keys are configured and none (or a wrong one) was given.
    """
    key = auth.get(AUTH_FIELD) if isinstance(auth, dict) else None
    if key is None:
        key = request.headers.get(HEADER)
    caller = keys.caller(key, request.remote_addr)
    request.environ[_ENVIRON_KEY] = caller
    return caller


def socket_caller() -> Caller:
    """The caller of the current Socket.IO event (its connection's, see :func:`connect_socket`)."""
    caller = request.environ.get(_ENVIRON_KEY)
    if caller is None:  # keys off and no connect handler ran: the address is all we know
        caller = Caller(ip_owner(request.remote_addr), keyed=False)
    return caller
