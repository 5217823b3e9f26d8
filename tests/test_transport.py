"""The websocket transport fixes in g4l.web.transport."""

from __future__ import annotations

import os

import wsproto.frame_protocol
from wsaccel.xormask import XorMaskerSimple as CMasker

from g4l.web import transport  # noqa: F401  (imports the C masker it installs)


def test_c_masker_matches_wsproto_across_fragments() -> None:
    data = os.urandom(10_001)
    key = b"\x11\x22\x33\x44"
    reference = wsproto.frame_protocol.XorMaskerSimple(key)
    fast = CMasker(key)
    expected = b"".join(bytes(reference.process(bytearray(data[i:i + 997]))) for i in range(0, len(data), 997))
    got = b"".join(bytes(fast.process(data[i:i + 997])) for i in range(0, len(data), 997))
    assert got == expected


def test_server_does_not_offer_permessage_deflate(server) -> None:
    import base64
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request.encode())
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 101")
    assert "permessage-deflate" not in head.lower()
