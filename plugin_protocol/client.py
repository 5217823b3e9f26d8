"""A small reference client of the device protocol (python-socketio over a websocket).

Used by the tests, the CLI and any Python integrator. It records every event it
receives and offers blocking helpers for the device's operations::

    with DeviceClient("http://127.0.0.1:8000") as c:
        result = c.bang(wav_bytes, model_name="debug", prompt_duration=6)
        result = c.continue_(result.session_id, result.audio)
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

from plugin_protocol import events, fastjson
from plugin_protocol.packets import FastPacket
from plugin_protocol.wsclient import FastWebSocket


class ProtocolError(RuntimeError):
    """The server answered with an ``error`` event."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(f"{payload.get('code')}: {payload.get('message')}")
        self.payload = payload
        self.code = payload.get("code")


@dataclass
class Result:
    """A finished generation: the audio and what happened on the way."""

    session_id: str
    audio: bytes
    event: str
    progress: list[int] = field(default_factory=list)
    queue: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    job_id: str = ""  # from the *_received acknowledgement
    seed: int | None = None  # from the *_received acknowledgement (the seed the generation used)
    #: The result event's fields besides the audio (``variation`` for a transform).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Version:
    """The session's current version after an undo, redo or checkout, with its audio."""

    session_id: str
    version: int
    operation: str
    audio: bytes


