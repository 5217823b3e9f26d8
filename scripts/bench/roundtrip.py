#!/usr/bin/env python3
"""Server overhead on big continues: (client emit -> result received) - model_seconds.

Case A: a 54 s 48 kHz stereo PCM_16 WAV continued (result 78 s).
Case B: a 120 s 48 kHz stereo FLOAT WAV (~61 MB of base64) continued (result 144 s).
Each case runs 3 times after one warm-up bang (so the model is loaded). Per run it prints
total, model, overhead and the worker's post_seconds, plus a breakdown from the client's
event timestamps, the job record (created/started/finished, wall clock) and the server's
log lines ("job queued", "job completed", "result delivered"). The final lines are
``overhead 54s->78s continue: median X s`` and
``overhead 120s float continue (61 MB base64): median Y s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (re-execs under the venv)

import argparse  # noqa: E402
import base64  # noqa: E402
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402
import soundfile as sf  # noqa: E402

from g4l import keys  # noqa: E402
from plugin_protocol import events  # noqa: E402
from plugin_protocol.client import DeviceClient  # noqa: E402

CASES = [
    ("A", "54s->78s continue", 54.0, "PCM_16", 78.0),
    ("B", "120s float continue (61 MB base64)", 120.0, "FLOAT", 144.0),
]


def log_marks(server: common.Server, job_id: str) -> dict[str, float]:
    """Wall-clock times of the server's log lines about ``job_id``."""
    out: dict[str, float] = {}
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if job_id not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        ev, ts = rec.get("event"), rec.get("timestamp")
        if ev in ("job queued", "job completed", "result delivered", "job started", "job claimed") and ts:
            out[ev] = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return out


def run_once(c: DeviceClient, r: redis.Redis, server: common.Server, b64: str, expect_s: float) -> dict:
    payload = {"session_id": None, "audio_data": b64, "model_name": "debug", "prompt_duration": 6}
    with c._cond:
        c.received.clear()
    # Clocks: the client's event stamps are monotonic; the job record and logs are wall clock.
    wall0, mono0 = time.time(), time.monotonic()
    c.emit(events.CONTINUE_MUSIC, payload)
    _, ack = c.wait_for(events.CONTINUE_MUSIC_RECEIVED, 0)
    job_id, sid = ack["job_id"], ack["session_id"]
    try:
        _, result = c.wait_for(events.MUSIC_CONTINUED, 0, session_id=sid)
    except TimeoutError:
        # Say what the server knows, so a lost result can be diagnosed.
        print(f"  TIMEOUT: no result for job {job_id}; job record: {r.hgetall(keys.job(job_id))}")
        print(f"  session record: {r.hgetall(keys.session(sid))}")
        print(f"  events received: {[(round(t - mono0, 2), n) for t, n, _d in list(c.received)]}")
        for line in server.log_path.read_text(errors='replace').splitlines():
            if job_id in line or sid in line or '"error"' in line or 'exception' in line:
                print("  log:", line[:400])
        raise
    with c._cond:
        stamps = list(c.received)
        c.received.clear()
    t_result = next(t for t, n, d in stamps if n == events.MUSIC_CONTINUED) - mono0
    t_ack = next(t for t, n, d in stamps if n == events.CONTINUE_MUSIC_RECEIVED) - mono0
    t_started = next((t - mono0 for t, n, d in stamps if n == events.PROCESSING_STARTED), None)
    prog = [(t - mono0, d.get("progress")) for t, n, d in stamps if n == events.PROGRESS_UPDATE]
    t_p100 = next((t for t, p in prog if p == 100), t_result)
    wav = base64.b64decode(result["audio_data"])
    info = sf.info(io.BytesIO(wav))
    del result
    job = {}
    for _ in range(50):  # the record is written before the notice; be safe anyway
        job = r.hgetall(keys.job(job_id))
        if job.get("model_seconds"):
            break
        time.sleep(0.1)
    model_s, post_s = float(job["model_seconds"]), float(job["post_seconds"])
    created, started, finished = (float(job[k]) - wall0 for k in ("created", "started", "finished"))
    marks = {k: v - wall0 for k, v in log_marks(server, job_id).items()}
    return {
        "job_id": job_id, "total": t_result, "model": model_s, "post": post_s, "overhead": t_result - model_s,
        "ack": t_ack, "proc_started_evt": t_started, "p100_evt": t_p100,
        "created": created, "started": started, "finished": finished,
        "queued_log": marks.get("job queued"), "delivered_log": marks.get("result delivered"),
        "result_seconds": info.frames / info.samplerate, "result_bytes": len(wav), "subtype": info.subtype,
        "expect": expect_s,
    }


