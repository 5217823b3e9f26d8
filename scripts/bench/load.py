"""``scripts/load``: the whole server under a long load, as devices make it.

200 idle sockets (a status round trip each every 5 s) and 10 devices playing bang ->
continue -> retry for 10 minutes with the tiny model (tests/device/load.mjs, Node's
socket.io-client), plus two slow clients beside them: one uploading a 200 MB message at
20 KB/s (its frame header declares it all) and one that sends a bang and never reads a
byte of what comes back. Prints results delivered / requested, errors by code, the idle
sockets' round-trip p99, the queue wait p99, what the slow clients cost, and the memory
(RSS) of every process of the server (with the data Redis holds and its keys): idle at the
start, then under load at 1 and 5 minutes, every 10 minutes and in the load's last minute, then idle after it, with each
process's change from 5 minutes to the last minute.

A process's RSS under load is read every 2 s, and a mark reports the most it held in the
minute before the mark: one reading would say whether a 20 MB result or upload happened
to be in hand at that instant (a 40 MB Redis or a 200 MB web process swings by half),
not whether the process grows. The last mark is taken while the devices still play,
like the others (the web processes' buffers empty once they stop). A second table gives
the median of the same minute's readings: the peak of a minute is the largest moment in
it, which a longer run tends to catch higher even when nothing grows (the embedded store
alone, writing 3 GB: RSS 89-122 MB at each 250 MB, peaks 187 -> 224 MB); the median says
whether what a process usually holds grows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Server, install_alarm, install_term_handler, make_wav  # noqa: E402

HARNESS = ROOT / "tests" / "device" / "load.mjs"


def rss_by_process(root_pids: list[int]) -> dict[str, int]:
    """RSS in MB of every process under ``root_pids`` (the launcher, the stores), by role."""
    out: dict[str, int] = {}
    pending = list(root_pids)
    while pending:
        pid = pending.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        pending += [int(c) for c in children]
        role = next((r for r in ("g4l.launcher", "g4l.web", "g4l.worker", "g4l.hls", "redis-server", "secantusd",
                                 "nginx: master", "nginx: worker", "ffmpeg") if r in cmd), cmd[:30])
        name, n = role, 1
        while name in out:
            n += 1
            name = f"{role}#{n}"
        out[name] = rss_kb // 1024
    return out


def redis_data(url: str) -> dict[str, int]:
    """What Redis holds, in MB and keys: ``redis data`` (``used_memory``: its data, which the
    RSS above includes with what its allocator keeps) and ``redis keys``. Read as RSS is,
    so a mark is the peak of its minute; empty when Redis does not answer."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        used = int(client.info("memory")["used_memory"])
        return {"redis data": used // (1024 * 1024), "redis keys": int(client.dbsize())}
    except (redis.RedisError, OSError, KeyError, ValueError):
        return {}


def peak_of(readings: list[tuple[float, dict[str, int]]], since: float, until: float) -> dict[str, int]:
    """Each process's largest RSS among the readings taken in ``[since, until]`` (s after start)."""
    peak: dict[str, int] = {}
    for at, sample in readings:
        if since <= at <= until:
            for name, mb in sample.items():
                peak[name] = max(peak.get(name, 0), mb)
    return peak


def median_of(readings: list[tuple[float, dict[str, int]]], since: float, until: float) -> dict[str, int]:
    """Each process's median RSS among the readings taken in ``[since, until]``."""
    values: dict[str, list[int]] = {}
    for at, sample in readings:
        if since <= at <= until:
            for name, mb in sample.items():
                values.setdefault(name, []).append(mb)
    return {name: int(statistics.median(mbs)) for name, mbs in values.items()}


def _socketio_websocket(port: int) -> socket.socket:
    """A raw TCP socket through the Engine.IO websocket handshake and the Socket.IO connect."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    _frame(sock, b"40")  # Socket.IO connect to the default namespace
    return sock


def _frame(sock: socket.socket, payload: bytes, declared: int | None = None) -> None:
    """A masked text frame; with ``declared`` only its header (for that length) is sent."""
    length = len(payload) if declared is None else declared
    header = bytes([0x81]) + (bytes([0x80 | length]) if length < 126 else
                              bytes([0x80 | 126]) + length.to_bytes(2, "big") if length < 65536 else
                              bytes([0x80 | 127]) + length.to_bytes(8, "big"))
    mask = b"\0\0\0\0"  # a zero mask: the payload goes as it is
    sock.sendall(header + mask + (payload if declared is None else b""))


class SlowUploader(threading.Thread):
    """Declares a 200 MB message and sends it at ``rate`` bytes/s until stopped."""

    def __init__(self, port: int, rate: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        self.sent = 0
        self.outcome = "still sending"
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            sock = _socketio_websocket(self.port)
            _frame(sock, b"", declared=200 * 1024 * 1024)
            sock.sendall(b'42["process_audio_request",{"audio_data":"')
            chunk = b"A" * (self.rate // 10)
            while not self.stopped.wait(0.1):
                sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError as exc:
            self.outcome = f"let go by the server after {self.sent // 1024} KB ({type(exc).__name__})"


class NeverReader(threading.Thread):
    """Sends a bang and never reads: its result piles up in socket buffers, not in the server."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.outcome = "sent a bang, reading nothing"

    def run(self) -> None:
        try:
            sock = _socketio_websocket(self.port)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            body = json.dumps(["process_audio_request", {"audio_data": base64.b64encode(make_wav(6)).decode(),
                                                         "model_name": "debug", "prompt_duration": 4}])
            _frame(sock, b"42" + body.encode())
            self.sock = sock  # kept open, never read
        except OSError as exc:
            self.outcome = f"failed: {exc}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--active", type=int, default=10)
    ap.add_argument("--web-processes", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    node = shutil.which("node")
    if node is None or not (HARNESS.parent / "node_modules" / "socket.io-client").is_dir():
        print("needs node and tests/device/node_modules: run scripts/install.sh test", file=sys.stderr)
        return 2
    install_alarm(int(args.minutes * 60) + 900)
    install_term_handler()
    env = {"G4L_WEB_PROCESSES": str(args.web_processes), "G4L_WORKERS": str(args.workers),
           "G4L_HLS_ENABLED": "true"}
    with Server(extra_env=env) as server:
        assert server.proc is not None
        wav = server.tmp / "in.wav"
        wav.write_bytes(make_wav(6))
        roots = [server.proc.pid, *(s.proc.pid for s in server.stores)]
        time.sleep(5)  # let the processes settle before the first memory reading
        rss = {"start": {**rss_by_process(roots), **redis_data(server.redis_url)}}
        usual = {"start": rss["start"]}
        uploader, never = SlowUploader(server.port), NeverReader(server.port)
        uploader.start()
        never.start()
        started = time.monotonic()
        proc = subprocess.Popen([node, str(HARNESS), server.url, str(wav), str(args.idle), str(args.active),
                                 str(int(args.minutes * 60))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Memory once warm (after a minute: every code path taken, caches filled), at 5 minutes
        # (the steady state the last minute is compared with), every 10 minutes after, and in
        # the load's last minute: each the peak of the minute before it.
        load_s = args.minutes * 60
        marks = [(f"{m} min", m * 60.0) for m in (1, 5, *range(10, 600, 10)) if m * 60 < load_s - 90]
        marks.append(("last min", load_s - 15))
        readings: list[tuple[float, dict[str, int]]] = []
        for name, at in marks:
            while time.monotonic() - started < at and proc.poll() is None:
                readings.append((time.monotonic() - started,
                                 {**rss_by_process(roots), **redis_data(server.redis_url)}))
                time.sleep(2.0)
            if proc.poll() is not None:
                break
            rss[name] = peak_of(readings, at - 60, at)
            usual[name] = median_of(readings, at - 60, at)
        out, err = proc.communicate()
        took = time.monotonic() - started
        uploader.stopped.set()
        time.sleep(5)
        rss["idle after"] = {**rss_by_process(roots), **redis_data(server.redis_url)}
        usual["idle after"] = rss["idle after"]
        if proc.returncode != 0:
            print(err[-2000:], file=sys.stderr)
            return 1
        r = json.loads(out.strip().splitlines()[-1])
    print(f"load: {args.idle} idle sockets + {args.active} devices (bang -> continue -> retry), "
          f"{args.web_processes} web process(es), {args.workers} worker(s), {took / 60:.1f} min")
    print(f"results delivered / requested   {r['delivered']} / {r['requested']}")
    print(f"errors                          {r['errors'] or 'none'}; socket disconnects {r['disconnects']}")
    print(f"idle round trips                {r['ping_count']}: p50 {r['ping_p50_ms']:.1f} ms, "
          f"p99 {r['ping_p99_ms']:.1f} ms, max {r['ping_max_ms']:.1f} ms")
    print(f"queue wait                      p50 {r['queue_wait_p50_s']:.1f} s, p99 {r['queue_wait_p99_s']:.1f} s; "
          f"request -> result p50 {r['step_p50_s']:.1f} s, p99 {r['step_p99_s']:.1f} s")
    print(f"slow uploader (200 MB declared) {uploader.outcome}, {uploader.sent / 1e6:.1f} MB sent; "
          f"never-reading client: {never.outcome}")
    print_rss("RSS MB (under load: the peak of the minute before each mark)", rss)
    print_rss("RSS MB (under load: the median of the same minutes)", usual)
    return 0 if r["delivered"] == r["requested"] else 1


def print_rss(title: str, marks: dict[str, dict[str, int]]) -> None:
    """One line per process: its MB at each mark, and the change from 5 minutes to the last."""
    print(f"{title}  " + " -> ".join(marks))
    for name in sorted(set().union(*marks.values())):
        line = f"  {name:<22} " + " -> ".join(f"{sample.get(name, '-'):>5}" for sample in marks.values())
        at5, end = marks.get("5 min", {}).get(name), marks.get("last min", {}).get(name)
        if at5 and end:  # the target: flat after 5 minutes (within 10 % of the end)
            line += f"   (5 min -> last min {100 * (end - at5) / end:+.0f} %)"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
