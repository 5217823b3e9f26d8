"""The embedded store's memory under sustained GridFS writes: MB written vs its RSS.

Starts secantusd-py as the launcher starts it (``g4l.embedded.start_mongo``: bounded cache,
allocator settings, short oplog), or with ``--unbounded`` as it was started before issue 22
(no cache size, default allocator, default oplog), then writes ``--mb`` of random audio-sized
files through pymongo's GridFS from ``--threads`` threads (g4l's 1 MB chunks), and prints
one line every ``--every`` MB: written, RSS, peak RSS, size on disk, throughput. Ends with a
restart of the store and a read-back of one file (the data is durable as before).

    scripts/bench_store_memory                # the launcher's settings, 600 MB
    scripts/bench_store_memory --unbounded    # before: the store as it was started
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_venv  # noqa: E402

ensure_venv()

import gridfs  # noqa: E402
import pymongo  # noqa: E402

from g4l import embedded  # noqa: E402
from g4l.store.blobs import CHUNK_BYTES  # noqa: E402


def start_unbounded(data_dir: Path, port: int = 0) -> embedded.ManagedProcess:
    """secantusd-py with the arguments the launcher gave it before the bound (for 'before')."""
    port = port or embedded.free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [embedded._secantus_binary(), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(data_dir / "wiredtiger"), "--log-level", "WARNING"]
    env = {k: v for k, v in os.environ.items() if k not in embedded.STORE_ENV}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=data_dir, env=env,
                            start_new_session=True)
    embedded.wait_for_port(port, proc, 60, "secantusd-py")
    return embedded.ManagedProcess("mongo", proc, f"mongodb://127.0.0.1:{port}/", port)


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=600, help="MB to write in all")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--file-mb", type=int, default=5)
    ap.add_argument("--every", type=int, default=50, help="print a line every this many MB")
    ap.add_argument("--memory-mb", type=int, default=512, help="G4L_STORE_MEMORY_MB for the bounded store")
    ap.add_argument("--unbounded", action="store_true", help="start the store as before the bound")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="g4l-store-mem-"))
    start = (lambda port=0: start_unbounded(tmp / "mongo", port)) if args.unbounded else \
        (lambda port=0: embedded.start_mongo(tmp / "mongo", port or None, memory_mb=args.memory_mb))
    store = start()
    pid = store.proc.pid
    mode = "unbounded (before)" if args.unbounded else f"bounded, G4L_STORE_MEMORY_MB={args.memory_mb}"
    print(f"store: {mode}; pid {pid}; {args.threads} threads writing {args.file_mb} MB files, "
          f"{CHUNK_BYTES // 1024} kB chunks")
    print(f"{'written MB':>10} {'RSS MB':>8} {'peak MB':>8} {'disk MB':>8} {'MB/s':>6}")
    print(f"{0:>10} {embedded.rss_mb(pid) or 0:>8.0f} {peak_mb(pid):>8.0f} {disk_mb(tmp):>8.0f}")
    client: pymongo.MongoClient = pymongo.MongoClient(store.url)
    bucket = gridfs.GridFSBucket(client.bench, chunk_size_bytes=CHUNK_BYTES)
    blob = os.urandom(args.file_mb * 1024 * 1024)
    lock = threading.Lock()
    state = {"claimed": 0, "written": 0, "next": args.every, "first_id": None}
    began = time.monotonic()

    def writer() -> None:
        while True:
            with lock:
                if state["claimed"] >= args.mb:
                    return
                state["claimed"] += args.file_mb
            file_id = bucket.upload_from_stream("f", blob)
            with lock:
                state["first_id"] = state["first_id"] or file_id
                state["written"] += args.file_mb
                if state["written"] >= state["next"]:
                    state["next"] += args.every
                    rate = state["written"] / (time.monotonic() - began)
                    print(f"{state['written']:>10} {embedded.rss_mb(pid) or 0:>8.0f} {peak_mb(pid):>8.0f} "
                          f"{disk_mb(tmp):>8.0f} {rate:>6.1f}", flush=True)

    threads = [threading.Thread(target=writer) for _ in range(args.threads)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2)
        print(f"end: {state['written']} MB written in {time.monotonic() - began:.0f} s; RSS "
              f"{embedded.rss_mb(pid) or 0:.0f} MB, peak {peak_mb(pid):.0f} MB, disk {disk_mb(tmp):.0f} MB")
        client.close()
        store.stop()
        store = start(store.port)
        client = pymongo.MongoClient(store.url)
        back = gridfs.GridFSBucket(client.bench).open_download_stream(state["first_id"]).read()
        print(f"after a restart: RSS {embedded.rss_mb(store.proc.pid) or 0:.0f} MB; first file read back "
              f"{'whole' if back == blob else 'DIFFERENT'}; disk {disk_mb(tmp):.0f} MB")
        client.close()
    finally:
        store.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
