"""RFC 6455 websocket connections, server side, built for messages of tens of MB.

Why not wsproto/simple-websocket (measured, scripts/bench_roundtrip): a 61 MB upload went
through ~8 full copies there (1 MB events, per-chunk UTF-8 decode and re-encode,
bytearray growth, a final decode) and a 74 MB reply was concatenated into one frame
before a single send; with the Python client, about 0.6 s per direction of the
roundtrip. Here a message payload is read with ``recv_into`` straight into one buffer,
unmasked in place with numpy, and decoded once; a reply is sent as a header plus its
parts (:class:`Frames`), with no concatenation.

Scope: no extensions (permessage-deflate is not offered: base64 audio barely compresses
and compressing 70 MB would take seconds), no subprotocols. Client frames must be masked;
RSV bits must be zero; control frames must be short and unfragmented; text must be UTF-8.
Violations close the connection with the RFC's status code (1002, 1007, 1009).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = (OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG = 1000, 1002, 1007, 1008, 1009

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_READ_CHUNK = 1024 * 1024
#: Reads for headers and small messages (a large recv() size costs an allocation each time).
_HEADER_READ = 64 * 1024
#: Below this a frame goes out as one ``sendall`` (header + payload joined): one syscall.
_JOIN_BELOW = 64 * 1024
#: A send may take this long plus one second per 128 kB (a stalled client must not pin a
#: greenlet and its buffers forever).
SEND_TIMEOUT_BASE_S = 60.0
SEND_RATE_FLOOR = 128 * 1024
#: A read that waits this long ends the connection. Engine.IO pings every ~25 s, so a
#: live client is never this quiet; a vanished one (no FIN, no RST) is let go.
READ_IDLE_TIMEOUT_S = 300.0
#: A frame payload over this is held to the minimum upload rate (smaller ones arrive in
#: one read or two; the idle timeout covers them).
_RATE_CHECK_ABOVE = _READ_CHUNK
#: With an ``offload``, payloads over this are unmasked in a native thread (numpy drops the
#: GIL): about 2 ms of the event loop per 8 MB otherwise, 15 ms for a 61 MB upload.
UNMASK_OFFLOAD_ABOVE = _READ_CHUNK
#: While a big payload arrives, the reader lets the other greenlets run after every this
#: many bytes (``time.sleep(0)`` is gevent's in the web process): when the bytes come as
#: fast as they are read no read ever waits, and an 8 MB upload held the loop throughout.
YIELD_EVERY = 2 * _READ_CHUNK


class HandshakeError(ValueError):
    """The HTTP request is not a valid websocket upgrade (answer 400)."""


class ConnectionClosed(Exception):
    """The connection is closed (or was closed while sending)."""


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Frames:
    """A message already encoded, in parts sent back to back without joining them.
    ``parts`` are bytes-like (bytes, memoryview, bytearray); ``on_sent`` (if any) is called
    once the whole message is written to the socket."""

    parts: tuple[bytes | bytearray | memoryview, ...]
    text: bool = True
    on_sent: Callable[[], None] | None = field(default=None, compare=False)

    @property
    def length(self) -> int:
        return sum(memoryview(p).nbytes for p in self.parts)


def accept_key(environ: dict) -> str:
    """Validate an upgrade request's headers; return its ``Sec-WebSocket-Accept`` value."""
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError("a websocket upgrade must be a GET request")
    if "websocket" not in environ.get("HTTP_UPGRADE", "").lower():
        raise HandshakeError("missing 'Upgrade: websocket'")
    if "upgrade" not in [t.strip() for t in environ.get("HTTP_CONNECTION", "").lower().split(",")]:
        raise HandshakeError("missing 'Connection: Upgrade'")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        raise HandshakeError("unsupported Sec-WebSocket-Version (13 is required)")
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HandshakeError("invalid Sec-WebSocket-Key")
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def response_headers(accept: str) -> bytes:
    """The ``101 Switching Protocols`` response for an accepted upgrade."""
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode("ascii")


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """An unmasked (server) frame header."""
    b1 = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", b1, length)
    if length < 1 << 16:
        return struct.pack("!BBH", b1, 126, length)
    return struct.pack("!BBQ", b1, 127, length)


def unmask(buf: bytearray, mask: bytes) -> None:
    """XOR ``buf`` in place with the 4-byte ``mask`` (repeating from offset 0)."""
    n = len(buf)
    words = n // 4
    if words >= 16:
        view = np.frombuffer(buf, dtype=np.uint32, count=words)
        np.bitwise_xor(view, np.frombuffer(mask, dtype=np.uint32)[0], out=view)
        start = words * 4
    else:
        start = 0
    for i in range(start, n):
        buf[i] ^= mask[i & 3]