def show(case: str, i: int, m: dict) -> None:
    pre = m["finished"] - m["started"] - m["model"] - m["post"]
    deliv = m["delivered_log"]
    print(f"  {case} run {i}: total {m['total']:.2f} s, model {m['model']:.2f} s, overhead {m['overhead']:.2f} s, "
          f"post_seconds {m['post']:.2f} s  (result {m['result_seconds']:.1f} s {m['subtype']}, "
          f"{m['result_bytes'] / 1e6:.1f} MB)")
    print(f"      emit -> continue_music_received ack      {m['ack']:6.2f} s  (send + receive + base64/WAV decode + "
          f"prompt store + enqueue; job created at {m['created']:.2f}, 'job queued' logged at "
          f"{m['queued_log'] if m['queued_log'] is None else round(m['queued_log'], 2)})")
    evt = m["proc_started_evt"]
    print(f"      job created -> worker started (queue)    {m['started'] - m['created']:6.2f} s  (job.started at "
          f"{m['started']:.2f}; processing_started event "
          + (f"at {evt:.2f})" if evt is not None else "never arrived: sent before the socket joined the room)"))
    print(f"      worker: prompt load + model setup        {pre:6.2f} s")
    print(f"      worker: model_seconds                    {m['model']:6.2f} s")
    print(f"      worker: post_seconds (input wait + encode new part + splice + Redis hand-off) {m['post']:6.2f} s")
    print(f"      job.finished -> result event received    {m['total'] - m['finished']:6.2f} s  "
          f"(progress 100 event at +{m['p100_evt'] - m['finished']:.2f}"
          + (f", 'result delivered' logged at +{deliv - m['finished']:.2f}" if deliv is not None else "")
          + "; = notice + Redis read + base64 + send + transfer + client JSON decode)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="AB")
    ap.add_argument("--keep-log", action="store_true", help="keep the server's temp dir (launcher.log)")
    args = ap.parse_args()

    common.install_term_handler()
    common.install_alarm(1200)
    server = common.Server(keep_dir=args.keep_log)
    client: DeviceClient | None = None
    try:
        t = time.monotonic()
        server.start()
        print(f"server ready on {server.url} in {time.monotonic() - t:.1f} s", flush=True)
        r = redis.Redis.from_url(server.redis_url, decode_responses=True)
        client = DeviceClient(server.url, timeout=300).connect()
        t = time.monotonic()
        client.bang(common.make_wav(30.0, 48_000, 2, "PCM_16", seed=9), model_name="debug", prompt_duration=6)
        print(f"warm-up bang: {time.monotonic() - t:.1f} s", flush=True)
        medians: list[tuple[str, float]] = []
        for code, label, seconds, subtype, expect in CASES:
            if code not in args.cases:
                continue
            wav = common.make_wav(seconds, 48_000, 2, subtype, seed=len(label))
            b64 = base64.b64encode(wav).decode("ascii")
            print(f"case {code}: {seconds:.0f} s 48 kHz stereo {subtype} WAV, {len(wav) / 1e6:.1f} MB, "
                  f"{len(b64) / 1e6:.1f} MB base64 -> continue (expect {expect:.0f} s back)", flush=True)
            overheads = []
            for i in range(1, args.runs + 1):
                m = run_once(client, r, server, b64, expect)
                if abs(m["result_seconds"] - expect) > 0.5:
                    raise RuntimeError(f"result is {m['result_seconds']:.2f} s, expected {expect} s")
                show(code, i, m)
                sys.stdout.flush()
                overheads.append(m["overhead"])
            medians.append((label, statistics.median(overheads)))
        if args.keep_log:
            print(f"server log kept at {server.log_path}")
        for label, med in medians:
            print(f"overhead {label}: median {med:.2f} s")
        return 0
    except BaseException:
        server.keep_dir = True
        print(f"failed; server log kept at {server.log_path}", flush=True)
        raise
    finally:
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        server.stop()
        import signal
        signal.alarm(0)


if __name__ == "__main__":
    sys.exit(main())
