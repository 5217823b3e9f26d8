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

After each round, where its time and work went: the worker's account of its jobs (waiting
to join the batch, decoding loop, EnCodec decode, post-processing: medians and maxima of
its ``row generated``/``job completed`` log records), the web's delivery (job completed ->
result delivered) and the GridFS writes (``result stored``), the CPU seconds of each process
(worker, web, packager, stores, these clients) and of the worker's threads (the decoding
loop, its other threads, the jobs' threads), read from ``/proc``: on a shared box wall
times move with others' load, the work does not. ``--loop-only R`` skips the server and
prints the decoding loop's and EnCodec's CPU seconds in-process for each N (min of R).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse  # noqa: E402
import base64  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402  (re-execs under the venv)

from g4l.hls.watch import PlaylistWatcher, decode_ts  # noqa: E402
from plugin_protocol import events  # noqa: E402
from plugin_protocol.client import DeviceClient  # noqa: E402


def one_round(url: str, n: int, wav: bytes, model_name: str = "debug",
              duration: float | None = None) -> tuple[float, list[float], list[float]]:
    """N simultaneous bangs: (time until the last result, each first progress, each result).
    ``duration``: seconds of output each bang asks for (None: the server's default, 30)."""
    clients = [DeviceClient(url, timeout=600).connect() for _ in range(n)]
    try:
        payload: dict = {"audio_data": base64.b64encode(wav).decode(), "model_name": model_name,
                         "prompt_duration": 4}
        if duration is not None:
            payload["duration"] = duration
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


def _log_records(server: common.Server) -> list[dict]:
    """The server's JSON log records so far."""
    import json

    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _worker_breakdown(records: list[dict]) -> str:
    """Where a round's jobs spent their time (medians, max), from the server's log records:
    the worker's ``row generated`` (submitted -> joined the batch, decoding loop, EnCodec
    decode) and ``job completed`` (model time, then post-processing: WAV, hand-off), the
    web's ``result delivered`` (completed -> the client had it: hand-off read, join,
    base64, send) and the ``result stored`` GridFS writes after it."""
    import datetime as dt

    rows = [r for r in records if r.get("event") == "row generated"]
    jobs = [r for r in records if r.get("event") == "job completed"]
    if not rows:
        return ""

    def col(recs: list[dict], key: str) -> str:
        xs = [float(r[key]) for r in recs if key in r]
        return f"{statistics.median(xs):.2f}/{max(xs):.2f}" if xs else "-"

    def at(rec: dict) -> float:
        return dt.datetime.fromisoformat(str(rec["timestamp"]).replace("Z", "+00:00")).timestamp()

    completed = {r.get("job_id"): at(r) for r in jobs if "timestamp" in r}
    delivered = [{"s": at(r) - completed[r["job_id"]]} for r in records
                 if r.get("event") == "result delivered" and r.get("job_id") in completed and "timestamp" in r]
    stored = [r for r in records if r.get("event") == "result stored"]
    return (f"wait to join {col(rows, 'wait_s')} s, decoding loop {col(rows, 'loop_s')} s, "
            f"EnCodec decode {col(rows, 'codec_s')} s, job model time {col(jobs, 'model_seconds')} s, "
            f"post {col(jobs, 'post_seconds')} s, completed -> delivered {col(delivered, 's')} s, "
            f"GridFS store {col(stored, 'store_seconds')} s (median/max)")


