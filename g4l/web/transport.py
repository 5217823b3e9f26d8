"""python-engineio's websocket transport on gevent, backed by :mod:`g4l.web.websocket`.

engineio asks its async driver for a ``websocket`` class: built with ``(handler, server)``,
called as a WSGI app for the upgrade request, then driven with ``wait()`` (the reader
greenlet), ``send()`` (the writer greenlet) and ``close()``. This one:
  * answers the upgrade itself and never offers permessage-deflate;
  * moves big messages with few copies (see :mod:`g4l.web.websocket`);
  * sends pre-encoded packets (:func:`preencoded_packet`) as they are, so a 70 MB result
    is never joined into one string on the event loop;
  * ends the connection cleanly, so gevent's WSGI server does not read the websocket's
    last bytes as a new HTTP request (it used to log "Invalid HTTP method").
"""

from __future__ import annotations

from typing import Any

from engineio import packet as eio_packet

from g4l.log import get_logger
from g4l.settings import get_settings
from g4l.web import websocket
from g4l.web.offload import offload

log = get_logger(__name__)


def client_socket(environ: dict) -> Any:
    """The connection's socket from gevent's WSGI environment."""
    wsgi_input = environ["wsgi.input"]
    if not hasattr(wsgi_input, "raw") and hasattr(wsgi_input, "rfile"):
        wsgi_input = wsgi_input.rfile
    return wsgi_input.raw._sock


#: The largest message a websocket may send before it has a Socket.IO connection: its
#: CONNECT packet (with the API key) and the transport upgrade's probes are a few hundred
#: bytes, so a stranger cannot make the server hold G4L_MAX_PAYLOAD_MB per connection.
UNCONNECTED_MAX_MESSAGE = 64 * 1024


class FastWebSocketWSGI:
    """The engineio ``websocket`` async class (see the module docstring)."""

    def __init__(self, handler: Any, server: Any) -> None:
        self.app = handler
        # Refuse an oversized message from its frame header, before reading it.
        self.max_message_size = int(server.max_http_buffer_size) + 1024
        self.ws: websocket.WebSocket | None = None
        # The engine.io socket this websocket belongs to (``handler`` is its bound method),
        # and the Socket.IO server whose connections tell whether the client is accepted.
        self.eio_sid: str | None = getattr(getattr(handler, "__self__", None), "sid", None)
        self.socketio: Any = getattr(server, "g4l_socketio", None)

    def message_limit(self) -> int:
        """Full size once the client's Socket.IO connection was accepted, small before."""
        if self.socketio is None or self.eio_sid is None:
            return self.max_message_size
        if self.socketio.manager.sid_from_eio_sid(self.eio_sid, "/") is not None:
            return self.max_message_size
        return UNCONNECTED_MAX_MESSAGE

    def __call__(self, environ: dict, start_response: Any) -> Any:
        try:
            accept = websocket.accept_key(environ)
        except websocket.HandshakeError as exc:
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [str(exc).encode()]
        sock = client_socket(environ)
        sock.sendall(websocket.response_headers(accept))
        settings = get_settings()  # a huge message is held to the same floor as an HTTP body
        self.ws = websocket.WebSocket(sock, max_message_size=self.max_message_size, grace_s=settings.http_body_grace_s,
                                      min_bytes_per_s=settings.http_body_min_kbps * 1024,
                                      message_limit=self.message_limit, offload=offload)
        try:
            return self.app(self)
        finally:
            self.ws.close()
            self.ws.abort()  # gevent's server then reads EOF and ends the connection quietly

    def send(self, message: Any) -> None:
        assert self.ws is not None
        try:
            self.ws.send(message)
        except websocket.ConnectionClosed:
            raise OSError("websocket closed") from None

    def wait(self) -> Any:
        assert self.ws is not None
        return self.ws.receive()

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


def preencoded_packet(socketio_text: websocket.Frames) -> eio_packet.Packet:
    """An engine.io MESSAGE packet whose encoding is ``socketio_text`` as given: engineio
    queues it like any packet (so it keeps its order on the socket) and the writer hands
    the :class:`~g4l.web.websocket.Frames` to :meth:`FastWebSocketWSGI.send`.
    Only for websocket clients (a long-polling payload cannot carry it)."""
    pkt = eio_packet.Packet(eio_packet.MESSAGE)
    pkt.encode_cache = websocket.Frames((b"4", *socketio_text.parts), text=True, on_sent=socketio_text.on_sent)
    return pkt


def install(socketio_server: Any) -> None:
    """Make a python-socketio server's engine use :class:`FastWebSocketWSGI`."""
    eio = socketio_server.eio
    eio._async = dict(eio._async, websocket=FastWebSocketWSGI)
    eio.g4l_socketio = socketio_server  # whose connections decide how big a message may be
