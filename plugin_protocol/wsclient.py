"""websocket-client tuned for big Socket.IO messages (audio is tens of MB of base64).

websocket-client sends a frame with ``data = data[sent:]`` after every partial
``socket.send``: each step copies the rest of the frame, so a 60 MB upload copies
hundreds of MB (about 0.5 s here). It also receives in 16 kB reads joined at the end.
This subclass sends from a ``memoryview`` (no copies) and reads a frame's payload with
``recv_into`` straight into one buffer. Everything else (handshake, masking, control
frames, locking) is websocket-client's own.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import websocket

#: Big reads for big frames; websocket-client's default is 16 kB.
RECV_CHUNK = 1024 * 1024
#: From this size a frame is built by :func:`_masked_frame` (one buffer, masked in place).
BIG_FRAME = 64 * 1024


def _masked_frame(frame: websocket.ABNF) -> bytearray:
    """``frame.format()`` for a masked frame, with one copy of the payload instead of
    three and numpy's XOR instead of a byte loop."""
    payload = frame.data.encode("utf-8") if isinstance(frame.data, str) else frame.data
    n = len(payload)
    first = 0x80 * frame.fin | frame.opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = frame.get_mask_key(4)
    key = key.encode("latin-1") if isinstance(key, str) else bytes(key)
    start = len(header) + 4
    buf = bytearray(start + n)
    buf[: len(header)] = header
    buf[len(header) : start] = key
    buf[start:] = payload
    words = n // 4
    view = np.frombuffer(buf, dtype=np.uint32, count=words, offset=start)
    np.bitwise_xor(view, np.frombuffer(key, dtype=np.uint32)[0], out=view)
    for i in range(words * 4, n):
        buf[start + i] ^= key[i & 3]
    return buf


class FastWebSocket(websocket.WebSocket):
    """Pass as ``class_`` to ``websocket.create_connection`` (engineio forwards
    ``websocket_extra_options``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_buffer.recv_strict = self._recv_strict  # type: ignore[method-assign,assignment]

    def send_frame(self, frame: websocket.ABNF) -> int:
        if self.get_mask_key:
            frame.get_mask_key = self.get_mask_key
        big = len(frame.data) >= BIG_FRAME and frame.mask_value and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
        data = _masked_frame(frame) if big else frame.format()
        view = memoryview(data)
        with self.lock:
            while view:
                sent = self._send(view)  # type: ignore[arg-type]  # a buffer is all a socket needs
                view = view[sent:]
        return len(data)

    def _recv_strict(self, size: int) -> bytes:
        """Exactly ``size`` bytes: what websocket-client already buffered, then the rest
        read directly into place."""
        fb = self.frame_buffer
        pending = b"".join(fb.recv_buffer)
        if len(pending) >= size:
            fb.recv_buffer = [pending[size:]] if len(pending) > size else []
            return pending[:size]
        fb.recv_buffer = []
        out = bytearray(size)
        out[: len(pending)] = pending
        view, got = memoryview(out), len(pending)
        if self.sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is already closed.")
        while got < size:
            try:
                n = self.sock.recv_into(view[got:], min(size - got, RECV_CHUNK))
            except TimeoutError as exc:
                raise websocket.WebSocketTimeoutException(str(exc)) from None
            if n == 0:
                raise websocket.WebSocketConnectionClosedException("Connection to remote host was lost.")
            got += n
        return bytes(out)  # websocket-client decodes only ``bytes`` payloads
