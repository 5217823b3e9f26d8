"""Many processes behave as one server: two web processes behind the launcher's nginx and
two workers. Any web process serves any session; a polling client stays on the process
that issued its session id; a device whose web process is killed mid-generation
reconnects through the balancer and gets its result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import redis
import requests
import socketio
from conftest import RunningServer, make_wav, start_server, wait_until, wav_info

from g4l.web import nodes
from plugin_protocol import events
from plugin_protocol.client import DeviceClient

DEVICE = Path(__file__).resolve().parent / "device"


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, mongo_server) -> RunningServer:
    """Two web processes and two workers, one job at a time each (G4L_MAX_BATCH=1): with
    batching (the default) one worker takes both of two jobs at once, so only one-at-a-time
    workers show that jobs run on either worker."""
    data = tmp_path_factory.mktemp("scaled")
    server = start_server(data, redis_url=None, mongo_url=mongo_server.url, G4L_MONGO_DB="g4l_scaled",
                          G4L_WEB_PROCESSES="2", G4L_WORKERS="2", G4L_HLS_ENABLED="false", G4L_MAX_BATCH="1")
    yield server
    server.stop()


def _nodes(server: RunningServer) -> dict[str, int]:
    """Web node name -> pid, from their heartbeats (/health shows them to operator keys only)."""
    return {n["node"]: n["pid"] for n in nodes.alive_nodes(_redis(server))}


def _all_up(server: RunningServer) -> tuple[int, dict]:
    """/health once both web processes beat and both workers have their model loaded."""
    return wait_until(lambda: (lambda h: h if h[1]["web_nodes_alive"] == 2 and h[1]["workers_ready"] == 2
                               else None)(server.health()), 120, "both web nodes and both workers ready")


def test_health_counts_both_web_processes_and_both_workers(scaled) -> None:
    status, doc = _all_up(scaled)
    assert status == 200 and doc["workers"] == 2 and doc["workers_ready"] == 2
    # Localhost mode's ports reach the web processes through the balancer too.
    for url in (scaled.jerry_url, scaled.terry_url):
        assert requests.get(url + "/health", timeout=10).json()["status"] == "live"
    assert "web_nodes" not in doc  # where they run is for operator keys (tests/test_health_leaks.py)
    assert sorted(_nodes(scaled)) == ["w0", "w1"]
    web_pids = {int(p) for p in subprocess.run(["pgrep", "-f", "g4l.web", "-P", str(scaled.proc.pid)],
                                               capture_output=True, text=True).stdout.split()}
    assert set(_nodes(scaled).values()) == web_pids


def test_long_polling_clients_stay_on_the_process_that_knows_them(scaled) -> None:
    # Without routing by session id, about half of these requests would reach the other
    # process, which answers "invalid session" and the client would drop.
    seen = set()
    for _ in range(4):
        client = socketio.Client(reconnection=False)
        client.connect(scaled.url, transports=["polling"], wait_timeout=10)
        try:
            seen.add(client.eio.sid.split(".")[0])
            for _ in range(8):
                status = client.call(events.VERIFY_SESSION, {"session_id": "no-such-session"}, timeout=10)
                assert status["exists"] is False
            assert client.transport() == "polling" and client.connected
        finally:
            client.disconnect()
    assert seen <= {"w0", "w1"} and seen  # ids name the process that issued them


def _redis(server: RunningServer) -> redis.Redis:
    """The launcher's embedded Redis (its URL is in the launcher's first log lines)."""
    for line in (Path(server.env["G4L_DATA_DIR"]) / "server.log").read_text(errors="replace").splitlines():
        if line.startswith("{") and json.loads(line).get("event") == "embedded redis started":
            return redis.Redis.from_url(json.loads(line)["url"], decode_responses=True)
    raise AssertionError("no embedded redis in the server log")


def test_one_at_a_time_sessions_run_on_either_worker_and_continue_from_either_web_process(scaled) -> None:
    _all_up(scaled)
    r = _redis(scaled)
    results: dict[str, object] = {}

    def play(name: str) -> None:
        with DeviceClient(scaled.url, timeout=120) as c:
            results[name] = c.bang(make_wav(4, freq=220 + 110 * len(results)), model_name="debug", prompt_duration=4)

    threads = [threading.Thread(target=play, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert set(results) == {"a", "b"}
    workers = {r.hget(f"g4l:job:{res.job_id}", "worker") for res in results.values()}  # type: ignore[attr-defined]
    assert len(workers) == 2, workers  # two jobs at once, one at a time per worker: one on each
    # The same session, continued over a new connection (whichever process it lands on).
    first = results["a"]
    for seconds in (56, 82):  # 30 s, then each continue keeps all but the 4 s prompt and adds 30 s
        with DeviceClient(scaled.url, timeout=120) as c:
            again = c.continue_(first.session_id)
            assert wav_info(again.audio).duration == pytest.approx(seconds, abs=0.05)


def test_web_process_killed_mid_generation_the_device_reconnects_and_gets_its_result(scaled, tmp_path) -> None:
    node = shutil.which("node")
    assert node is not None and (DEVICE / "node_modules" / "socket.io-client").is_dir()
    (tmp_path / "in.wav").write_bytes(make_wav(6))
    proc = subprocess.Popen([node, str(DEVICE / "failover.mjs"), scaled.url, str(tmp_path / "in.wav"), "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    killed: dict[str, int] = {}
    try:
        for raw in proc.stdout:  # type: ignore[union-attr]
            doc = json.loads(raw)
            lines.append(doc)
            if doc["step"] == "started" and not killed:
                pid = _nodes(scaled)[doc["node"]]
                os.kill(pid, signal.SIGKILL)
                killed = {doc["node"]: pid}
            if doc["step"] == "result":
                break
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (lines, proc.stderr.read())  # type: ignore[union-attr]
    assert killed, lines
    result = lines[-1]
    assert result["step"] == "result" and result["reconnects"] >= 1
    assert result["bytes"] > 1_000_000  # 30 s of 48 kHz stereo 16-bit
    verified = [d for d in lines if d["step"] == "verified"]
    assert verified and verified[0]["exists"] is True
    assert result["idle_connected"] == 10  # the idle sockets on the killed process came back too
    # The launcher started the killed process again (a new pid under the same name).
    [(name, pid)] = killed.items()
    wait_until(lambda: _nodes(scaled).get(name) not in (None, pid), 60, "the killed web process to be restarted")