class DeviceClient:
    """Blocking client; every received event is appended to :attr:`received`.

    :param on_event: called as ``on_event(name, data)`` for every received event, on the
        Socket.IO client's thread, after it is recorded (a live progress display). It may
        be replaced at any time through the :attr:`on_event` attribute.
    """

    def __init__(self, url: str, *, timeout: float = 120.0, auth: dict[str, Any] | None = None,
                 on_event: Callable[[str, Any], None] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.auth = auth
        self.on_event = on_event
        # websocket-client validates UTF-8 in pure Python unless told not to; text frames
        # are decoded (and so validated) by Python's C UTF-8 codec anyway.
        self.sio = socketio.Client(reconnection=True, json=fastjson, serializer=FastPacket,
                                   websocket_extra_options={"skip_utf8_validation": True, "class_": FastWebSocket})
        self.received: list[tuple[float, str, Any]] = []
        self._cond = threading.Condition()
        self.sio.on("*", self._on_any)

    # ------------------------------------------------------------ plumbing
    def _on_any(self, event: str, data: Any = None) -> None:
        with self._cond:
            self.received.append((time.monotonic(), event, data))
            self._cond.notify_all()
        callback = self.on_event
        if callback is not None:
            callback(event, data)

    def connect(self) -> DeviceClient:
        self.sio.connect(self.url, transports=["websocket"], auth=self.auth, wait_timeout=30)
        return self

    def close(self) -> None:
        self.sio.disconnect()

    def __enter__(self) -> DeviceClient:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def emit(self, event: str, payload: Any) -> None:
        self.sio.emit(event, payload)

    def mark(self) -> int:
        """An index into :attr:`received`; wait for events after it."""
        with self._cond:
            return len(self.received)

    def wait_for(self, names: set[str] | str, since: int, *, session_id: str | None = None,
                 timeout: float | None = None, errors: bool = True) -> tuple[str, Any]:
        """The first event named in ``names`` received after ``since``; an ``error`` event
        for the same session raises :class:`ProtocolError` unless ``errors`` is false."""
        if isinstance(names, str):
            names = {names}
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            index = since
            while True:
                while index < len(self.received):
                    _t, name, data = self.received[index]
                    index += 1
                    if name not in names and (name != events.ERROR or not errors):
                        continue
                    sid = data.get("session_id") if isinstance(data, dict) else None
                    if session_id and sid and sid != session_id:
                        continue
                    if name == events.ERROR:
                        raise ProtocolError(data)
                    return name, data
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {sorted(names)} within {timeout or self.timeout:.0f} s")
                self._cond.wait(left)

    def events_since(self, since: int, name: str | None = None) -> list[Any]:
        with self._cond:
            return [d for _t, n, d in self.received[since:] if name is None or n == name]

    # ------------------------------------------------------------ operations
    def _generation(self, exchange: events.GenerationEvents, payload: dict[str, Any],
                    session_id: str | None) -> Result:
        since = self.mark()
        started = time.monotonic()
        self.emit(exchange.request, payload)
        _, ack = self.wait_for(exchange.received, since, session_id=session_id)
        sid, seed = ack["session_id"], ack.get("seed")
        _, data = self.wait_for(exchange.result, since, session_id=sid)
        progress = [d["progress"] for d in self.events_since(since, events.PROGRESS_UPDATE)
                    if d.get("session_id") == sid]
        queue = [d for d in self.events_since(since, events.QUEUE_STATUS) if d.get("session_id") == sid]
        extra = {k: v for k, v in data.items() if k not in ("audio_data", "session_id")}
        return Result(sid, base64.b64decode(data["audio_data"]), exchange.result, progress, queue,
                      time.monotonic() - started, str(ack.get("job_id") or ""), seed if isinstance(seed, int) else None,
                      extra)

    def bang(self, wav: bytes, *, model_name: str, prompt_duration: int, **params: Any) -> Result:
        payload = {"audio_data": base64.b64encode(wav).decode(), "model_name": model_name,
                   "prompt_duration": prompt_duration, **params}
        return self._generation(events.BANG, payload, None)

    def continue_(self, session_id: str | None, wav: bytes | None = None, **params: Any) -> Result:
        payload: dict[str, Any] = {"session_id": session_id, **params}
        if wav is not None:
            payload["audio_data"] = base64.b64encode(wav).decode()
        return self._generation(events.CONTINUE, payload, session_id)

    def retry(self, session_id: str, **params: Any) -> Result:
        return self._generation(events.RETRY, {"session_id": session_id, **params}, session_id)

    def transform(self, session_id: str | None, wav: bytes | None = None, *, variation: str | None = None,
                  **params: Any) -> Result:
        """terry: rewrite the session's audio (or ``wav``; no session: a new one holding it)
        in a preset's style. ``params``: ``flowstep``, ``solver``, ``steps``, ``custom_prompt``,
        ``seed``. The result is the input's length and format; ``result.extra["variation"]``
        names the preset."""
        payload: dict[str, Any] = {"session_id": session_id, "variation": variation, **params}
        if wav is not None:
            payload["audio_data"] = base64.b64encode(wav).decode()
        return self._generation(events.TRANSFORM, payload, session_id)

    def _call(self, event: str, payload: Any, reply: str, session_id: str | None = None) -> Any:
        since = self.mark()
        self.emit(event, payload)
        return self.wait_for(reply, since, session_id=session_id)[1]

    def crop(self, session_id: str | None, wav: bytes) -> dict[str, Any]:
        payload = {"session_id": session_id, "audio_data": base64.b64encode(wav).decode()}
        return self._call(events.UPDATE_CROPPED_AUDIO, payload, events.UPDATE_CROPPED_AUDIO_COMPLETE, session_id)

    def cleanup(self, session_id: str) -> dict[str, Any]:
        return self._call(events.CLEANUP_SESSION, {"session_id": session_id}, events.CLEANUP_COMPLETE, session_id)

    def verify(self, session_id: str) -> dict[str, Any]:
        return self._call(events.VERIFY_SESSION, {"session_id": session_id}, events.SESSION_STATUS, session_id)

    def progress_status(self, session_id: str, last_progress: int = 0) -> dict[str, Any]:
        return self._call(events.REQUEST_PROGRESS_STATUS, {"session_id": session_id, "last_progress": last_progress},
                          events.SESSION_STATUS, session_id)

    # ------------------------------------------------------------ history
    def _move(self, event: str, payload: dict[str, Any], reply: str) -> Version:
        data = self._call(event, payload, reply, payload["session_id"])
        return Version(data["session_id"], int(data["version"]), str(data["operation"]),
                       base64.b64decode(data["audio_data"]))

    def undo(self, session_id: str) -> Version:
        """Make the current version's parent current; its audio comes back."""
        return self._move(events.UNDO, {"session_id": session_id}, events.UNDO_COMPLETE)

    def redo(self, session_id: str) -> Version:
        """Go back to the version undo came from."""
        return self._move(events.REDO, {"session_id": session_id}, events.REDO_COMPLETE)

    def checkout(self, session_id: str, version: int) -> Version:
        """Make any kept version current."""
        return self._move(events.CHECKOUT, {"session_id": session_id, "version": version}, events.CHECKOUT_COMPLETE)

    def undo_transform(self, session_id: str) -> Version:
        """Restore the audio the last transform started from."""
        return self._move(events.UNDO_TRANSFORM, {"session_id": session_id}, events.TRANSFORM_UNDONE)

    def history(self, session_id: str) -> dict[str, Any]:
        """The session's versions (``{session_id, current, versions: [...]}``, no audio)."""
        return self._call(events.HISTORY, {"session_id": session_id}, events.HISTORY_RESULT, session_id)

    def restore_chunked(self, wav: bytes, chunk_size: int | None = None, **params: Any) -> str:
        """Upload ``wav`` in chunks (begin_restore_audio / audio_chunk); returns the session id."""
        ready = self._call(events.BEGIN_RESTORE_AUDIO, params, events.READY_FOR_CHUNKS)
        session_id = ready["session_id"]
        text = base64.b64encode(wav).decode()
        size = chunk_size or int(ready["chunk_size"])
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        since = self.mark()
        for index, chunk in enumerate(chunks):
            self.emit(events.AUDIO_CHUNK, {"session_id": session_id, "chunk": chunk, "chunk_index": index,
                                           "total_chunks": len(chunks), "is_last": index == len(chunks) - 1})
        self.wait_for(events.RESTORE_COMPLETE, since, session_id=session_id)
        return session_id
