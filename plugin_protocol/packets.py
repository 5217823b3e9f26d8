"""A Socket.IO packet class that decodes big packets without copying them.

python-socketio's ``Packet.decode`` slices the packet text once per header field it
strips (``ep = ep[1:]`` copies all 60 MB of an upload) and searches the whole text for
the attachment dash. This subclass reads the same header fields by index and hands the
JSON to the decoder at an offset, so the only pass over the payload is the JSON parse
itself, which lifts the long base64 string out first (:mod:`plugin_protocol.bigjson`).
Same results, same errors; encoding is unchanged.
Used by the server (``serializer=``) and by the reference client.
"""

from __future__ import annotations

import re
from typing import Any

from socketio import packet

from plugin_protocol import bigjson

_DIGITS = re.compile(r"[0-9]*")


class FastPacket(packet.Packet):
    """``socketio.packet.Packet`` with an index-based :meth:`decode`."""

    def decode(self, encoded_packet: Any) -> int:
        ep = encoded_packet
        if not isinstance(ep, str):  # binary packets, odd inputs: the library's own path
            return super().decode(encoded_packet)
        try:
            self.packet_type = int(ep[0:1])
        except (TypeError, ValueError):
            return super().decode(encoded_packet)
        self.namespace = None
        self.data = None
        end = len(ep)
        i = 1
        attachment_count = 0
        digits = _DIGITS.match(ep, i)
        assert digits is not None  # the pattern matches the empty string
        digits_end = digits.end()
        if digits_end > i and ep[digits_end:digits_end + 1] == "-":
            if digits_end - i > 10:
                raise ValueError("too many attachments")
            attachment_count = int(ep[i:digits_end])
            i = digits_end + 1
        if i < end and ep[i] == "/":
            sep = ep.find(",", i)
            if sep == -1:
                self.namespace = ep[i:]
                i = end
            else:
                self.namespace = ep[i:sep]
                i = sep + 1
            q = self.namespace.find("?")
            if q != -1:
                self.namespace = self.namespace[:q]
        if i < end and ep[i].isdigit():
            j = i + 1
            while j < end and ep[j].isdigit() and j - i < 100:
                j += 1
            self.id = int(ep[i:j])
            i = j
            if i < end and ep[i].isdigit():
                raise ValueError("id field is too long")
        if i < end:
            self.data = bigjson.loads_at(ep, i)
        return attachment_count
