#!/usr/bin/env python3
"""Responsiveness under generation: Socket.IO and HTTP round trips of idle clients.

20 idle devices (Node's socket.io-client, the device's own, over websockets:
``tests/device/probe.mjs``) each call ``verify_session`` (with ack) about every 100 ms; a
thread GETs /health/live a few times a second. The probes run in Node, in one event loop:
20 Python clients took a third of a core of the 2-core box they measure, and their own
waits for that core (up to half the phase) were counted as the server's. Phase 1: nothing else runs
(20 s). Phase 2: one more client (in its own process, so its base64/JSON work does not
stall the measuring process) bangs a 30 s WAV (model debug, prompt 6 s) and continues
three times (``--generators N``: N such clients at once, each in its own process, so a
batching worker runs them together). ``--idle-sockets N`` keeps N more websockets open
throughout (Node's socket.io-client, ``tests/device/load.mjs``: a status round trip each
every 5 s), as a busy server has. Prints p50/p99/max per phase, the slowest round trips next to the
generation's marks, and the CPU time the hypervisor took from this machine (steal) in
each phase: one 100 ms stall of the whole box delays all 20 clients at once, which alone
is a p99 of a 10 s phase, so phases are long and a noisy neighbour is named. The last
line is ``p99 idle X ms, p99 during generation Y ms, ratio Z``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import common  # noqa: E402  (re-execs under the venv)

from plugin_protocol.client import DeviceClient  # noqa: E402  (the generating clients)

CALL_TIMEOUT = 30.0
#: The generating clients stand for musicians on their own machines: here they share the
#: box with the server and the measuring clients, so they take only the CPU those leave.
GENERATOR_NICE = 15


def generator_main(url: str, continues: int) -> int:
    """Child process: bang then continue; prints JSON lines with wall-clock marks."""
    wav = common.make_wav(30.0, 48_000, 2, "PCM_16", seed=1)

    def say(**kw: object) -> None:
        print(json.dumps(kw), flush=True)

    with DeviceClient(url, timeout=180) as c:
        say(mark="start", t=time.time())
        r = c.bang(wav, model_name="debug", prompt_duration=6)
        say(mark="bang", t=time.time(), seconds=round(r.seconds, 3), bytes=len(r.audio))
        for i in range(continues):
            r = c.continue_(r.session_id)
            say(mark=f"continue{i + 1}", t=time.time(), seconds=round(r.seconds, 3), bytes=len(r.audio))
        say(mark="end", t=time.time())
    return 0


def read_marks(gen: subprocess.Popen, marks: dict[str, dict]) -> None:
    """A generation client's JSON mark lines, by mark, until it exits."""
    assert gen.stdout is not None
    for line in gen.stdout:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        marks[rec["mark"]] = rec


def _node_script(name: str) -> tuple[str, Path]:
    """Node and one of ``tests/device``'s scripts (needs ``scripts/install.sh test``)."""
    import shutil

    node = shutil.which("node")
    script = Path(__file__).resolve().parents[2] / "tests" / "device" / name
    if node is None or not (script.parent / "node_modules" / "socket.io-client").is_dir():
        raise SystemExit("this benchmark needs node and tests/device/node_modules (scripts/install.sh test)")
    return node, script


