"""How soon new audio is playable over HLS: first generated audio -> first playable segment.

Starts its own server (debug model), then measures, from the moment a generation is
finished (the job record's ``finished`` time, written by the worker) to the moment a
playlist poll first lists a segment holding that audio (a non-silent segment, decoded by
ffmpeg):

- a station's first generation (its stream starts silent);
- a session continue heard on a listen link (preroll off, so the stream is silent until
  the continuation arrives), three times.

Usage: scripts/bench_hls
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, install_alarm, make_wav, percentile  # noqa: E402

import numpy as np  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from g4l.hls.watch import PlaylistWatcher, decode_ts  # noqa: E402
from plugin_protocol.client import DeviceClient  # noqa: E402


def first_audible(watcher: PlaylistWatcher, timeout: float = 60.0) -> float:
    """Wall time at which a segment with sound was first listed."""
    checked: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for seg in watcher.ordered():
            if seg.sequence in checked:
                continue
            checked.add(seg.sequence)
            if np.abs(decode_ts(seg.data)).max() > 1e-3:
                return seg.seen_at
        time.sleep(0.05)
    raise TimeoutError("no audible segment")


def main() -> int:
    install_alarm(600)
    with Server(extra_env={"G4L_HLS_SESSION_PREROLL_S": "0"}) as server:
        r = redis.Redis.from_url(server.redis_url, decode_responses=True)
        # --- station
        requested = time.time()
        st = requests.post(f"{server.url}/api/v1/stations", json={"prompt": "bench", "model": "debug"},
                           timeout=10).json()
        watcher = PlaylistWatcher(server.url + st["playlist_url"], interval=0.1).start()
        heard = first_audible(watcher)
        finished = 0.0
        while not finished:  # the worker's finish time of the station's first generation
            finished = float(r.hget(f"g4l:station:{st['station_id']}", "last_generated_at") or 0)
            time.sleep(0.1)
        watcher.stop()
        station_latency = heard - finished
        requests.delete(f"{server.url}/api/v1/stations/{st['station_id']}", timeout=10)
        print(f"station: request -> first audible segment {heard - requested:.2f} s; "
              f"first generated audio -> first playable segment {station_latency:.2f} s", flush=True)

        # --- sessions
        session_latencies = []
        with DeviceClient(server.url, timeout=120) as client:
            for i in range(3):
                sid = client.bang(make_wav(8, seed=i), model_name="debug", prompt_duration=4).session_id
                link = requests.post(f"{server.url}/api/v1/sessions/{sid}/listen", timeout=10).json()
                watcher = PlaylistWatcher(server.url + link["playlist_url"], interval=0.1).start()
                time.sleep(1.0)  # the stream is up and silent
                client.continue_(sid)
                job_id = r.hget(f"g4l:session:{sid}", "job_id")
                finished = float(r.hget(f"g4l:job:{job_id}", "finished") or 0)
                heard = first_audible(watcher)
                watcher.stop()
                session_latencies.append(heard - finished)
                print(f"session {i + 1}: continue finished -> first playable segment {heard - finished:.2f} s",
                      flush=True)
        print(f"first generated audio -> first playable segment: station {station_latency:.2f} s, "
              f"session median {percentile(session_latencies, 50):.2f} s "
              f"(max {max(session_latencies):.2f} s; segments are 2 s, the old avatar service took 4-6 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
