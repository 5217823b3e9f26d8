"""``scripts/chaos``: start the whole server as ``scripts/serve`` does (embedded Redis and
store, owned by the launcher), inject faults one after another, and print one line per
fault with what happened and how long it took. Ends with the count of stored audio lost:
every session made during the run must still give its current audio over HTTP.

The server runs as it would scaled out on one machine: ``--web-processes`` (2) behind the
launcher's nginx and ``--workers`` (2).

Faults: the worker running a job killed mid-job; the embedded Redis killed; Redis paused
8 s with a job in flight; the web process holding a generating device and 50 idle sockets
killed (Node's socket.io-client, as the device: they reconnect through the balancer); the
store paused 10 s during a continue (and how fast /health answers meanwhile); the
packager killed; a full restart.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, VENV_PYTHON, install_alarm, install_term_handler, make_wav  # noqa: E402

from g4l import embedded, keys  # noqa: E402
from plugin_protocol import events  # noqa: E402
from plugin_protocol.client import DeviceClient, ProtocolError  # noqa: E402


class Launcher:
    """``python -m g4l.launcher`` with embedded stores under one data directory."""

    def __init__(self, data: Path, port: int, web_processes: int, workers: int) -> None:
        self.data, self.port = data, port
        self.scale = {"G4L_WEB_PROCESSES": str(web_processes), "G4L_WORKERS": str(workers)}
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log = data / "launcher.log"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGO_URL")}
        env.update({"G4L_MODELS": "debug", "G4L_PORT": str(self.port), "G4L_HOST": "127.0.0.1",
                    "G4L_DATA_DIR": str(self.data), "G4L_RATE_LIMIT_PER_MINUTE": "0", "G4L_WORKER_DEAD_AFTER_S": "6",
                    "G4L_JERRY_PORT": "0", "G4L_TERRY_PORT": "0",  # a benchmark takes no fixed port
                    **self.scale})
        ready = threading.Event()
        self.proc = subprocess.Popen([str(VENV_PYTHON), "-m", "g4l.launcher"], cwd=str(ROOT), env=env,
                                     stdout=subprocess.PIPE, stderr=open(self.log, "ab"), start_new_session=True)

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                if raw.startswith(b"g4l ready on"):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(240):
            raise RuntimeError(f"not ready; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == name:
                out.append(rec)
        return out

    def child(self, module: str) -> int:
        return self.children(module)[0]

    def children(self, module: str) -> list[int]:
        assert self.proc is not None
        got = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", module], capture_output=True, text=True)
        return sorted(int(p) for p in got.stdout.split())

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.events("embedded redis started")[-1]["url"], decode_responses=True)

    def worker_running(self, job_id: str) -> int:
        """The pid of the worker that runs ``job_id`` (worker names are host-pid-random)."""
        name = self.redis().hget(f"g4l:job:{job_id}", "worker") or ""
        return int(name.rsplit("-", 2)[-2])

    def web_pid(self, node: str) -> int:
        """The pid of web node ``node``, from its heartbeat (``/health`` shows it to operator keys only)."""
        beat = self.redis().get(keys.web_node(node))
        assert beat, f"web node {node} is not beating"
        return int(json.loads(beat)["pid"])

    def store_pid(self, store: str) -> int:
        url = self.events(f"embedded {'redis' if store == 'redis' else 'mongodb-compatible store'} started")[-1]["url"]
        port = url.rsplit(":", 1)[1].strip("/").split("/")[0]
        pattern = f"redis-server 127.0.0.1:{port}" if store == "redis" else f"secantusd-py.*--port {port}"
        got = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        return int(got.stdout.split()[0])


def health(url: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url + "/health", timeout=30) as resp:
            return resp.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started
    except OSError:
        return 0, time.monotonic() - started


def wait(check, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(0.2)
    return None


def bang_payload() -> dict:
    return {"audio_data": base64.b64encode(make_wav(6)).decode(), "model_name": "debug", "prompt_duration": 4}


def line(name: str, text: str) -> None:
    print(f"{name:<34} {text}", flush=True)


def web_process_killed(server: Launcher, data: Path, sessions: list[str]) -> str:
    """tests/device/failover.mjs with 50 idle sockets: once its bang has started, kill -9
    the web process its socket is on; it reconnects, verify_session, and the result."""
    node = shutil.which("node")
    harness = ROOT / "tests" / "device" / "failover.mjs"
    if node is None or not (harness.parent / "node_modules" / "socket.io-client").is_dir():
        return "SKIPPED: node and the device harness are installed by scripts/install.sh test"
    (data / "in.wav").write_bytes(make_wav(6))
    proc = subprocess.Popen([node, str(harness), server.url, str(data / "in.wav"), "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps: dict[str, dict] = {}
    killed_at = 0.0
    assert proc.stdout is not None
    for raw in proc.stdout:
        doc = json.loads(raw)
        steps.setdefault(doc["step"], doc)
        if doc["step"] == "started" and not killed_at:
            idle_there = steps["idle"]["nodes"].count(doc["node"])
            os.kill(server.web_pid(doc["node"]), signal.SIGKILL)
            killed_at = time.monotonic()
            sessions.append(doc["session_id"])
        if doc["step"] == "result":
            break
    proc.wait(60)
    if "result" not in steps:
        return f"FAILED: no result ({proc.stderr.read()[-300:] if proc.stderr else ''})"
    r, back = steps["result"], steps.get("reconnected", {})
    return (f"{steps['started']['node']} (the device + {idle_there} idle sockets) killed; device back on "
            f"{back.get('node')} {back.get('at', 0) - steps['disconnected']['at']:.1f} s later, session found: "
            f"{steps.get('verified', {}).get('exists')}, result {time.monotonic() - killed_at:.1f} s after the kill; "
            f"idle sockets connected {r['idle_connected']}/50")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--web-processes", type=int, default=2, help="web processes behind the balancer")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    install_alarm(1500)
    install_term_handler()
    data = Path(tempfile.mkdtemp(prefix="g4l-chaos-"))
    server = Launcher(data, embedded.free_port(), args.web_processes, args.workers)
    sessions: list[str] = []
    try:
        server.start()
        url = server.url
        with DeviceClient(url, timeout=180) as c:
            sessions.append(c.bang(make_wav(4), model_name="debug", prompt_duration=4).session_id)

            # 1. worker killed mid-job
            since = c.mark()
            c.emit(events.PROCESS_AUDIO, bang_payload())
            _, ack = c.wait_for(events.PROCESS_AUDIO_RECEIVED, since)
            sessions.append(ack["session_id"])
            wait(lambda: c.events_since(since, events.PROCESSING_STARTED), 60)
            os.kill(server.worker_running(ack["job_id"]), signal.SIGKILL)
            t = time.monotonic()
            c.wait_for(events.AUDIO_PROCESSED, since, session_id=ack["session_id"], timeout=180)
            line("worker killed mid-job", f"result delivered {time.monotonic() - t:.1f} s after the kill")

            # 2. embedded Redis killed
            time.sleep(1.5)  # appendfsync everysec
            workers = server.children("g4l.worker")
            os.kill(server.store_pid("redis"), signal.SIGKILL)
            t = time.monotonic()
            back = wait(lambda: health(url)[0] == 200, 120)
            again = c.continue_(sessions[0])
            line("redis killed", f"restarted, /health live after {back or -1:.1f} s; session kept "
                 f"(continue {len(again.audio)} bytes, {time.monotonic() - t:.1f} s); worker restarted: "
                 f"{server.children('g4l.worker') != workers}")

        with DeviceClient(url, timeout=180) as c:
            # 3. Redis paused 8 s with a job in flight
            since = c.mark()
            c.emit(events.PROCESS_AUDIO, bang_payload())
            _, ack = c.wait_for(events.PROCESS_AUDIO_RECEIVED, since)
            sessions.append(ack["session_id"])
            redis_pid, workers = server.store_pid("redis"), server.children("g4l.worker")
            os.kill(redis_pid, signal.SIGSTOP)
            time.sleep(8)
            os.kill(redis_pid, signal.SIGCONT)
            t = time.monotonic()
            try:
                c.wait_for(events.AUDIO_PROCESSED, since, session_id=ack["session_id"], timeout=120)
                outcome = f"result {time.monotonic() - t:.1f} s after resume"
            except ProtocolError as exc:
                outcome = f"FAILED {exc.code}"
            line("redis paused 8 s mid-job", f"{outcome}; worker restarted: {server.children('g4l.worker') != workers}")

            # 4. the web process holding a generating device and 50 idle sockets killed
            line("web process killed", web_process_killed(server, data, sessions))
            wait(lambda: c.verify(sessions[0])["exists"], 120)  # this client reconnects if it was there

            # 5. store paused 10 s during a continue
            mongo_pid = server.store_pid("mongo")
            since = c.mark()
            c.emit(events.CONTINUE_MUSIC, {"session_id": sessions[0], "audio_data": bang_payload()["audio_data"],
                                           "model_name": "debug", "prompt_duration": 4})
            os.kill(mongo_pid, signal.SIGSTOP)
            time.sleep(1)
            code, took = health(url)
            time.sleep(9)
            os.kill(mongo_pid, signal.SIGCONT)
            t = time.monotonic()
            try:
                c.wait_for(events.MUSIC_CONTINUED, since, session_id=sessions[0], timeout=120)
                outcome = f"continue delivered {time.monotonic() - t:.1f} s after resume"
            except ProtocolError as exc:
                outcome = f"continue refused {exc.code}: {str(exc)[:80]}"
            line("store paused 10 s mid-continue", f"/health {code} in {took:.2f} s while paused; {outcome}")

            # 6. packager killed: a listened stream goes on
            link = c._call(events.GET_LISTEN_URL, {"session_id": sessions[0]}, events.LISTEN_URL)
            playlist = url + link["playlist_url"]
            wait(lambda: urllib.request.urlopen(playlist, timeout=5).status == 200, 30)
            os.kill(server.child("g4l.hls"), signal.SIGKILL)
            t = time.monotonic()
            first = urllib.request.urlopen(playlist, timeout=5).read()

            def advanced() -> bool:
                return urllib.request.urlopen(playlist, timeout=5).read() != first
            back = wait(advanced, 60)
            time.sleep(4)  # two more segments
            text = urllib.request.urlopen(playlist, timeout=5).read().decode()
            breaks = text.count("#EXT-X-DISCONTINUITY\n") + sum(
                int(ln.split(":")[1]) for ln in text.splitlines() if ln.startswith("#EXT-X-DISCONTINUITY-SEQUENCE:"))
            line("packager killed", f"playlist moving again after {back or -1:.1f} s; discontinuities: {breaks}")

        # 7. full restart
        server.stop()
        server.start()
        with DeviceClient(server.url, timeout=180) as c:
            kept = sum(1 for s in sessions if c.verify(s)["exists"])
        line("full restart", f"{kept}/{len(sessions)} sessions kept")

        lost = 0
        for session_id in sessions:
            try:
                with urllib.request.urlopen(f"{server.url}/api/v1/sessions/{session_id}/audio", timeout=30) as r:
                    if len(r.read()) < 1000:
                        lost += 1
            except OSError:
                lost += 1
        line("stored audio lost", f"{lost} of {len(sessions)} sessions")
        return 0 if lost == 0 else 1
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"data kept in {data}")


if __name__ == "__main__":
    sys.exit(main())
