#!/usr/bin/env python3
"""Simultaneous device bangs on one worker: continuous batching vs one job at a time.

Starts the whole server with the tiny model (``G4L_MODELS=debug``, one worker) and, for
each N in ``--n`` (default 1, 4, 8), connects N device clients and emits N bangs at the same
instant (4 s prompt, 30 s result each). Per round it prints the time from the emit until
the LAST result arrived, and each client's time to its first progress notice and to its
result. It does this with ``G4L_MAX_BATCH=--max-batch`` (default 8) and then, unless
``--no-serial``, with ``G4L_MAX_BATCH=1`` (one job after another, as before batching).
The last lines are ``batched t(8)/t(1) = X`` and ``serial t(8)/t(1) = Y`` (for the largest
N). Speed is printed, never asserted.

Streamed generation (``--listen``, default 1 and 8): N sessions, each with a listener on
its HLS stream (a playlist poller decoding each new segment with ffmpeg), continue at the
same instant; per client it prints the time from ``processing_started`` (as the device
received it) to the first audible segment listed in its playlist (``listened`` lines).
The servers run with ``G4L_HLS_SESSION_PREROLL_S=0`` so a stream is silent until its
job's audio arrives.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse  # noqa: E402
import base64  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402  (re-execs under the venv)

from g4l.hls.watch import PlaylistWatcher, decode_ts  # noqa: E402
from plugin_protocol import events  # noqa: E402
from plugin_protocol.client import DeviceClient  # noqa: E402


def one_round(url: str, n: int, wav: bytes) -> tuple[float, list[float], list[float]]:
    """N simultaneous bangs: (time until the last result, each first progress, each result)."""
    clients = [DeviceClient(url, timeout=600).connect() for _ in range(n)]
    try:
        payload = {"audio_data": base64.b64encode(wav).decode(), "model_name": "debug", "prompt_duration": 4}
        marks = [c.mark() for c in clients]
        go = threading.Barrier(n + 1)
        sent: list[float] = [0.0] * n

        def emit(i: int) -> None:
            go.wait()
            sent[i] = time.monotonic()
            clients[i].emit(events.PROCESS_AUDIO, payload)

        threads = [threading.Thread(target=emit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        go.wait()
        for t in threads:
            t.join()
        firsts, dones = [], []
        for i, (c, since) in enumerate(zip(clients, marks, strict=True)):
            _, ack = c.wait_for(events.PROCESS_AUDIO_RECEIVED, since)
            c.wait_for(events.AUDIO_PROCESSED, since, session_id=ack["session_id"])
            with c._cond:  # the client's own receive timestamps
                got = c.received[since:]
            progress = [t for t, name, d in got if name == events.PROGRESS_UPDATE
                        and isinstance(d, dict) and d.get("session_id") == ack["session_id"]]
            done = [t for t, name, _d in got if name == events.AUDIO_PROCESSED]
            firsts.append((progress[0] - sent[i]) if progress else float("nan"))
            dones.append(done[0] - sent[i])
        last = max(s + d for s, d in zip(sent, dones, strict=True)) - min(sent)
        return last, firsts, dones
    finally:
        for c in clients:
            c.close()


def first_audible(watcher: PlaylistWatcher, after: float, decoded: dict[str, bool]) -> float | None:
    """``time.time()`` at which the first segment with sound, listed after ``after``, was seen."""
    import numpy as np

    for seg in watcher.ordered():
        if seg.seen_at < after:
            continue
        if seg.uri not in decoded:
            x = decode_ts(seg.data)
            decoded[seg.uri] = bool(x.size) and float(np.sqrt(np.mean(x ** 2))) > 1e-3
        if decoded[seg.uri]:
            return seg.seen_at
    return None


def listened_round(url: str, n: int, wav: bytes) -> tuple[list[float], list[float]]:
    """N listened sessions continue at once: (each client's processing_started -> first
    audible segment of its listener, each client's processing_started -> result)."""
    clients = [DeviceClient(url, timeout=600).connect() for _ in range(n)]
    watchers: list[PlaylistWatcher] = []
    try:
        sids = []
        for c in clients:  # a session each, with a listener
            sid = c.bang(wav, model_name="debug", prompt_duration=4).session_id
            since = c.mark()
            c.emit(events.GET_LISTEN_URL, {"session_id": sid})
            _, link = c.wait_for(events.LISTEN_URL, since, session_id=sid)
            sids.append(sid)
            watchers.append(PlaylistWatcher(url + link["playlist_url"], interval=0.1).start())
        deadline = time.monotonic() + 60
        while any(not w.ordered() for w in watchers) and time.monotonic() < deadline:
            time.sleep(0.1)
        clock = time.time() - time.monotonic()  # watcher times are wall clock, the client's monotonic
        marks = [c.mark() for c in clients]
        sent = time.time()
        go = threading.Barrier(n + 1)

        def emit(i: int) -> None:
            go.wait()
            clients[i].emit(events.CONTINUE_MUSIC, {"session_id": sids[i]})

        threads = [threading.Thread(target=emit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        go.wait()
        for t in threads:
            t.join()
        heard, results = [], []
        for c, since, sid, w in zip(clients, marks, sids, watchers, strict=True):
            c.wait_for(events.MUSIC_CONTINUED, since, session_id=sid)
            with c._cond:
                got = c.received[since:]
            started = [t for t, name, d in got if name == events.PROCESSING_STARTED
                       and isinstance(d, dict) and d.get("session_id") == sid][0] + clock
            done = [t for t, name, _d in got if name == events.MUSIC_CONTINUED][0] + clock
            decoded: dict[str, bool] = {}
            at = None
            deadline = time.monotonic() + 30
            while at is None and time.monotonic() < deadline:
                at = first_audible(w, sent, decoded)
                if at is None:
                    time.sleep(0.1)
            heard.append(at - started if at is not None else float("nan"))
            results.append(done - started)
        return heard, results
    finally:
        for w in watchers:
            w.stop()
        for c in clients:
            c.close()


def run_server(max_batch: int, ns: list[int], wav: bytes, listen: list[int] | None = None,
               stream_chunk_s: float = 1.0) -> dict[int, float]:
    print(f"G4L_MAX_BATCH={max_batch}: starting the server (tiny model, 1 worker"
          f"{', streamed generation off' if stream_chunk_s <= 0 else ''})", flush=True)
    totals: dict[int, float] = {}
    env = {"G4L_MAX_BATCH": str(max_batch), "G4L_WORKERS": "1", "G4L_HLS_SESSION_PREROLL_S": "0",
           "G4L_STREAM_CHUNK_S": str(stream_chunk_s)}
    with common.Server(extra_env=env) as server:
        one_round(server.url, 1, wav)  # warm-up: model loaded, loop thread started
        for n in ns:
            total, firsts, dones = one_round(server.url, n, wav)
            totals[n] = total
            fp = ", ".join(f"{x:.2f}" for x in firsts)
            print(f"  N={n}: last result after {total:6.2f} s; per client first progress [{fp}] s; "
                  f"result median {statistics.median(dones):.2f} s, max {max(dones):.2f} s", flush=True)
        for n in listen or []:
            heard, results = listened_round(server.url, n, wav)
            hs = ", ".join(f"{x:.2f}" for x in heard)
            print(f"  N={n} listened: processing_started -> first audible HLS segment [{hs}] s "
                  f"(median {statistics.median(heard):.2f}, max {max(heard):.2f}); "
                  f"-> result median {statistics.median(results):.2f} s", flush=True)
    return totals


def main() -> None:
    common.install_term_handler()
    common.install_alarm(1800)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="1,4,8", help="comma-separated numbers of simultaneous bangs")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--no-serial", action="store_true", help="skip the G4L_MAX_BATCH=1 comparison")
    parser.add_argument("--unstreamed", action="store_true",
                        help="also run the rounds with streamed generation off (G4L_STREAM_CHUNK_S=0)")
    parser.add_argument("--listen", default="1,8",
                        help="comma-separated numbers of listened sessions continuing at once ('' to skip)")
    args = parser.parse_args()
    ns = sorted({int(x) for x in args.n.split(",") if x.strip()})
    wav = common.make_wav(4)
    started = time.monotonic()
    listen = sorted({int(x) for x in args.listen.split(",") if x.strip()})
    batched = run_server(args.max_batch, ns, wav, listen)
    if args.unstreamed:
        run_server(args.max_batch, ns, wav, listen, stream_chunk_s=0)
    serial = {} if args.no_serial else run_server(1, [ns[0], ns[-1]], wav)
    print(f"total {time.monotonic() - started:.0f} s")
    top = ns[-1]
    print(f"batched t({top})/t({ns[0]}) = {batched[top] / batched[ns[0]]:.2f}")
    if serial:
        print(f"serial  t({top})/t({ns[0]}) = {serial[top] / serial[ns[0]]:.2f}")


if __name__ == "__main__":
    main()
