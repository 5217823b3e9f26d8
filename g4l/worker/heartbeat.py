"""A worker's heartbeat: a Redis key that expires unless renewed, read by /health and by
recovery (a worker whose key expired is dead, and its job is taken back)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import redis

from g4l import keys
from g4l.store import heartbeats


class Heartbeat:
    """Renews ``g4l:worker:<name>`` every ``interval`` seconds from a daemon thread, so it
    keeps beating while the main thread is busy inside the model."""

    def __init__(self, r: redis.Redis, name: str, interval: float, ttl: float,
                 describe: Callable[[], dict]) -> None:
        self.r = r
        self.name = name
        self.interval = interval
        self.ttl = ttl
        self.describe = describe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        # describe() and the write happen together: a tick that read the old state can
        # not land after a refresh() that wrote the new one.
        self._write_lock = threading.Lock()
        self.started = time.time()

    def beat(self) -> None:
        with self._write_lock:
            if self._stop.is_set():
                return  # stopped: the key is gone for good
            info = {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": self.started, "at": time.time(), **self.describe()}
            heartbeats.publish(self.r, keys.WORKERS, keys.worker, self.name, info, self.ttl)

    def refresh(self) -> None:
        """Beat now because what ``describe`` returns changed; a Redis error is left to
        the next regular beat rather than failing the caller."""
        try:
            self.beat()
        except redis.RedisError:
            pass

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()  # a missed beat is retried next tick; recovery tolerates one

    def stop(self) -> None:
        with self._write_lock:
            self._stop.set()
            try:
                heartbeats.withdraw(self.r, keys.WORKERS, keys.worker, self.name)
            except redis.RedisError:
                pass
