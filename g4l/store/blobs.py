"""Every audio version of every session, as a GridFS file with metadata.

Kinds: ``input`` (what a client sent for a generation), ``output`` (a generation's result
as the client receives it), ``crop`` (a client's trimmed audio), ``upload`` (a chunked
restore) and ``prompt`` (the model-ready prompt window of an HTTP ``generate`` job;
device jobs pass theirs through Redis).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gridfs
import pymongo
from bson import ObjectId
from bson.errors import InvalidId

from g4l.errors import StoreUnavailable
from g4l.log import get_logger

log = get_logger(__name__)

#: Bigger chunks than GridFS's 255 kB default: fewer documents per 50 MB file.
CHUNK_BYTES = 1024 * 1024
#: Pauses between attempts of a write that failed on the server's side (a transient
#: error, a failover): audio is never dropped for one bad moment of the store.
PUT_RETRY_PAUSES_S = (0.3, 0.7, 1.5, 3.0)
#: How long a read of the embedded store's limit state (:mod:`g4l.store.guard`) is trusted.
LIMITS_CACHE_S = 2.0
LIMITS_TIMEOUT_S = 0.5
#: Where :mod:`g4l.store.guard` writes that state: collection, document id.
LIMITS_COLLECTION = "store_limits"
LIMITS_ID = "embedded"


class StoreLimitReached(StoreUnavailable, pymongo.errors.PyMongoError):
    """The embedded store is at its disk or memory limit (:mod:`g4l.store.guard`): new audio
    is refused with the reason. Both a :class:`StoreUnavailable` (clients get
    ``STORE_UNAVAILABLE`` and the reason) and a ``PyMongoError`` (every path that handles a
    store that does not answer handles this one too)."""


@dataclass(frozen=True)
class BlobInfo:
    """What GridFS knows of one stored audio version."""

    blob_id: str
    length: int
    metadata: dict[str, Any]


class BlobStore:
    """GridFS-backed audio store (bucket ``audio``)."""

    def __init__(self, mongo_url: str, db_name: str = "g4l", *, timeout_ms: int = 5000) -> None:
        self.client: pymongo.MongoClient = pymongo.MongoClient(
            mongo_url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
        )
        self.db = self.client[db_name]
        self.bucket = gridfs.GridFSBucket(self.db, bucket_name="audio", chunk_size_bytes=CHUNK_BYTES)
        self.files = self.db["audio.files"]
        self._limits = self.db[LIMITS_COLLECTION]
        self._limit_read: tuple[float, str] = (0.0, "")

    def ensure_indexes(self) -> None:
        """Indexes for the session lookups and the retention sweep."""
        self.files.create_index([("metadata.session_id", 1), ("uploadDate", 1)])

    def put(self, data: bytes, *, session_id: str, kind: str, blob_id: str | None = None,
            **metadata: Any) -> str:
        """Store ``data``; returns its id. ``blob_id`` lets a caller reserve the id first."""
        try:
            reason = self.limit_reason()
        except pymongo.errors.PyMongoError:
            # The store does not answer: the write below meets that, with its retries.
            reason = ""
            self._limit_read = (time.monotonic() + LIMITS_CACHE_S, "")
        if reason:
            raise StoreLimitReached(reason)
        meta = {"session_id": session_id, "kind": kind, "created": dt.datetime.now(dt.UTC), **metadata}
        file_id = ObjectId(blob_id) if blob_id else ObjectId()
        unreachable = 0
        for attempt, pause in enumerate(PUT_RETRY_PAUSES_S + (None,), start=1):
            try:
                self.bucket.upload_from_stream_with_id(file_id, f"{session_id}/{kind}", data, metadata=meta)
                return str(file_id)
            except gridfs.errors.FileExists:
                # An earlier attempt did land (its error came after the write): done if whole.
                info = self.info(str(file_id))
                if info is not None and info.length == len(data):
                    return str(file_id)
                self._discard(file_id)
                if pause is None:
                    raise
            except (pymongo.errors.OperationFailure, pymongo.errors.AutoReconnect) as exc:
                if isinstance(exc, pymongo.errors.ServerSelectionTimeoutError):
                    # No server for a whole selection timeout: nothing was written, and the
                    # store is down rather than blinking. One more try, then the caller
                    # answers STORE_UNAVAILABLE (a request must not hang for minutes).
                    unreachable += 1
                    if unreachable >= 2 or pause is None:
                        raise
                else:
                    # A failed write can leave chunks behind: clear them so the retry (same
                    # id) does not collide with its own half.
                    self._discard(file_id)
                    if pause is None:
                        raise
                log.warning("GridFS write failed; retrying", blob_id=str(file_id), session_id=session_id, kind=kind,
                            attempt=attempt, error=str(exc)[:200])
            # Jitter: two writers that failed together must not retry together.
            time.sleep(pause + random.uniform(0, pause))
        raise AssertionError("unreachable")

    def _discard(self, file_id: ObjectId) -> None:
        """Remove whatever a failed write left of ``file_id`` (best effort)."""
        for _ in range(3):
            try:
                self.db["audio.chunks"].delete_many({"files_id": file_id})
                self.files.delete_one({"_id": file_id})
                return
            except pymongo.errors.PyMongoError:
                time.sleep(0.2)

    @staticmethod
    def new_id() -> str:
        """Reserve an id for a blob that will be written later (see :meth:`put`)."""
        return str(ObjectId())

    def get(self, blob_id: str) -> bytes:
        """The whole blob. :raises KeyError: when it does not exist."""
        try:
            return self.bucket.open_download_stream(ObjectId(blob_id)).read()
        except (gridfs.errors.NoFile, InvalidId) as exc:
            raise KeyError(blob_id) from exc

    def wait(self, blob_id: str, timeout_s: float, *, stop: Callable[[], bool] | None = None,
             poll_s: float = 0.05) -> bytes:
        """The blob, waiting up to ``timeout_s`` for it to be written (another process
        stores it meanwhile). The one wait-for-a-blob loop; ``time.sleep`` yields to
        other greenlets in a gevent-patched process.

        :param stop: give up early once it returns True.
        :raises KeyError: it did not arrive in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.get(blob_id)
            except KeyError:
                if time.monotonic() >= deadline or (stop is not None and stop()):
                    raise
                time.sleep(poll_s)

    def open(self, blob_id: str) -> gridfs.GridOut:
        """A seekable reader of the blob, for streaming it in pieces.

        :raises KeyError: when it does not exist."""
        try:
            return self.bucket.open_download_stream(ObjectId(blob_id))
        except (gridfs.errors.NoFile, InvalidId) as exc:
            raise KeyError(blob_id) from exc

    def info(self, blob_id: str) -> BlobInfo | None:
        try:
            doc = self.files.find_one({"_id": ObjectId(blob_id)})
        except InvalidId:
            return None
        if doc is None:
            return None
        return BlobInfo(str(doc["_id"]), int(doc["length"]), dict(doc.get("metadata") or {}))

    def exists(self, blob_id: str) -> bool:
        return self.info(blob_id) is not None

    def delete(self, blob_id: str) -> None:
        try:
            self.bucket.delete(ObjectId(blob_id))
        except (gridfs.errors.NoFile, InvalidId):
            pass

    def for_session(self, session_id: str) -> list[BlobInfo]:
        """Every version stored for a session, oldest first."""
        docs = self.files.find({"metadata.session_id": session_id}).sort("uploadDate", 1)
        return [BlobInfo(str(d["_id"]), int(d["length"]), dict(d.get("metadata") or {})) for d in docs]

    def delete_older_than(self, cutoff: dt.datetime, keep_sessions: set[str]) -> int:
        """Retention: delete blobs uploaded before ``cutoff`` unless their session is live."""
        deleted = 0
        for doc in self.files.find({"uploadDate": {"$lt": cutoff}}, {"metadata.session_id": 1}):
            if (doc.get("metadata") or {}).get("session_id") in keep_sessions:
                continue
            self.delete(str(doc["_id"]))
            deleted += 1
        return deleted

    def ping(self) -> None:
        """Raise if MongoDB does not answer, or if the embedded store is at its disk or memory
        limit (:class:`StoreLimitReached`, with the reason: ``/health`` shows it)."""
        self.client.admin.command("ping")
        self._limit_read = (0.0, "")
        reason = self.limit_reason()
        if reason:
            raise StoreLimitReached(reason)

    def limit_reason(self) -> str:
        """Why the store refuses new audio (:mod:`g4l.store.guard`), or ``""``. Read at most
        every ``LIMITS_CACHE_S``; a store without the guard (``MONGO_URL``) has no state."""
        expires, reason = self._limit_read
        if time.monotonic() >= expires:
            with pymongo.timeout(LIMITS_TIMEOUT_S):  # never a request's whole store timeout
                doc = self._limits.find_one({"_id": LIMITS_ID}, {"state": 1, "reason": 1})
            reason = str(doc.get("reason") or doc["state"]) if doc and doc.get("state") not in (None, "ok") else ""
            self._limit_read = (time.monotonic() + LIMITS_CACHE_S, reason)
        return reason
