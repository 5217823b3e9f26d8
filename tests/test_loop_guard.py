"""The web process writes an upload to GridFS one 1 MiB chunk per insert, so the write
waits for the store between chunks instead of encoding the whole file in one message on
the event loop (g4l/web/loop_guard.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from gridfs.synchronous import grid_file
from pymongo import monitoring

from g4l.store.blobs import CHUNK_BYTES, BlobStore
from g4l.web.loop_guard import UPLOAD_BATCH_BYTES, limit_gridfs_upload_batches


class ChunkInserts(monitoring.CommandListener):
    """Counts the insert commands sent to a GridFS chunks collection, while recording."""

    def __init__(self) -> None:
        self.recording = False
        self.inserts: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        chunks = str(event.command.get("insert", "")).endswith(".chunks")
        if self.recording and event.command_name == "insert" and chunks:
            self.inserts.append(len(event.command.get("documents", [])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


LISTENER = ChunkInserts()
monitoring.register(LISTENER)  # clients created from here on report to it


@pytest.fixture
def upload_buffer() -> Iterator[None]:
    saved = grid_file._UPLOAD_BUFFER_SIZE
    yield
    grid_file._UPLOAD_BUFFER_SIZE = saved


def _put_counting(blobs: BlobStore, data: bytes) -> tuple[str, list[int]]:
    LISTENER.inserts, LISTENER.recording = [], True
    try:
        blob = blobs.put(data, session_id="s", kind="input")
    finally:
        LISTENER.recording = False
    return blob, LISTENER.inserts


def test_an_upload_is_written_one_chunk_per_insert_in_the_web_process(mongo_server, upload_buffer) -> None:
    blobs = BlobStore(mongo_server.url, db_name="g4l_loop_guard")
    data = os.urandom(3 * CHUNK_BYTES + 1000)  # 4 chunks
    blob, inserts = _put_counting(blobs, data)
    assert inserts == [4]  # pymongo's default: the whole file in one message
    assert blobs.get(blob) == data

    assert limit_gridfs_upload_batches() is True
    assert grid_file._UPLOAD_BUFFER_SIZE == UPLOAD_BATCH_BYTES
    blob, inserts = _put_counting(blobs, data)
    assert inserts == [1, 1, 1, 1]
    assert blobs.get(blob) == data  # the same file, read back whole
    blobs.client.drop_database("g4l_loop_guard")
