"""Keep a store client's big writes from holding the web node's event loop.

pymongo's GridFS writer gathers a file's chunks into one ``insert_many`` of up to 48 MB
(its ``_UPLOAD_BUFFER_SIZE``) and encodes it in C in one go: storing a client's 20 MB
upload held every socket of the process for 77 ms, a 61 MB one for longer (measured with
gevent on the 2-core dev box, docs/architecture.md). Written one 1 MiB chunk per message,
each insert waits for the store's answer, which lets the other greenlets run; the longest
hold was 2 ms, and the whole write took less CPU. Reads of big results are cut the same
way in :mod:`g4l.jobs.delivery` (``PIECE_BYTES``).
"""

from __future__ import annotations

from g4l.log import get_logger

log = get_logger(__name__)

#: Bytes of chunks one GridFS insert carries in the web process (one chunk: CHUNK_BYTES).
UPLOAD_BATCH_BYTES = 1024 * 1024


def limit_gridfs_upload_batches(size: int = UPLOAD_BATCH_BYTES) -> bool:
    """Make this process's GridFS writes insert at most about ``size`` bytes of chunks per
    message. Returns False (and logs) when this pymongo has no such buffer to set, in
    which case writes stay as they were."""
    import importlib
    from types import ModuleType

    grid_file: ModuleType | None
    try:
        grid_file = importlib.import_module("gridfs.synchronous.grid_file")
    except ImportError:  # an older pymongo layout
        grid_file = None
    current = getattr(grid_file, "_UPLOAD_BUFFER_SIZE", None)
    if grid_file is None or not isinstance(current, int):
        log.warning("GridFS upload batches left as they are: this pymongo has no _UPLOAD_BUFFER_SIZE")
        return False
    grid_file.__dict__["_UPLOAD_BUFFER_SIZE"] = min(current, size)  # read at each flush (GridIn._flush_data)
    return True
