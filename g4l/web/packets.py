"""The server's Socket.IO packet class: :class:`~plugin_protocol.packets.FastPacket`, plus an
answer for an event packet whose JSON cannot be parsed.

python-socketio drops such a packet (nested too deep for the parser, an integer past
Python's 4300-digit limit, broken JSON) without a word, and the client waits forever. Here
it becomes the event :data:`INVALID_PACKET` carrying the reason (and the packet's ack id,
read before the JSON), which the namespace answers with an ``error`` event.
"""

from __future__ import annotations

from typing import Any

from socketio import packet

from plugin_protocol.packets import FastPacket

INVALID_PACKET = "__invalid_packet__"


class ServerPacket(FastPacket):
    """``FastPacket`` that turns an unparsable event into :data:`INVALID_PACKET`."""

    def decode(self, encoded_packet: Any) -> int:
        try:
            return super().decode(encoded_packet)
        except RecursionError:
            reason = "the JSON is nested too deeply"
        except ValueError as exc:
            reason = f"the JSON cannot be parsed ({str(exc)[:120]})"
        if self.packet_type != packet.EVENT:
            raise ValueError(reason)
        self.data = [INVALID_PACKET, reason]
        return 0
