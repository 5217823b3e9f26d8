"""The web process's HTTP connection handler: gevent's, with deadlines on what a client
sends, so a slow or stalled client cannot hold a connection (and its buffers) forever.

- An idle connection (a new one, or a keep-alive one between requests) is closed after
  ``G4L_HTTP_KEEPALIVE_TIMEOUT_S`` without a request; once a request has begun, its line
  and headers must arrive within ``G4L_HTTP_HEADER_TIMEOUT_S``. A request whose line or
  headers stall is reset (TCP RST, as nginx's ``reset_timedout_connection``), with no
  answer: no reader waits for one, and the socket is freed at once on both sides rather
  than lingering in FIN-WAIT for a client that never closes its end.
- A request body must arrive within ``G4L_HTTP_BODY_GRACE_S`` plus its length at
  ``G4L_HTTP_BODY_MIN_KBPS``: a stalled upload ends there, however it trickles.

A websocket is not affected once upgraded: it reads its own socket, with its own idle
limit (:mod:`g4l.web.websocket`).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import gevent
from gevent import pywsgi

from g4l.log import get_logger
from g4l.settings import Settings

log = get_logger(__name__)
#: SO_LINGER on, zero seconds: ``close()`` sends RST and drops what is unsent.
_RESET = struct.pack("ii", 1, 0)


class SlowClient(socket.timeout):
    """A client took longer than its deadline to send the request."""


class _DeadlineFile:
    """The connection's buffered reader, with the current request's deadline on each read."""

    def __init__(self, rfile: Any) -> None:
        self._f = rfile
        self.deadline: float | None = None
        self.what = "request"

    def __getattr__(self, name: str) -> Any:  # raw, closed, fileno... as the wrapped file
        return getattr(self._f, name)

    def _timed(self, fn: Any, *args: Any) -> Any:
        if self.deadline is None:
            return fn(*args)
        left = self.deadline - time.monotonic()
        error = SlowClient(f"the {self.what} arrived too slowly")
        if left <= 0:
            raise error
        with gevent.Timeout(left, error):
            return fn(*args)

    def read(self, *args: Any) -> bytes:
        return self._timed(self._f.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._timed(self._f.readline, *args)

    def readinto(self, *args: Any) -> int:
        return self._timed(self._f.readinto, *args)

    def read1(self, *args: Any) -> bytes:
        return self._timed(self._f.read1, *args)

    def peek(self, *args: Any) -> bytes:
        return self._timed(self._f.peek, *args)


def no_delay(sock: Any) -> None:
    """Send small writes at once (TCP_NODELAY), as nginx, Node and uvicorn do.

    A Socket.IO answer is two small websocket frames (the event, then its acknowledgement),
    and the server's ping is another: with Nagle's algorithm the kernel held each second
    small frame until the client acknowledged the first, and a client that delays its
    acknowledgements (Linux does, up to 40 ms, once an exchange looks interactive) left it
    there. Every client pinged at the same moment (clients that connected together) saw
    one 40-50 ms round trip at once: the stall ``scripts/bench_responsiveness`` found once
    per run, 25 s (the ping interval) after its clients connected.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a Unix socket behind a proxy)
        pass


def handler_class(settings: Settings) -> type[pywsgi.WSGIHandler]:
    """A ``pywsgi.WSGIHandler`` subclass with the deadlines of ``settings``."""
    header_s = settings.http_header_timeout_s
    keepalive_s = settings.http_keepalive_timeout_s
    grace_s = settings.http_body_grace_s
    rate = max(1, settings.http_body_min_kbps) * 1024

    class TimedHandler(pywsgi.WSGIHandler):
        def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
            super().__init__(sock, address, server, rfile)
            no_delay(sock)
            self.deadlines = _DeadlineFile(getattr(self, "rfile"))  # noqa: B009 (gevent's attribute is untyped)
            self.rfile = self.deadlines

        def read_requestline(self) -> str:
            # An idle keep-alive connection may wait longer for its next request than a
            # started request for its headers (clients reuse connections between polls).
            self.deadlines.deadline, self.deadlines.what = time.monotonic() + keepalive_s, "next request"
            self.deadlines.peek(1)
            self.deadlines.deadline, self.deadlines.what = time.monotonic() + header_s, "request line and headers"
            try:
                return super().read_requestline()
            except SlowClient:
                self._reset()
                raise  # a socket error: gevent ends the connection quietly

        def read_request(self, raw_requestline: str) -> Any:
            try:
                ok = super().read_request(raw_requestline)  # headers, still under the header deadline
            except SlowClient:
                self._reset()
                raise  # to _handle_client_error
            length = self.content_length
            chunked = (self.headers.get("Transfer-Encoding") or "").lower() == "chunked"
            if length or chunked:
                size = int(length) if length else settings.max_payload_bytes
                self.deadlines.deadline, self.deadlines.what = time.monotonic() + grace_s + size / rate, "request body"
            else:
                self.deadlines.deadline = None
            return ok

        def _handle_client_error(self, ex: Exception) -> Any:
            if isinstance(ex, SlowClient):  # only the headers are read by then
                return None  # reset already: no 400, and no traceback on stderr per stalled client
            return super()._handle_client_error(ex)

        def _reset(self) -> None:
            """Make the coming close a reset (see the module's docstring)."""
            log.debug("request headers stalled; connection reset", client=str(self.client_address)[:64],
                      seconds=header_s)
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:  # already gone
                pass

    return TimedHandler


def listen_extra(app: Any, settings: Settings) -> list[pywsgi.WSGIServer]:
    """Serve ``app`` on ``G4L_EXTRA_PORTS`` too (the launcher's localhost ports for jerry
    and terry), with the same connection handler; a port that cannot be bound is skipped
    with a warning. Returns the started servers."""
    servers = []
    for port in settings.extra_ports:
        if port == settings.port:
            continue
        server = pywsgi.WSGIServer((settings.host, port), app, handler_class=handler_class(settings), log=None)
        try:
            server.start()
        except OSError as exc:
            log.warning("extra port not served: it is taken", port=port, error=str(exc)[:200])
            continue
        servers.append(server)
    return servers
