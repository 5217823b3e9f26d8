"""terry's Socket.IO event (``transform_audio_request``): parse, call
:class:`~g4l.services.transform.TransformService`, acknowledge. The result
(``audio_transformed {audio_data, session_id, variation}``) comes through the relay like
every generation's; ``undo_transform_request`` is a history move
(:mod:`g4l.web.history_events`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from g4l.services.sessions import Accepted
from g4l.services.transform import TransformService
from g4l.web.api.access import socket_caller
from plugin_protocol.normalize import parse_payload
from plugin_protocol.payloads import TransformAudioRequest


class TransformEvents:
    """``on_<event>`` handlers of terry (a mixin of the namespace, beside
    :class:`~g4l.web.device_events.DeviceEvents`, whose replies it shares)."""

    transforms: TransformService
    _join: Callable[[str], None]
    _accepted: Callable[[Accepted], None]

    def on_transform_audio_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, TransformAudioRequest)
        if req.session_id:
            self._join(req.session_id)  # see the session's progress even if this one is refused
        # Acknowledged with transform_audio_received, then queue_status; progress_update per
        # solver step and audio_transformed come from the relay.
        self._accepted(self.transforms.transform(req, socket_caller()))
