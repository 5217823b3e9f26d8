"""The embedded store is bounded: its RSS stays under ``G4L_STORE_MEMORY_MB`` under
sustained GridFS writes, and at its disk or memory limit it refuses new audio (or is
restarted) with a clear reason that ``/health`` shows, never dying silently.

Runs against the store as scripts/install.sh leaves it (with scripts/patches/ applied)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import ROOT, make_wav

from g4l import embedded
from g4l.settings import Settings
from g4l.store.blobs import LIMITS_CACHE_S, BlobStore, StoreLimitReached
from g4l.store.guard import StoreGuard
from g4l.web.health import _check
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError

FILE_MB = 5
WRITERS = 4


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


@pytest.mark.slow
def test_sustained_gridfs_writes_keep_the_store_under_its_memory_bound(tmp_path) -> None:
    bound = Settings().store_memory_mb  # what the launcher starts it with
    store = embedded.start_mongo(tmp_path / "mongo", memory_mb=bound)
    blobs = BlobStore(store.url, "bound_test")
    total_mb = 300
    samples: list[tuple[int, float]] = []  # (MB written so far, RSS MB)
    written = [0]
    lock = threading.Lock()
    done = threading.Event()
    try:
        def sample() -> None:
            while not done.is_set():
                rss = embedded.rss_mb(store.proc.pid)
                if rss is not None:
                    samples.append((written[0], rss))
                time.sleep(0.1)

        def write(n: int) -> None:
            for i in range(total_mb // FILE_MB // WRITERS):
                blobs.put(os.urandom(FILE_MB * 2**20), session_id=f"s{n}", kind="output", i=i)
                with lock:
                    written[0] += FILE_MB

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        writers = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        done.set()
        sampler.join()
        assert written[0] == total_mb
        peak = _peak_mb(store.proc.pid)
        hint = "is scripts/patches/secantusdb-bounded-memory.patch applied (scripts/install.sh)?"
        # Under the bound the whole time (the kernel's own high-water mark, not our samples).
        assert peak < bound, f"store RSS peaked at {peak:.0f} MB, over its {bound} MB bound; {hint}"
        # Flat: what the store holds does not grow with what has been written.
        early = max(rss for mb, rss in samples if mb <= total_mb // 3)
        late = max(rss for mb, rss in samples if mb >= 2 * total_mb // 3)
        assert late < early + 100, f"RSS grew with writes: {early:.0f} MB in the first third, {late:.0f} MB " \
                                   f"in the last; {hint}"
        first = blobs.for_session("s0")[0]
        blobs.client.close()
        # Durable as before: a clean restart on the same data has every file.
        store.stop()
        store = embedded.start_mongo(tmp_path / "mongo", port=store.port, memory_mb=bound)
        blobs = BlobStore(store.url, "bound_test")
        assert len(blobs.get(first.blob_id)) == FILE_MB * 2**20
        assert sum(len(blobs.for_session(f"s{n}")) for n in range(WRITERS)) == total_mb // FILE_MB
    finally:
        done.set()
        blobs.client.close()
        store.stop()


def test_under_its_disk_floor_the_store_refuses_new_audio_with_the_reason_and_health_shows_it(
        tmp_path, mongo_server) -> None:
    db = "guard_disk_test"  # its own database: the limit state must not reach other tests
    guard = StoreGuard(mongo_server.url, db, tmp_path, memory_mb=100_000, min_free_mb=2**40)
    blobs = BlobStore(mongo_server.url, db)
    try:
        kept = blobs.put(b"x" * 1000, session_id="s", kind="input")
        guard.tick(mongo_server, now=1.0)
        assert guard.state == "disk_full"
        time.sleep(LIMITS_CACHE_S)  # writers read the state at most this often
        with pytest.raises(StoreLimitReached, match="disk is nearly full") as refused:
            blobs.put(b"y" * 1000, session_id="s", kind="input")
        assert refused.value.code == "STORE_UNAVAILABLE"
        assert [b.blob_id for b in blobs.for_session("s")] == [kept]  # nothing was written
        assert blobs.get(kept) == b"x" * 1000  # reads go on
        health = _check(blobs.ping)
        assert health.startswith("down: StoreLimitReached: the audio store's disk is nearly full"), health
        guard.min_free_mb = 0  # space freed
        guard.tick(mongo_server, now=10.0)
        assert guard.state == "ok"
        assert _check(blobs.ping) == "live"
        blobs.put(b"z" * 1000, session_id="s", kind="input")
        assert len(blobs.for_session("s")) == 2
    finally:
        guard.close()
        blobs.client.drop_database(db)
        blobs.client.close()


def test_a_store_over_its_memory_limit_is_stopped_cleanly_says_why_and_keeps_its_data(tmp_path) -> None:
    store = embedded.start_mongo(tmp_path / "mongo")
    db = "guard_memory_test"
    blobs = BlobStore(store.url, db)
    guard = StoreGuard(store.url, db, tmp_path, memory_mb=1, min_free_mb=0)  # any store is over 1 MB
    try:
        kept = blobs.put(b"a" * 3_000_000, session_id="s", kind="output")
        guard.tick(store, now=1.0)
        assert guard.state == "ok"  # one reading over is not enough: a peak is not a limit
        guard.tick(store, now=4.0)
        assert guard.state == "memory_limit"
        assert store.proc.wait(30) == 0  # a clean stop (SIGTERM), not a kill
        # The launcher starts it again on its port; until the guard sees it under its limit,
        # /health says why.
        store = embedded.start_mongo(tmp_path / "mongo", port=store.port)
        health = _check(blobs.ping)
        assert "over G4L_STORE_MEMORY_MB=1" in health and health.startswith("down: StoreLimitReached"), health
        guard.memory_mb = 100_000
        guard.tick(store, now=8.0)
        assert guard.state == "ok"
        assert _check(blobs.ping) == "live"
        assert blobs.get(kept) == b"a" * 3_000_000
    finally:
        guard.close()
        blobs.client.close()
        store.stop()


@pytest.mark.slow
def test_the_launcher_says_its_store_is_at_its_disk_floor_health_shows_it_and_writes_are_refused(tmp_path) -> None:
    port = embedded.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGO_URL")}
    env.update({"G4L_HOST": "127.0.0.1", "G4L_PORT": str(port), "G4L_MODELS": "debug", "G4L_DATA_DIR": str(tmp_path),
                "G4L_HLS_ENABLED": "false", "G4L_TORCH_THREADS": "1", "G4L_RATE_LIMIT_PER_MINUTE": "0",
                # Localhost mode off: its fixed ports (8005, 8002) may be another test's.
                "G4L_JERRY_PORT": "0", "G4L_TERRY_PORT": "0",
                "G4L_STORE_MIN_FREE_MB": str(2**40)})  # more than any disk has: the floor is reached at once
    proc = subprocess.Popen([sys.executable, "-m", "g4l.launcher"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "server.log", "ab"), text=True)
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip("\n"))
            if "NOT READY" in line or line.startswith("g4l ready on"):
                seen.set()

    threading.Thread(target=pump, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert seen.wait(180), (tmp_path / "server.log").read_text()[-3000:]
        assert f"g4l running on {url} but NOT READY: the audio store's disk is nearly full" in lines[0], lines
        resp = requests.get(url + "/health", timeout=10)
        assert resp.status_code == 503, resp.text
        assert resp.json()["mongodb"].startswith("down: StoreLimitReached: the audio store's disk is nearly full")
        with DeviceClient(url, timeout=60) as c:
            since = c.mark()
            c.emit(events.UPDATE_CROPPED_AUDIO, {"audio_data": base64.b64encode(make_wav(2)).decode()})
            with pytest.raises(ProtocolError) as refused:
                c.wait_for(events.UPDATE_CROPPED_AUDIO_COMPLETE, since, timeout=60)
        assert refused.value.code == "STORE_UNAVAILABLE", refused.value.payload
        assert "G4L_STORE_MIN_FREE_MB" in refused.value.payload["message"], refused.value.payload
        assert "embedded store's disk is nearly full" in (tmp_path / "server.log").read_text()
        time.sleep(3)
        assert proc.poll() is None  # it keeps serving
    finally:
        proc.terminate()
        proc.wait(90)
