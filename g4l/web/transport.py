"""A faster, safer websocket transport for python-engineio on gevent.

engineio on gevent (without gevent-websocket) uses simple-websocket, which:
  * sends a frame with one ``socket.send`` call: on gevent's non-blocking sockets a large
    frame is cut short and the client waits forever for the rest (we use ``sendall``);
  * reads 4 kB at a time (we read 1 MB: a 60 MB message is 60 reads, not 15,000);
  * negotiates permessage-deflate: compressing a 70 MB reply on the event loop would
    stall every other client for seconds, and base64 audio barely compresses, so we do
    not offer it.
  * unmasks client frames with wsproto's pure-Python XOR (0.3 s per 60 MB on the event
    loop); wsaccel's C masker does it in about 0.1 s.
Measured with scripts/bench_roundtrip: gevent-websocket's pure-Python UTF-8 check and
masking moved about 2-3 MB/s; this path moves tens of MB/s.
"""

from __future__ import annotations

from typing import Any

import simple_websocket
import wsproto.frame_protocol
from wsaccel.xormask import XorMaskerSimple as _CXorMasker
from engineio.async_drivers.gevent import WebSocketWSGI as _GeventWebSocketWSGI
from wsproto.events import BytesMessage, TextMessage

RECEIVE_BYTES = 1024 * 1024


class _Server(simple_websocket.Server):
    def send(self, data: Any) -> None:
        if not self.connected:
            raise simple_websocket.ConnectionClosed(self.close_reason, self.close_message)
        event = BytesMessage(data=data) if isinstance(data, bytes) else TextMessage(data=str(data))
        self.sock.sendall(self.ws.send(event))


class FastWebSocketWSGI(_GeventWebSocketWSGI):
    """engineio's gevent websocket wrapper, with the fixes above."""

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self.server_args["receive_bytes"] = RECEIVE_BYTES
        # Refuse an oversized message while it streams in, not after buffering it all.
        self.server_args["max_message_size"] = int(server.max_http_buffer_size) + 1024

    def __call__(self, environ: dict, start_response: Any) -> Any:
        environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)  # no permessage-deflate
        self.ws = _Server(environ, **self.server_args)
        return self.app(self)


def install(socketio_server: Any) -> None:
    """Make a python-socketio server's engine use :class:`FastWebSocketWSGI` (and wsproto
    use the C masker: same interface, same rolling-key semantics, checked by a test)."""
    wsproto.frame_protocol.XorMaskerSimple = _CXorMasker
    eio = socketio_server.eio
    eio._async = dict(eio._async, websocket=FastWebSocketWSGI)
