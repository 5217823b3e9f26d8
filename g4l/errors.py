"""The error hierarchy: every failure a client can see has a stable code.

Adapters map these once: Socket.IO sends ``error {message, code, session_id?}``, HTTP
answers ``{"error": {"code", "message"}}`` with :attr:`G4LError.http_status`.
"""

from __future__ import annotations


class G4LError(Exception):
    """Base class: a client-facing error with a stable ``code`` and a human message."""

    code = "INTERNAL"
    http_status = 500

    def __init__(self, message: str, *, session_id: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.session_id = session_id
        self.details = details

    def to_payload(self) -> dict[str, object]:
        """The ``error`` event payload (upstream shape plus ``code``)."""
        payload: dict[str, object] = {"message": self.message, "code": self.code}
        if self.session_id:
            payload["session_id"] = self.session_id
        payload.update(self.details)
        return payload


class InvalidRequest(G4LError):
    """A payload of the wrong shape: missing field, wrong type, out-of-range value."""

    code = "INVALID_REQUEST"
    http_status = 400


class InvalidAudio(G4LError):
    """``audio_data`` is not usable audio: broken base64, not a WAV, empty, NaNs, too long."""

    code = "INVALID_AUDIO"
    http_status = 400


class TooLarge(G4LError):
    """A payload or upload over the configured size limit."""

    code = "TOO_LARGE"
    http_status = 413


class ModelNotAllowed(G4LError):
    """A model id that is not in the operator's allowlist."""

    code = "MODEL_NOT_ALLOWED"
    http_status = 400


class SessionNotFound(G4LError):
    """No session with that id (never created, cleaned up, or expired)."""

    code = "SESSION_NOT_FOUND"
    http_status = 404


class Busy(G4LError):
    """The session already has a generation queued or running."""

    code = "BUSY"
    http_status = 409


class NothingToRetry(G4LError):
    """A retry on a session that has had no continue yet."""

    code = "NOTHING_TO_RETRY"
    http_status = 409


class NothingToUndo(G4LError):
    """Undo at a root of the session's history (or before it has any audio)."""

    code = "NOTHING_TO_UNDO"
    http_status = 409


class NothingToRedo(G4LError):
    """Redo from a version that has no child to go back to."""

    code = "NOTHING_TO_REDO"
    http_status = 409


class VersionNotFound(G4LError):
    """A version the session's history does not have, or whose audio was pruned."""

    code = "VERSION_NOT_FOUND"
    http_status = 404


class VersionPruned(VersionNotFound):
    """A version whose audio ``G4L_HISTORY_MAX`` pruned: listed in the history, not restorable."""

    code = "VERSION_PRUNED"
    http_status = 410


class RateLimited(G4LError):
    """Too many requests from one client; ``retry_after`` seconds to wait."""

    code = "RATE_LIMITED"
    http_status = 429


class QueueFull(G4LError):
    """The job queue is at its configured capacity."""

    code = "QUEUE_FULL"
    http_status = 503


class ModelUnavailable(G4LError):
    """An allowed model that could not be loaded (no network to the hub, missing files):
    refused at once, with the reason, instead of queueing a job that cannot run."""

    code = "MODEL_UNAVAILABLE"
    http_status = 503


class StoreUnavailable(G4LError):
    """The audio store (MongoDB/GridFS) did not answer in time: nothing was stored half;
    the request can be sent again."""

    code = "STORE_UNAVAILABLE"
    http_status = 503

    #: What a client is told when a store call failed under a request.
    RETRY = "the audio store did not answer in time; nothing was changed, please send the request again"


class GenerationFailed(G4LError):
    """The worker could not produce a result (model error, worker lost too often)."""

    code = "GENERATION_FAILED"
    http_status = 500


class GpuOutOfMemory(G4LError):
    """The generation does not fit the GPU's memory even alone (a batch that runs out is
    split and retried first): a shorter output or a smaller model may fit."""

    code = "GPU_OUT_OF_MEMORY"
    http_status = 503


class Internal(G4LError):
    """An unexpected server fault; details are in the server log, not in the message."""

    code = "INTERNAL"
    http_status = 500


class Unauthorized(G4LError):
    """No API key, or not one the operator configured (HTTP 401, Socket.IO connect refused)."""

    code = "UNAUTHORIZED"
    http_status = 401


class Forbidden(G4LError):
    """A valid key that may not do this (an operator action by a plain key)."""

    code = "FORBIDDEN"
    http_status = 403


class StationsFull(G4LError):
    """Every station slot is taken (``G4L_MAX_STATIONS``), or this key runs its most
    (``G4L_STATIONS_PER_KEY``): stop one first."""

    code = "STATIONS_FULL"
    http_status = 409


class StationNotFound(G4LError):
    """No station with that id (never created, stopped long ago, or another key's)."""

    code = "STATION_NOT_FOUND"
    http_status = 404


class NotFound(G4LError):
    """No such job or route, or one that belongs to another API key (never says which)."""

    code = "NOT_FOUND"
    http_status = 404


class NotReady(G4LError):
    """The job has no result (yet, or ever: failed or canceled)."""

    code = "NOT_READY"
    http_status = 409


class RequestTimeout(G4LError):
    """The request body arrived too slowly (``G4L_HTTP_BODY_MIN_KBPS``)."""

    code = "REQUEST_TIMEOUT"
    http_status = 408


class RangeNotSatisfiable(G4LError):
    """A ``Range`` header outside the file."""

    code = "RANGE_NOT_SATISFIABLE"
    http_status = 416


class OutputsFull(G4LError):
    """The station already pushes to ``G4L_STATION_MAX_OUTPUTS`` RTMP outputs: stop one first."""

    code = "OUTPUTS_FULL"
    http_status = 409


class OutputNotFound(G4LError):
    """No output with that id on this station."""

    code = "OUTPUT_NOT_FOUND"
    http_status = 404
