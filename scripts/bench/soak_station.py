"""A station left running: no gap in its playlist, buffer health, prompts rotated on time.

Starts its own server (debug model, default settings: 30 s generations, 45 s buffer
target), creates a station with three prompts rotating every ``--rotate`` seconds, and
listens for ``--minutes`` (default 10) like a player does: polls the playlist every second,
downloads every segment, checks every playlist version (m3u8), decodes a sample of segments
with ffmpeg, and samples the station status every 10 s. Prints a summary; exits 1 when
the playlist had a gap or a problem, or the station reported errors.

Usage: scripts/soak_station [--minutes 10] [--rotate 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, install_alarm  # noqa: E402

import requests  # noqa: E402

from g4l.hls.watch import PlaylistWatcher, decode_ts  # noqa: E402

PROMPTS = ["slow ambient pads", "fast drum and bass", "lofi hip hop beat"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rotate", type=float, default=60.0)
    args = parser.parse_args()
    seconds = args.minutes * 60
    install_alarm(int(seconds + 300))
    with Server() as server:
        started = time.time()
        st = requests.post(f"{server.url}/api/v1/stations", json={
            "prompts": PROMPTS, "rotate_every_s": args.rotate, "temperature": 1.0, "model": "debug"},
            timeout=10).json()
        url = f"{server.url}/api/v1/stations/{st['station_id']}"
        watcher = PlaylistWatcher(server.url + st["playlist_url"], interval=1.0).start()
        samples = []
        while time.time() - started < seconds:
            info = requests.get(url, timeout=10).json()
            samples.append((round(time.time() - started), info["buffered_seconds"], info["buffer_health"],
                            info["current_prompt"], info["generations"]))
            time.sleep(10)
        info = requests.get(url, timeout=10).json()
        watcher.stop()
        requests.delete(url, timeout=10)

    segments = watcher.ordered()
    timeline_gaps = []
    for a, b in zip(segments, segments[1:]):
        if a.program_date_time and b.program_date_time and not b.discontinuity:
            drift = (b.program_date_time - a.program_date_time).total_seconds() - a.duration
            if abs(drift) > 0.05:
                timeline_gaps.append((a.sequence, round(drift, 3)))
    undecodable = 0
    for seg in segments[::10]:
        try:
            decode_ts(seg.data)
        except RuntimeError:
            undecodable += 1
    healths = [s[2] for s in samples]
    print("== soak_station summary ==")
    print(f"ran {seconds / 60:.1f} min; station {st['station_id']}")
    print(f"segments seen: {len(segments)} (sequence {segments[0].sequence}..{segments[-1].sequence}), "
          f"playlist polls: {watcher.polls}")
    print(f"missing sequence numbers (gaps): {watcher.gaps()}")
    print(f"PDT timeline gaps: {timeline_gaps}; discontinuities: {sum(s.discontinuity for s in segments)}")
    print(f"playlist problems: {watcher.problems[:10]}")
    print(f"segments decoded (every 10th): {len(segments[::10])}, failures: {undecodable}")
    print(f"generations: {info['generations']}, generated {info['generated_seconds']:.0f} s, "
          f"played {info['played_seconds']:.0f} s, underruns: {info['underruns']}, errors: {info['errors']}")
    print("buffer health samples (t s, buffered s, health, prompt playing): "
          + "; ".join(f"{t}:{b:.0f}:{h}:{p}" for t, b, h, p, _g in samples))
    print(f"buffer health counts: { {h: healths.count(h) for h in sorted(set(healths))} }")
    print("rotations (scheduled audio s -> actual audio s, prompt):")
    for rot in info["rotations"]:
        print(f"  {rot['scheduled_audio_s']:7.1f} -> {rot['audio_s']:7.1f}  #{rot['index']} {rot['prompt']!r} "
              f"(plays at {dt.datetime.fromtimestamp(rot['plays_at']).strftime('%H:%M:%S')})")
    failed = bool(watcher.gaps() or timeline_gaps or watcher.problems or info["errors"] or undecodable)
    print("RESULT:", "FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
