#!/usr/bin/env python3
"""A new station's time to music: from its first job's start to the first audible HLS
segment listed in its playlist, with streamed generation on (the first stretch is played
while it is generated) and off (``G4L_STREAM_CHUNK_S=0``: the first audio comes from the
stored chunk, after the job completes).

Starts the whole server with the tiny model (``G4L_MODELS=debug``, one worker,
``G4L_MAX_BATCH`` 8), creates ``--stations`` stations one after another (each stopped
once measured), and per station prints the time from its first job's ``started`` notice
to the first segment with sound (a playlist poller decoding each new segment with ffmpeg)
and to the job's ``completed`` notice. ``--rtf`` sets ``G4L_DEBUG_MODEL_RTF`` (the tiny
model held to that real-time factor, 0: unpaced). Printed, never asserted; the last line
reads ``station first audible segment: streamed A s (median), unstreamed B s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402  (re-execs under the venv)
import numpy as np  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from g4l.hls.watch import PlaylistWatcher, decode_ts  # noqa: E402


def _audible(data: bytes) -> bool:
    x = decode_ts(data)
    return bool(x.size) and float(np.sqrt(np.mean(x ** 2))) > 1e-3


def one_station(url: str, r: redis.Redis, prompt: str) -> tuple[float, float]:
    """(first job started -> first audible segment, -> job completed), seconds."""
    seen: list[tuple[float, dict]] = []
    stop = threading.Event()
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("g4l:notices")

    def listen() -> None:
        while not stop.is_set():
            m = pubsub.get_message(timeout=0.1)
            if m and m["type"] == "message":
                seen.append((time.time(), json.loads(m["data"])))

    threading.Thread(target=listen, daemon=True).start()
    resp = requests.post(f"{url}/api/v1/stations", json={"model": "debug", "prompt": prompt}, timeout=10)
    resp.raise_for_status()
    st = resp.json()
    watcher = PlaylistWatcher(url + st["playlist_url"], interval=0.05).start()
    decoded: dict[str, bool] = {}
    try:
        deadline = time.time() + 120
        started = completed = heard = None
        while time.time() < deadline and (heard is None or completed is None):
            time.sleep(0.05)
            if started is None:
                for t, n in list(seen):
                    if n.get("type") == "started" and n.get("session_id") == st["station_id"]:
                        started, job = t, n["job_id"]
                        break
            if started is not None and completed is None:
                completed = next((t for t, n in list(seen) if n.get("type") == "completed"
                                  and n.get("job_id") == job), None)
            if heard is None:
                for seg in watcher.ordered():
                    if seg.uri not in decoded:
                        decoded[seg.uri] = _audible(seg.data)
                    if decoded[seg.uri]:
                        heard = seg.seen_at
                        break
        if started is None or heard is None or completed is None:
            raise RuntimeError("the station did not start playing within 120 s")
        return heard - started, completed - started
    finally:
        watcher.stop()
        stop.set()
        requests.delete(f"{url}/api/v1/stations/{st['station_id']}", timeout=10)


def run(streamed: bool, stations: int, rtf: float) -> list[float]:
    env = {"G4L_MAX_BATCH": "8", "G4L_WORKERS": "1", "G4L_DEBUG_MODEL_RTF": str(rtf)}
    if not streamed:
        env["G4L_STREAM_CHUNK_S"] = "0"
    label = "streamed" if streamed else "unstreamed"
    heard: list[float] = []
    with common.Server(extra_env=env) as server:
        r = redis.Redis.from_url(server.redis_url, decode_responses=True)
        for i in range(stations):
            h, c = one_station(server.url, r, f"bench station {i}")
            heard.append(h)
            print(f"  {label} station {i + 1}: first job started -> first audible segment {h:5.2f} s; "
                  f"job completed after {c:5.2f} s", flush=True)
    return heard


def main() -> None:
    common.install_term_handler()
    common.install_alarm(900)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=3)
    parser.add_argument("--rtf", type=float, default=2.0, help="G4L_DEBUG_MODEL_RTF (0: unpaced)")
    args = parser.parse_args()
    print(f"tiny model, G4L_MAX_BATCH=8, G4L_DEBUG_MODEL_RTF={args.rtf:g}, first stretch 8 s", flush=True)
    on = run(True, args.stations, args.rtf)
    off = run(False, args.stations, args.rtf)
    print(f"station first audible segment: streamed {statistics.median(on):.2f} s (median), "
          f"unstreamed {statistics.median(off):.2f} s")


if __name__ == "__main__":
    main()