def _proc_cpu(path: str) -> float:
    """User + system CPU seconds of a /proc ``stat`` file (0 when it is gone)."""
    try:
        fields = open(path).read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ThreadCPU:
    """CPU seconds of each of the worker's threads during a round, sampled every 50 ms
    (a job's thread is gone once its job ends). Threads already there before the round
    are the worker's own (the decoding loop: the busiest of them; claims, heartbeat,
    result writer); threads born during it are the jobs' (prompt encode, EnCodec decode,
    the result's WAV and hand-off)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.before: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        out = {}
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return out
        for tid in tids:
            out[int(tid)] = _proc_cpu(f"/proc/{self.pid}/task/{tid}/stat")
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for tid, value in self._sample().items():
                self.last[tid] = max(value, self.last.get(tid, 0.0))

    def __enter__(self) -> ThreadCPU:
        if self.pid:
            self.before = self._sample()
            self.last = dict(self.before)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join(2)
            for tid, value in self._sample().items():
                self.last[tid] = max(value, self.last.get(tid, 0.0))

    def summary(self) -> str:
        old = sorted((self.last[t] - b for t, b in self.before.items()), reverse=True)
        new = [v for t, v in self.last.items() if t not in self.before]
        loop = old[0] if old else 0.0
        return (f"decoding loop {loop:.2f}, the worker's other threads {sum(old[1:]):.2f}, "
                f"{len(new)} job threads {sum(new):.2f} ({max(new, default=0.0):.2f} the most)")


def _cpu(server: common.Server) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the server's processes (web, workers,
    the stores) and by this benchmark's own clients: the work a round costs, whatever
    else loads the machine (its wall time does not say that on a shared box)."""
    def of(pid: int) -> float:
        return _proc_cpu(f"/proc/{pid}/stat")

    out: dict[str, float] = {}
    for name, pid in server.pids().items():
        key = "worker" if name.startswith("worker") else name
        out[key] = out.get(key, 0.0) + of(pid)
    out["stores"] = sum(of(s.proc.pid) for s in server.stores)
    out["clients"] = of(os.getpid())
    return out


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


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
            seen = len(_log_records(server))
            cpu_before = _cpu(server)
            with ThreadCPU(server.pids().get("worker-0") or server.pids().get("worker")) as threads_cpu:
                total, firsts, dones = one_round(server.url, n, wav)
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in _cpu(server).items()}
            totals[n] = total
            fp = ", ".join(f"{x:.2f}" for x in firsts)
            print(f"  N={n}: last result after {total:6.2f} s; per client first progress [{fp}] s; "
                  f"result median {statistics.median(dones):.2f} s, max {max(dones):.2f} s", flush=True)
            breakdown = _worker_breakdown(_log_records(server)[seen:])
            if breakdown:
                print(f"  N={n} worker: {breakdown}  (load {_load()})", flush=True)
            cores = os.cpu_count() or 1
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            print(f"  N={n} CPU seconds: {parts}; sum {sum(cpu.values()):.2f} s = at least "
                  f"{sum(cpu.values()) / cores:.2f} s on {cores} cores", flush=True)
            if threads_cpu.pid:
                print(f"  N={n} worker threads CPU seconds: {threads_cpu.summary()}", flush=True)
        for n in listen or []:
            heard, results = listened_round(server.url, n, wav)
            hs = ", ".join(f"{x:.2f}" for x in heard)
            print(f"  N={n} listened: processing_started -> first audible HLS segment [{hs}] s "
                  f"(median {statistics.median(heard):.2f}, max {max(heard):.2f}); "
                  f"-> result median {statistics.median(results):.2f} s", flush=True)
    return totals


def loop_only(ns: list[int], repeats: int) -> None:
    """The worker's share without the server: the tiny model's decoding loop and EnCodec
    decodes in this process (1 torch thread, oneDNN off, as the worker), CPU seconds of
    this thread (min of ``repeats``), so that other load on the box changes them little."""
    import numpy as np
    import torch

    from g4l.engine import GenerationParams, build_debug_musicgen
    from g4l.engine.batched_musicgen import BatchedMusicGen
    from g4l.engine.musicgen import disable_mkldnn

    disable_mkldnn()
    torch.set_num_threads(1)
    engine = BatchedMusicGen(build_debug_musicgen(seed=0), max_batch=max(ns))
    prompt = (0.1 * np.random.default_rng(0).standard_normal((1, 4 * 32000))).astype(np.float32)

    def once(n: int) -> tuple[float, float, float]:
        handles = [engine.submit(prompt, GenerationParams(duration=30.0, seed=i)) for i in range(n)]
        began, wall = time.thread_time(), time.perf_counter()
        engine.loop.run_until_idle()
        loop, wall = time.thread_time() - began, time.perf_counter() - wall
        began = time.thread_time()
        for handle in handles:
            engine.decode(handle.result())
        return loop, wall, time.thread_time() - began

    once(1)
    best = {n: min((once(n) for _ in range(repeats)), key=lambda r: r[0]) for n in ns}
    for n in ns:
        loop, wall, codec = best[n]
        print(f"  N={n}: decoding loop {loop:.2f} CPU s ({wall:.2f} s wall), EnCodec decodes {codec:.2f} CPU s "
              f"(min of {repeats}; load {_load()})", flush=True)
    top = ns[-1]
    print(f"loop CPU t({top})/t({ns[0]}) = {best[top][0] / best[ns[0]][0]:.2f}")


def main() -> None:
    common.install_term_handler()
    common.install_alarm(1800)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="1,4,8", help="comma-separated numbers of simultaneous bangs")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--no-serial", action="store_true", help="skip the G4L_MAX_BATCH=1 comparison")
    parser.add_argument("--loop-only", type=int, metavar="REPEATS", default=0,
                        help="no server: time the decoding loop and EnCodec decodes in this process "
                             "(CPU seconds, min of REPEATS)")
    parser.add_argument("--unstreamed", action="store_true",
                        help="also run the rounds with streamed generation off (G4L_STREAM_CHUNK_S=0)")
    parser.add_argument("--listen", default="1,8",
                        help="comma-separated numbers of listened sessions continuing at once ('' to skip)")
    args = parser.parse_args()
    ns = sorted({int(x) for x in args.n.split(",") if x.strip()})
    if args.loop_only:
        loop_only(ns, args.loop_only)
        return
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
