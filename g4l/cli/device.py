"""The device side: one Socket.IO connection per command, through
:class:`plugin_protocol.client.DeviceClient`, with the protocol's failures turned into
:class:`~g4l.cli.errors.CliError` and its events fed to the progress display."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import socketio

from g4l.cli.errors import CliError, unreachable
from g4l.cli.progress import Progress
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError, Result

_JOB_ENDS = ("completed", "failed", "canceled")
_ACKS = {g.received for g in events.GENERATIONS}


@dataclass
class Generation:
    """A finished bang, continue or retry."""

    result: Result
    seed: int | None


class Device:
    """A connected device-protocol client for one command.

    :param url: the server's base URL.
    :param api_key: sent as Socket.IO ``auth={"api_key": ...}`` when given.
    :param timeout: seconds to wait for each answer (the acknowledgement, then the result).
    """

    def __init__(self, url: str, *, api_key: str | None, timeout: float) -> None:
        self.url = url
        self.progress: Progress | None = None
        self._refusal: dict[str, Any] | None = None
        self.client = DeviceClient(url, timeout=timeout, auth={"api_key": api_key} if api_key else None,
                                   on_event=self._on_event)
        # A refused handshake's reason ({message, code}) comes only to this reserved event.
        self.client.sio.on("connect_error", self._on_connect_error)
        # A native client sends no Origin (as the devices' socket.io-client does not):
        # websocket-client would send the server's own, which a G4L_CORS_ORIGINS allowlist
        # (meant for browsers) refuses.
        self.client.sio.eio.websocket_extra_options["suppress_origin"] = True
        self._session: str | None = None  # the session (or job) to find again after a reconnect
        self._job: str | None = None
        self._connected_once = False
        self.client.sio.on("connect", self._on_connect)

    # ------------------------------------------------------------ connection
    def __enter__(self) -> Device:
        try:
            self.client.connect()
        except socketio.exceptions.ConnectionError as exc:
            if self._refusal is not None:
                # The server answered and said no. It refuses a socket only for its API key,
                # and its connect_error may lack the code (python-socketio keeps only the
                # message of some refusals): name the likely cause then.
                code = str(self._refusal.get("code") or "UNAUTHORIZED")
                message = str(self._refusal.get("message") or exc)
                if not self._refusal.get("code"):
                    message += " (check --api-key or $G4L_API_KEY)"
                raise CliError(code, message) from None
            raise unreachable("UNREACHABLE", f"cannot connect to {self.url}: {exc}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection is not the command's failure
            pass

    def _on_connect_error(self, data: Any = None) -> None:
        if isinstance(data, dict):  # the server's detail rides in "data" ({message, code})
            self._refusal = data.get("data") if isinstance(data.get("data"), dict) else data

    def _on_connect(self) -> None:
        # After a dropped connection the client reconnects as a new socket, outside the
        # session's room: ask for the session as the device does on reconnect, which joins
        # the room again and resends a result that finished meanwhile.
        if self._connected_once and self._session:
            self.client.emit(events.VERIFY_SESSION, {"session_id": self._session})
        if self._connected_once and self._job:
            self.client.emit(events.SUBSCRIBE, {"job_id": self._job})  # answered with the job's state at once
        self._connected_once = True

    def _on_event(self, name: str, data: Any) -> None:
        if name in _ACKS and isinstance(data, dict) and isinstance(data.get("session_id"), str):
            self._session = data["session_id"]
        if self.progress is not None:
            self.progress.on_event(name, data)

    # ------------------------------------------------------------ operations
    def generate(self, kind: str, progress: Progress, *, session_id: str | None = None,
                 wav: bytes | None = None, params: dict[str, Any]) -> Generation:
        """Run a bang, continue or retry and wait for its audio.

        :param kind: ``bang``, ``continue``, ``retry`` or ``transform``.
        :param session_id: the session (none for a bang, or a continue that starts one).
        :param wav: the audio to send (a bang's input; a continue's current file, or none
            to continue the session's stored audio).
        :param params: generation parameters in the protocol's names; None values are left out.
        """
        sent = {k: v for k, v in params.items() if v is not None}
        self.progress = progress
        try:
            with _protocol_errors():
                if kind == "bang":
                    assert wav is not None
                    model, prompt_s = sent.pop("model_name"), sent.pop("prompt_duration")
                    result = self.client.bang(wav, model_name=model, prompt_duration=prompt_s, **sent)
                elif kind == "continue":
                    result = self.client.continue_(session_id, wav, **sent)
                elif kind == "transform":
                    result = self.client.transform(session_id, wav, **sent)
                else:
                    assert session_id is not None
                    result = self.client.retry(session_id, **sent)
        finally:
            self.progress = None
        return Generation(result, result.seed)

    def crop(self, session_id: str | None, wav: bytes) -> dict[str, Any]:
        """``update_cropped_audio``: ``wav`` becomes the session's current audio (a new
        session when ``session_id`` is none). Returns ``{message, session_id}``."""
        with _protocol_errors():
            return self.client.crop(session_id, wav)

    def verify(self, session_id: str) -> dict[str, Any]:
        """``verify_session``: the session's status (``exists`` false when unknown)."""
        with _protocol_errors():
            return self.client.verify(session_id)

    def watch_job(self, job_id: str, progress: Progress, timeout: float) -> dict[str, Any]:
        """Subscribe to an HTTP job and wait until it ends; returns its last ``job_update``."""
        ended = threading.Event()
        last: dict[str, Any] = {}

        def on_event(name: str, data: Any) -> None:
            if not isinstance(data, dict):
                return
            if name in (events.JOB_UPDATE, events.JOB_COMPLETED) and data.get("job_id") == job_id:
                last.clear()
                last.update(data)
                progress.on_job(data)
                if data.get("status") in _JOB_ENDS:
                    ended.set()
            elif name == events.ERROR:
                last.clear()
                last.update({"status": "error", "error": data})
                ended.set()

        self.client.on_event = on_event
        self._job = job_id
        try:
            self.client.emit(events.SUBSCRIBE, {"job_id": job_id})
            if not ended.wait(timeout):
                raise unreachable("TIMEOUT", f"job {job_id} did not finish within {timeout:.0f} s")
        finally:
            self.client.on_event = self._on_event
        return dict(last)


class _protocol_errors:
    """Turn the reference client's exceptions into CLI errors."""

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, ProtocolError):
            payload = exc.payload if isinstance(exc.payload, dict) else {}
            raise CliError(str(exc.code or "ERROR"), str(payload.get("message") or exc)) from None
        if isinstance(exc, TimeoutError):
            raise unreachable("TIMEOUT", f"no answer within {time.monotonic() - self.started:.0f} s") from None