def idle_crowd(server: common.Server, sockets: int, seconds: float) -> subprocess.Popen:
    """``sockets`` more websockets from Node (``tests/device/load.mjs`` with no active
    device), given time to connect; killed by the caller."""
    node, harness = _node_script("load.mjs")
    wav = Path(server.tmp) / "idle.wav"
    wav.write_bytes(common.make_wav(1.0))
    proc = subprocess.Popen([node, str(harness), server.url, str(wav), str(sockets), "0", str(int(seconds))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(max(5.0, sockets / 20))  # Node connects a few hundred sockets in a few seconds
    if proc.poll() is not None:
        raise RuntimeError(f"the idle sockets' node process exited with {proc.returncode}")
    print(f"{sockets} more websockets held open by node (pid {proc.pid})", flush=True)
    return proc


class Probes:
    """The measuring devices: ``tests/device/probe.mjs``, ``clients`` sockets each asking
    ``verify_session`` every 100 ms until :meth:`samples`."""

    def __init__(self, url: str, clients: int) -> None:
        node, script = _node_script("probe.mjs")
        self.proc = subprocess.Popen([node, str(script), url, str(clients), "100", "1200"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "N probe clients connected", or Node's error
        if "connected" not in line:
            raise RuntimeError(f"the probe clients did not connect: {line.strip()}")

    def samples(self) -> list[tuple[float, float, bool]]:
        """Stop the probes; every round trip as (wall-clock s when sent, ms, ok)."""
        import signal

        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the probe clients exited with {self.proc.returncode}: {err[-500:]}")
        return [(t / 1000.0, rtt, bool(ok)) for t, rtt, ok in json.loads(out)["samples"]]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def http_prober(url: str, stop: threading.Event, samples: list, lock: threading.Lock) -> None:
    while not stop.is_set():
        sent_wall = time.time()
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"{url}/health/live", timeout=CALL_TIMEOUT) as resp:
                resp.read()
                ok = resp.status == 200
        except Exception:
            ok = False
        rtt = (time.perf_counter() - t0) * 1000
        with lock:
            samples.append((sent_wall, rtt, ok))
        stop.wait(max(0.0, 0.25 - rtt / 1000))


def steal_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0


def stats(samples: list, lo: float, hi: float) -> dict:
    vals = [rtt for t, rtt, _ok in samples if lo <= t < hi]
    bad = sum(1 for t, _rtt, ok in samples if lo <= t < hi and not ok)
    return {"n": len(vals), "errors": bad, "p50": common.percentile(vals, 50),
            "p99": common.percentile(vals, 99), "max": max(vals) if vals else float("nan")}


def fmt(name: str, s: dict) -> str:
    return (f"  {name:<24} n={s['n']:<5} p50 {s['p50']:8.1f} ms  p99 {s['p99']:8.1f} ms  "
            f"max {s['max']:8.1f} ms  errors {s['errors']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--continues", type=int, default=3)
    ap.add_argument("--generators", type=int, default=1, help="generating clients at once in phase 2")
    ap.add_argument("--idle-sockets", type=int, default=0,
                    help="more websockets held open throughout (Node's socket.io-client; needs node)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the server's temp dir (its log, with gevent's blocking reports when "
                         "GEVENT_MONITOR_THREAD_ENABLE=true) and print its path")
    ap.add_argument("--generator", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator:
        return generator_main(args.generator, args.continues)

    common.install_term_handler()
    common.install_alarm(420)
    server = common.Server(keep_dir=args.keep)
    probes: Probes | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    gens: list[subprocess.Popen] = []
    crowd: subprocess.Popen | None = None
    try:
        t = time.monotonic()
        server.start()
        print(f"server ready on {server.url} in {time.monotonic() - t:.1f} s", flush=True)
        http_samples: list = []
        lock = threading.Lock()
        probes = Probes(server.url, args.clients)
        print(f"{args.clients} idle clients connected (Node, websocket)", flush=True)
        if args.idle_sockets:
            crowd = idle_crowd(server, args.idle_sockets, args.idle_seconds + 600)
        threads.append(threading.Thread(target=http_prober, args=(server.url, stop, http_samples, lock), daemon=True))
        for th in threads:
            th.start()
        time.sleep(1.0)  # settle
        # This process's own garbage collector would stall its HTTP prober and be counted
        # as server latency: keep what exists out of its passes.
        gc.collect()
        gc.freeze()
        idle_lo, idle_steal = time.time(), steal_ticks()
        time.sleep(args.idle_seconds)
        idle_hi, idle_steal = time.time(), steal_percent(idle_steal, steal_ticks())

        gen_steal = steal_ticks()
        gens = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--generator", server.url,
                                  "--continues", str(args.continues)], stdout=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: os.nice(GENERATOR_NICE))
                for _ in range(args.generators)]
        runs: list[dict[str, dict]] = [{} for _ in gens]
        readers = [threading.Thread(target=read_marks, args=(g, m), daemon=True)
                   for g, m in zip(gens, runs, strict=True)]
        for th in readers:
            th.start()
        for th in readers:
            th.join()
        codes = [g.wait(60) for g in gens]
        gen_steal = steal_percent(gen_steal, steal_ticks())
        if any(codes) or any("end" not in m for m in runs):
            raise RuntimeError(f"a generation client failed (exits {codes}); marks: {[sorted(m) for m in runs]}")
        marks = runs[0]
        # Phase 2: from the first client's start to the last one's end.
        marks["start"]["t"] = min(m["start"]["t"] for m in runs)
        marks["end"]["t"] = max(m["end"]["t"] for m in runs)
        gen_lo, gen_hi = marks["start"]["t"], marks["end"]["t"]
        time.sleep(0.3)
        stop.set()
        for th in threads:
            th.join(CALL_TIMEOUT + 5)
        sio_samples = probes.samples()

        steps = ["bang"] + [f"continue{i + 1}" for i in range(args.continues)]
        print("generation client: " + ", ".join(f"{k} {marks[k]['seconds']} s ({marks[k]['bytes']} B)" for k in steps)
              + f"; phase 2 lasted {gen_hi - gen_lo:.1f} s")
        idle_sio, gen_sio = stats(sio_samples, idle_lo, idle_hi), stats(sio_samples, gen_lo, gen_hi)
        idle_http, gen_http = stats(http_samples, idle_lo, idle_hi), stats(http_samples, gen_lo, gen_hi)
        print(f"phase 1: idle ({idle_hi - idle_lo:.1f} s, cpu steal {idle_steal:.1f}%)")
        print(fmt("socket.io verify_session", idle_sio))
        print(fmt("http GET /health/live", idle_http))
        print(f"phase 2: during {args.generators} x (bang + {args.continues} continues) ({gen_hi - gen_lo:.1f} s, "
              f"cpu steal {gen_steal:.1f}%)")
        print(fmt("socket.io verify_session", gen_sio))
        print(fmt("http GET /health/live", gen_http))
        # Where the slow ones fell, next to the generation client's marks: a diagnosis aid.
        slow = sorted((rtt, t - gen_lo) for t, rtt, _ok in sio_samples if gen_lo <= t < gen_hi)[-8:]
        print("  slowest round trips (s after start: ms): "
              + ", ".join(f"{at:.2f}: {rtt:.0f}" for rtt, at in sorted(slow, key=lambda x: x[1])))
        print("  generation results (s after start): " + ", ".join(f"{k} {marks[k]['t'] - gen_lo:.2f}" for k in steps))
        ratio = gen_sio["p99"] / idle_sio["p99"] if idle_sio["p99"] > 0 else float("inf")
        print(f"p99 idle {idle_sio['p99']:.1f} ms, p99 during generation {gen_sio['p99']:.1f} ms, ratio {ratio:.2f}",
              flush=True)
        return 0
    finally:
        stop.set()
        for g in gens + ([crowd] if crowd is not None else []):
            if g.poll() is None:
                g.kill()
                g.wait(10)
        if probes is not None:
            probes.kill()
        server.stop()
        if args.keep:
            print(f"server log kept: {server.log_path}", flush=True)
        try:
            import signal
            signal.alarm(0)
        except Exception:
            pass


if __name__ == "__main__":
    sys.exit(main())
