"""What a day of buffer history costs the dashboard: a station on its own server gets 24 h
of samples (one every 10 s, the defaults: 8640) written through the history store, then:

- ``history.json`` (the whole day, then only what is new) and ``status.json``: bytes and
  latency (median of 20 GETs);
- headless Chromium: time from opening the dashboard to the plot drawn with every sample,
  and the longest frame over two polls (each poll redraws the plot).

Usage: scripts/bench_dashboard [--screenshot PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import requests  # noqa: E402
from common import Server, install_alarm  # noqa: E402

from g4l.context import Context  # noqa: E402
from g4l.services.stations.history import StationHistory  # noqa: E402
from g4l.settings import Settings  # noqa: E402


def timed_get(url: str, n: int = 20) -> tuple[float, int]:
    """Median milliseconds and bytes of ``n`` GETs."""
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        resp = requests.get(url, timeout=30)
        times.append((time.perf_counter() - t) * 1000)
        resp.raise_for_status()
        size = len(resp.content)
    return statistics.median(times), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, help="save the dashboard with a day of history here (PNG)")
    args = parser.parse_args()
    install_alarm(600)
    with Server() as server:
        st = requests.post(f"{server.url}/api/v1/stations", json={"prompt": "bench", "model": "debug"},
                           timeout=10).json()
        sid = st["station_id"]
        ctx = Context.from_settings(Settings(REDIS_URL=server.redis_url, MONGO_URL=server.mongo_url))
        history = StationHistory(ctx)
        day = int(history.window_s // history.every_s)
        now = time.time()
        for i in range(day, 0, -1):  # a slow generator's day: the buffer saws up and down
            t = now - i * history.every_s
            phase = (i % 720) / 720
            history.record(sid, 3600 * (20 + 10 * abs(phase - 0.5)) * (1 - i / (2 * day)), "ok", now=t)
            history._next_at.clear()
        base = f"{server.url}/stations/{sid}"
        ms, size = timed_get(f"{base}/history.json")
        print(f"history.json, the whole day ({len(history.read(sid))} samples): {size / 1024:.0f} KB, {ms:.1f} ms")
        ms, size = timed_get(f"{base}/history.json?since={now - 30:.3f}")
        print(f"history.json, the last 30 s (what each poll asks): {size} B, {ms:.1f} ms")
        ms, size = timed_get(f"{base}/status.json")
        print(f"status.json: {size} B, {ms:.1f} ms")

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 1000})
                t = time.perf_counter()
                page.goto(f"{base}/dashboard")
                points = "(document.getElementById('buffer-line') || {dataset: {}}).dataset.points || 0"
                while int(page.evaluate(points)) < day:  # (the page's CSP rules out wait_for_function)
                    if time.perf_counter() - t > 60:
                        raise TimeoutError("the plot was not drawn in 60 s")
                    time.sleep(0.02)
                opened = time.perf_counter() - t
                # Each poll redraws the whole plot: the longest the page is busy doing so, as the
                # longest gap between two animation frames over two polls (7 s).
                jank = page.evaluate("""() => new Promise((done) => {
                    let last = performance.now(), worst = 0;
                    const end = last + 7000;
                    function frame(now) {
                        worst = Math.max(worst, now - last); last = now;
                        if (now < end) requestAnimationFrame(frame); else done(worst);
                    }
                    requestAnimationFrame(frame);
                })""")
                print(f"Chromium: dashboard open -> plot with {day} points drawn in {opened:.2f} s; longest frame "
                      f"over two polls (each redraws the plot): {jank:.0f} ms")
                if args.screenshot:
                    page.screenshot(path=str(args.screenshot), full_page=True)
                    print(f"screenshot: {args.screenshot}")
            finally:
                browser.close()
        requests.delete(f"{server.url}/api/v1/stations/{sid}", timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
