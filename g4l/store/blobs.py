"""Every audio version of every session, as a GridFS file with metadata.

Kinds: ``input`` (what a client sent for a generation), ``output`` (a generation's result
as the client receives it), ``crop`` (a client's trimmed audio), ``upload`` (a chunked
restore) and ``prompt`` (the model-ready prompt window, kept so a job can start before
its full input is stored).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import gridfs
import pymongo
from bson import ObjectId
from bson.errors import InvalidId

#: Bigger chunks than GridFS's 255 kB default: fewer documents per 50 MB file.
CHUNK_BYTES = 1024 * 1024


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

    def ensure_indexes(self) -> None:
        """Indexes for the session lookups and the retention sweep."""
        self.files.create_index([("metadata.session_id", 1), ("uploadDate", 1)])

    def put(self, data: bytes, *, session_id: str, kind: str, blob_id: str | None = None,
            **metadata: Any) -> str:
        """Store ``data``; returns its id. ``blob_id`` lets a caller reserve the id first."""
        meta = {"session_id": session_id, "kind": kind, "created": dt.datetime.now(dt.timezone.utc), **metadata}
        file_id = ObjectId(blob_id) if blob_id else ObjectId()
        self.bucket.upload_from_stream_with_id(file_id, f"{session_id}/{kind}", data, metadata=meta)
        return str(file_id)

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
        """Raise if MongoDB does not answer."""
        self.client.admin.command("ping")
