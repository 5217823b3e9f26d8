"""The websocket layer (g4l.web.websocket) against real clients over real TCP sockets,
the pre-encoded packets it sends, and the packet decoder both ends use."""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import websocket as wsclient
from socketio import packet as sio_packet

from g4l.web import websocket as ws
from plugin_protocol.packets import FastPacket
from plugin_protocol.wsclient import FastWebSocket

MAX_MESSAGE = 8 * 1024 * 1024


class EchoServer:
    """Accepts websocket connections (our handshake + :class:`ws.WebSocket`) in threads
    and echoes every message back, recording what each connection ended with."""

    def __init__(self, offload=None) -> None:  # type: ignore[no-untyped-def]
        self.offload = offload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed: list[ws.WebSocket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ")[0]
        environ = {"REQUEST_METHOD": method}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                environ["HTTP_" + name.strip().upper().replace("-", "_")] = value.strip()
        try:
            accept = ws.accept_key(environ)
        except ws.HandshakeError as exc:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(str(exc)), str(exc).encode()))
            conn.close()
            return
        conn.sendall(ws.response_headers(accept))
        peer = ws.WebSocket(conn, max_message_size=MAX_MESSAGE, offload=self.offload)
        while True:
            message = peer.receive()
            if message is None:
                break
            peer.send(message)
        self.closed.append(peer)

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.listener.close()


def _connect(echo: EchoServer) -> wsclient.WebSocket:
    return wsclient.create_connection(echo.url(), timeout=10)


def test_text_and_binary_messages_of_every_length_class(echo) -> None:
    c = _connect(echo)
    try:
        for n in (0, 1, 125, 126, 127, 65535, 65536, 3_000_001):
            text = "é" + "x" * n  # non-ASCII: the server decodes UTF-8, not ASCII
            c.send(text)
            assert c.recv() == text
            data = os.urandom(n)
            c.send_binary(data)
            assert c.recv() == data
    finally:
        c.close()


def test_fragmented_message_with_a_ping_in_between(echo) -> None:
    c = _connect(echo)
    try:
        c.send_frame(wsclient.ABNF.create_frame("hello ", wsclient.ABNF.OPCODE_TEXT, fin=0))
        c.ping(b"are you there")
        c.send_frame(wsclient.ABNF.create_frame("wor", wsclient.ABNF.OPCODE_CONT, fin=0))
        c.send_frame(wsclient.ABNF.create_frame("ld", wsclient.ABNF.OPCODE_CONT, fin=1))
        opcode, frame = c.recv_data_frame(control_frame=True)
        assert opcode == wsclient.ABNF.OPCODE_PONG and frame.data == b"are you there"
        assert c.recv() == "hello world"
    finally:
        c.close()


def test_client_close_is_answered_with_the_same_code(echo) -> None:
    c = _connect(echo)
    c.send_close(status=4001, reason=b"bye")
    opcode, frame = c.recv_data_frame(control_frame=True)
    assert opcode == wsclient.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 4001
    c.shutdown()