class WebSocket:
    """One accepted connection. ``receive`` is called by one greenlet (the reader);
    ``send`` may be called from any, and frames never interleave."""

    def __init__(self, sock: socket.socket, *, max_message_size: int, grace_s: float = 30.0,
                 min_bytes_per_s: float = 32 * 1024, message_limit: Callable[[], int] | None = None,
                 offload: Callable[..., object] | None = None) -> None:
        """:param grace_s: / :param min_bytes_per_s: a large frame's payload must keep up an
            average of ``min_bytes_per_s`` once ``grace_s`` have passed: a client trickling a
            huge message is let go (1008) instead of holding a buffer and a greenlet for hours.
        :param message_limit: the largest message allowed right now, asked at each frame
            (say, small until the client has authenticated); at most ``max_message_size``.
        :param offload: ``offload(fn, *args)`` runs ``fn`` off the event loop and returns its
            result (:func:`g4l.web.offload.offload`): big payloads are unmasked there."""
        self.sock = sock
        self.offload = offload
        self.message_limit = message_limit
        self.grace_s = grace_s
        self.min_bytes_per_s = min_bytes_per_s
        # Sends get their own descriptor so a send deadline never affects a blocked read.
        # Both are in timeout mode: the descriptors share one O_NONBLOCK flag.
        sock.settimeout(READ_IDLE_TIMEOUT_S)
        self._send_sock = sock.dup()
        self.max_message_size = max_message_size
        self._send_lock = threading.Lock()  # a gevent lock once the process is monkey-patched
        self._buf = bytearray()
        self._closed_sent = False
        self.closed = False
        self.close_code: int | None = None

    def limit(self) -> int:
        """The largest message accepted now."""
        if self.message_limit is None:
            return self.max_message_size
        return min(self.max_message_size, self.message_limit())

    # ------------------------------------------------------------------ reading
    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self.sock.recv(_HEADER_READ)
            if not chunk:
                raise ConnectionClosed("connection closed by peer")
            self._buf += chunk

    def _take(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _payload(self, n: int) -> bytearray:
        """``n`` bytes: what is buffered, then the rest read straight into place.

        The buffer grows with the bytes that actually arrive (doubling from 1 MB), never
        to what the frame header claims: a stranger who declares 200 MB and sends one byte
        costs 1 MB, not 200."""
        have = min(n, len(self._buf))
        out = bytearray(min(n, max(have, _READ_CHUNK)))
        out[:have] = self._buf[:have]
        del self._buf[:have]
        paced = n > _RATE_CHECK_ABOVE and self.min_bytes_per_s > 0
        started = time.monotonic()
        yielded_at = have
        try:
            while have < n:
                if have == len(out):
                    out += bytes(min(len(out), n - len(out)))  # zero pages: cheap until written
                idle_cap = True
                if paced:  # the next bytes are due before the average falls under the floor
                    due = started + self.grace_s + have / self.min_bytes_per_s - time.monotonic()
                    if due <= 0:
                        raise ProtocolError(CLOSE_POLICY, f"message arriving slower than "
                                                          f"{self.min_bytes_per_s / 1024:.0f} KB/s")
                    idle_cap = due >= READ_IDLE_TIMEOUT_S
                    self.sock.settimeout(min(due, READ_IDLE_TIMEOUT_S))
                with memoryview(out) as view:
                    try:
                        got = self.sock.recv_into(view[have:], min(len(out) - have, 16 * _READ_CHUNK))
                    except TimeoutError:
                        if idle_cap:
                            raise
                        continue  # the rate check above ends it
                if not got:
                    raise ConnectionClosed("connection closed by peer")
                have += got
                if have - yielded_at >= YIELD_EVERY:
                    time.sleep(0)
                    yielded_at = have
        finally:
            if paced:
                self.sock.settimeout(READ_IDLE_TIMEOUT_S)
        return out

    def _frame(self) -> tuple[bool, int, bytearray]:
        b1, b2 = self._take(2)
        fin, opcode = bool(b1 & 0x80), b1 & 0x0F
        if b1 & 0x70:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS and opcode != OP_CONT:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if not b2 & 0x80:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        length = b2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
            if length >> 63:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "invalid frame length")
        if opcode in _CONTROL_OPS and (length > 125 or not fin):
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frames must be short and unfragmented")
        limit = self.limit()
        if length > limit:
            raise ProtocolError(CLOSE_TOO_BIG, f"message over {limit} bytes")
        mask = self._take(4)
        payload = self._payload(length)
        if self.offload is not None and length > UNMASK_OFFLOAD_ABOVE:
            self.offload(unmask, payload, mask)
        else:
            unmask(payload, mask)
        return fin, opcode, payload

    def receive(self) -> str | bytes | None:
        """The next message (``str`` for text, ``bytes`` for binary), answering pings on
        the way; None once the connection is closed (by either side, or on a protocol
        error, which is answered with the RFC's close code first)."""
        if self.closed:
            return None
        parts: list[bytearray] = []
        message_op: int | None = None
        size = 0
        try:
            while True:
                fin, opcode, payload = self._frame()
                if opcode == OP_PING:
                    self._send_frame(OP_PONG, (payload,))
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    self._on_close(payload)
                    return None
                if opcode == OP_CONT:
                    if message_op is None:
                        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
                elif message_op is not None:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                else:
                    message_op = opcode
                size += len(payload)
                if size > self.limit():
                    raise ProtocolError(CLOSE_TOO_BIG, f"message over {self.limit()} bytes")
                parts.append(payload)
                if fin:
                    break
            data = parts[0] if len(parts) == 1 else bytearray().join(parts)
            if message_op == OP_TEXT:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(CLOSE_INVALID_DATA, "text message is not valid UTF-8") from None
            return bytes(data)
        except ProtocolError as exc:
            self.close(exc.code, exc.reason)
            self.abort()
            return None
        except (ConnectionClosed, OSError):
            self.abort()
            return None

    def _on_close(self, payload: bytearray) -> None:
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CLOSE_NORMAL
        self.close_code = code
        try:
            self.close(code if 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015) else CLOSE_PROTOCOL_ERROR)
        except ConnectionClosed:
            pass
        self.abort()

    # ------------------------------------------------------------------ writing
    def send(self, data: str | bytes | Frames) -> None:
        """Send one message: ``str`` as text, bytes as binary, :class:`Frames` as given."""
        if isinstance(data, Frames):
            self._send_frame(OP_TEXT if data.text else OP_BINARY, data.parts)
            if data.on_sent is not None:
                data.on_sent()
        elif isinstance(data, str):
            self._send_frame(OP_TEXT, (data.encode("utf-8"),))
        else:
            self._send_frame(OP_BINARY, (data,))

    @staticmethod
    def _send_part(sock: socket.socket, part: bytes | bytearray | memoryview, deadline: float) -> None:
        """``sendall`` in slices of :data:`YIELD_EVERY` bytes, letting the other greenlets run
        between them: to a client that reads as fast (loopback, a fast LAN) no send ever
        waits, and the kernel's whole TCP path of 26 MB ran on the event loop at once. The
        message's one send deadline (``time.monotonic()``) bounds all the slices together.
        :raises TimeoutError: past the deadline."""
        with memoryview(part) as view:
            view = view.cast("B")
            for at in range(0, view.nbytes, YIELD_EVERY):
                if at:
                    time.sleep(0)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("send deadline passed")
                    sock.settimeout(left)
                sock.sendall(view[at:at + YIELD_EVERY])

    def _send_frame(self, opcode: int, parts: tuple) -> None:
        length = sum(memoryview(p).nbytes for p in parts)
        header = frame_header(opcode, length)
        with self._send_lock:
            if self._closed_sent:
                raise ConnectionClosed("connection is closing")
            if opcode == OP_CLOSE:
                self._closed_sent = True
            sock = self._send_sock
            try:
                allowed = SEND_TIMEOUT_BASE_S + length / SEND_RATE_FLOOR
                deadline = time.monotonic() + allowed
                sock.settimeout(allowed)
                if length < _JOIN_BELOW:
                    sock.sendall(header + b"".join(parts))
                else:
                    sock.sendall(header)
                    for part in parts:
                        self._send_part(sock, part, deadline)
            except OSError as exc:  # includes the send timeout
                self._closed_sent = True
                self.abort()
                raise ConnectionClosed(f"send failed: {exc}") from None

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start (or answer) the closing handshake; the reader then sees the end."""
        if self._closed_sent:
            return
        try:
            self._send_frame(OP_CLOSE, (struct.pack("!H", code) + reason.encode("utf-8")[:120],))
        except ConnectionClosed:
            return
        try:
            self._send_sock.shutdown(socket.SHUT_WR)  # nothing follows a close frame
        except OSError:
            pass

    def abort(self) -> None:
        """Drop the connection (both directions) and release the descriptors."""
        self.closed = True
        for s in (self.sock, self._send_sock):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._send_sock.close()
        except OSError:
            pass