def _raw_connection(echo: EchoServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", echo.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return s


def _close_code(s: socket.socket) -> int:
    """Read frames until the server's close frame; its status code."""
    buf = b""
    while True:
        chunk = s.recv(65536)
        assert chunk, "connection ended without a close frame"
        buf += chunk
        if len(buf) >= 4 and buf[0] & 0x0F == ws.OP_CLOSE:
            return struct.unpack("!H", buf[2:4])[0]


@pytest.mark.parametrize("frame, code", [
    (b"\x81\x05hello", ws.CLOSE_PROTOCOL_ERROR),  # unmasked client frame
    (b"\xc1\x80" + b"\0" * 4, ws.CLOSE_PROTOCOL_ERROR),  # RSV1 without an extension
    (b"\x83\x80" + b"\0" * 4, ws.CLOSE_PROTOCOL_ERROR),  # reserved opcode
    (b"\x80\x80" + b"\0" * 4, ws.CLOSE_PROTOCOL_ERROR),  # continuation with no message
    (b"\x09\x80" + b"\0" * 4, ws.CLOSE_PROTOCOL_ERROR),  # fragmented ping
    (b"\x81\x82" + b"\0" * 4 + b"\xc3\x28", ws.CLOSE_INVALID_DATA),  # invalid UTF-8
    (b"\x82\xff" + struct.pack("!Q", MAX_MESSAGE + 1) + b"\0" * 4, ws.CLOSE_TOO_BIG),  # refused from its header
])
def test_protocol_violations_close_with_the_rfc_code(echo, frame, code) -> None:
    s = _raw_connection(echo)
    try:
        s.sendall(frame)
        assert _close_code(s) == code
    finally:
        s.close()


def test_memory_grows_with_bytes_received_not_with_a_declared_length(echo) -> None:
    """A frame header that claims the whole message limit costs what actually arrived:
    declared 8 MB, sent a few bytes -> about 1 MB held; the rest sent -> the whole echo."""
    import time
    import tracemalloc

    declared = MAX_MESSAGE
    mask = os.urandom(4)
    payload = os.urandom(declared)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:4096])) + bytes(
        a ^ b for a, b in zip(payload[4096:], (mask * (declared // 4 + 1))[4096:declared], strict=True))
    s = _raw_connection(echo)
    tracemalloc.start()
    try:
        s.sendall(b"\x82\xff" + struct.pack("!Q", declared) + mask + masked[:3])
        time.sleep(0.5)
        held, _peak = tracemalloc.get_traced_memory()
        assert held < 2 * 1024 * 1024, f"{held} bytes held for 3 bytes received of a declared {declared}"
        s.sendall(masked[3:])
        got = b""
        header = s.recv(10)
        assert header[:2] == b"\x82\x7f" and struct.unpack("!Q", header[2:10])[0] == declared
        while len(got) < declared:
            got += s.recv(1024 * 1024)
        assert got == payload
    finally:
        tracemalloc.stop()
        s.close()


def test_a_message_trickling_under_the_rate_floor_is_let_go() -> None:
    """Declared 4 MB, then 64 KB at a time: kept while the average holds (grace 0.5 s, then
    1 MB/s), closed with 1008 once it falls under; a fast one of the same size passes."""
    import time

    for label, pause, expect in (("fast", 0.0, "echo"), ("slow", 0.25, "closed")):
        a, b = socket.socketpair()
        server = ws.WebSocket(a, max_message_size=8 << 20, grace_s=0.5, min_bytes_per_s=1 << 20)
        got: list[object] = []
        reader = threading.Thread(target=lambda got=got, server=server: got.append(server.receive()), daemon=True)
        reader.start()
        declared = 4 << 20
        b.sendall(b"\x82\xff" + struct.pack("!Q", declared) + b"\0\0\0\0")  # a zero mask
        chunks, sent = declared // 65536, 0
        try:
            for _ in range(chunks):
                b.sendall(b"\1" * 65536)
                sent += 1
                time.sleep(pause)
        except OSError:
            pass  # the server closed on us
        reader.join(10)
        if expect == "echo":
            assert got == [b"\1" * declared], label
        else:
            assert got == [None] and server.closed, label
            assert sent < chunks // 2, (sent, chunks)  # let go early on, not once it all came
            b.settimeout(2)
            head = b.recv(4)
            assert head[0] == 0x88 and struct.unpack("!H", head[2:4])[0] == ws.CLOSE_POLICY
        a.close()
        b.close()


def test_bad_upgrade_requests_are_refused() -> None:
    good = {"REQUEST_METHOD": "GET", "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "keep-alive, Upgrade",
            "HTTP_SEC_WEBSOCKET_VERSION": "13", "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert ws.accept_key(good) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's own example
    for change in ({"REQUEST_METHOD": "POST"}, {"HTTP_UPGRADE": "h2c"}, {"HTTP_CONNECTION": "close"},
                   {"HTTP_SEC_WEBSOCKET_VERSION": "8"}, {"HTTP_SEC_WEBSOCKET_KEY": "short"}):
        with pytest.raises(ws.HandshakeError):
            ws.accept_key({**good, **change})


def test_unmask_matches_the_definition() -> None:
    key = os.urandom(4)
    for n in (0, 3, 63, 64, 65, 1001, 100_003):
        data = os.urandom(n)
        buf = bytearray(data)
        ws.unmask(buf, key)
        assert bytes(buf) == bytes(b ^ key[i % 4] for i, b in enumerate(data))


def test_big_payloads_are_unmasked_by_the_offload() -> None:
    """With an offload (the web's native threads), a payload over UNMASK_OFFLOAD_ABOVE is
    unmasked there, and small ones on the spot: the messages arrive the same."""
    calls: list[tuple[str, int]] = []

    def offload(fn, *args):  # type: ignore[no-untyped-def]
        calls.append((fn.__name__, len(args[0])))
        return fn(*args)

    server = EchoServer(offload=offload)
    try:
        c = wsclient.create_connection(server.url(), timeout=10)
        try:
            big = base64.b64encode(os.urandom(ws.UNMASK_OFFLOAD_ABOVE)).decode()
            c.send(big)
            assert c.recv() == big
            c.send("small")
            assert c.recv() == "small"
        finally:
            c.close()
    finally:
        server.listener.close()
    assert calls == [("unmask", len(big))]


@pytest.mark.parametrize("size", [300_000, 3 * ws.YIELD_EVERY + 7])
def test_frames_are_sent_as_one_message_without_joining(echo, size) -> None:
    """A :class:`ws.Frames` message arrives as one text message, parts in order (a part
    over YIELD_EVERY goes out in slices, the other greenlets running between them)."""
    a, b = socket.socketpair()
    try:
        server = ws.WebSocket(a, max_message_size=MAX_MESSAGE)
        parts = (b'42["x",{"audio_data":"', base64.b64encode(os.urandom(size)), b'"}]')
        threading.Thread(target=server.send, args=(ws.Frames(parts),), daemon=True).start()
        reader = b.makefile("rb")
        first, second = reader.read(2)
        assert first == 0x81 and second & 0x7F == 127
        (length,) = struct.unpack("!Q", reader.read(8))
        assert reader.read(length) == b"".join(parts)
    finally:
        a.close()
        b.close()


def test_reference_client_big_frames_round_trip(echo) -> None:
    """The reference client's own frame builder and reader (plugin_protocol.wsclient)."""
    c = wsclient.create_connection(echo.url(), timeout=10, class_=FastWebSocket, skip_utf8_validation=True)
    try:
        text = base64.b64encode(os.urandom(5_000_001)).decode()
        c.send(text)
        assert c.recv() == text
    finally:
        c.close()


@pytest.mark.parametrize("encoded", [
    '2["ev",{"a":1}]', "0", '0/chat,{"x":1}', '2/chat,["ev"]', '213["ev",1]', '2/chat?x=1,5["a"]', "3",
    '51-["ev",{"_placeholder":true,"num":0}]', '2 ["a"] ', "2", '2[NaN]', "2/ns",
])
def test_fast_packet_decodes_like_the_library(encoded) -> None:
    ours, theirs = FastPacket(encoded_packet=encoded), sio_packet.Packet(encoded_packet=encoded)
    assert (ours.packet_type, ours.namespace, ours.id, ours.attachment_count) == \
           (theirs.packet_type, theirs.namespace, theirs.id, theirs.attachment_count)
    assert repr(ours.data) == repr(theirs.data)


@pytest.mark.parametrize("encoded", ['2["a"]x', '2-["a"]', '212345678901-["a"]', '2{"a":'])
def test_fast_packet_refuses_what_the_library_refuses(encoded) -> None:
    with pytest.raises(ValueError):
        sio_packet.Packet(encoded_packet=encoded)
    with pytest.raises(ValueError):
        FastPacket(encoded_packet=encoded)


def test_server_does_not_offer_permessage_deflate(server) -> None:
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


def test_server_refuses_a_broken_upgrade(server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    request = (f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request.encode())
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 400")


def _server_frames(s: socket.socket) -> Iterator[tuple[int, bytes]]:
    """The server's frames on a raw connection, as (opcode, payload), until it closes."""
    buf = b""
    while True:
        while len(buf) >= 2:
            length, at = buf[1] & 0x7F, 2
            if length == 126:
                length, at = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                length, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + length:
                break
            yield buf[0] & 0x0F, buf[at:at + length]
            buf = buf[at + length:]
        chunk = s.recv(65536)
        if not chunk:
            return
        buf += chunk


def test_a_stranger_cannot_send_a_big_message_before_connecting(server) -> None:
    """Before its Socket.IO CONNECT is accepted a websocket may send 64 KB at most (the
    CONNECT with its key is a few hundred bytes): a 1 MB message is refused from its frame
    header (1009), where a connected client may send up to G4L_MAX_PAYLOAD_MB."""
    host, port = server.url.removeprefix("http://").split(":")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        frames = _server_frames(s)
        opcode, payload = next(frames)
        assert opcode == ws.OP_TEXT and payload.startswith(b"0{")  # the Engine.IO open packet
        body = b'42["process_audio_request",{"audio_data":"' + b"A" * (1 << 20) + b'"}]'
        s.sendall(b"\x81\xff" + struct.pack("!Q", len(body)) + b"\0\0\0\0")  # the header alone
        codes = [struct.unpack("!H", p[:2])[0] for op, p in frames if op == ws.OP_CLOSE]
        assert codes == [ws.CLOSE_TOO_BIG]


def test_a_reader_that_stalls_mid_message_is_let_go_at_the_messages_deadline(monkeypatch) -> None:
    """A big part goes out in slices, all under the message's one send deadline: a client
    that stops reading is let go (the connection ends) instead of each slice waiting anew."""
    monkeypatch.setattr(ws, "SEND_TIMEOUT_BASE_S", 0.5)
    monkeypatch.setattr(ws, "SEND_RATE_FLOOR", 10 ** 12)
    a, b = socket.socketpair()
    try:
        server = ws.WebSocket(a, max_message_size=MAX_MESSAGE)
        part = os.urandom(3 * ws.YIELD_EVERY)
        with pytest.raises(ws.ConnectionClosed):
            server.send(ws.Frames((b"x", part), text=False))  # b never reads
    finally:
        a.close()
        b.close()


def test_every_accepted_connection_sends_small_frames_at_once() -> None:
    """The web process's connection handler turns Nagle's algorithm off (TCP_NODELAY): a
    Socket.IO answer is two small frames, and the kernel held the second until the client
    acknowledged the first, up to 40 ms with a client that delays its ACKs."""
    from g4l.settings import Settings
    from g4l.web import http_server

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    conn, address = listener.accept()
    try:
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the kernel's default
        http_server.handler_class(Settings())(conn, address, None)
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (conn, client, listener):
            s.close()
