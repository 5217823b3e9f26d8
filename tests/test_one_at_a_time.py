"""The one-at-a-time path (``G4L_MAX_BATCH=1``): a worker that runs one job at a time,
so a second job waits behind the running one. The rest of the suite runs the shipped
default (batching, 8 jobs at once), where a job waits only when every slot is taken; these
tests keep the queue a client sees covered: its position and ETA over HTTP, a queued job
canceled before it runs, and the CLI's progress bar showing the queue in a real terminal."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time

import pymongo
import pytest
import requests
from conftest import RunningServer, make_wav, start_server
from test_cli import G4L, Shell, seconds

#: Its own Redis database and store database on the worker's shared servers: the shared
#: server (database 0, "g4l") must not take this server's jobs.
REDIS_DB = 9
MONGO_DB = "g4l_one_at_a_time"


@pytest.fixture(scope="module")
def one_at_a_time(redis_server, mongo_server, tmp_path_factory) -> RunningServer:
    redis_url = re.sub(r"/\d+$", "", redis_server.url) + f"/{REDIS_DB}"
    s = start_server(tmp_path_factory.mktemp("one-at-a-time"), redis_url=redis_url, mongo_url=mongo_server.url,
                     G4L_MAX_BATCH="1", G4L_MONGO_DB=MONGO_DB, G4L_HLS_ENABLED="false")
    yield s
    s.stop()


def _job(api: str, job_id: str) -> dict:
    return requests.get(f"{api}/jobs/{job_id}", timeout=10).json()


def _wait(api: str, job_id: str, until: tuple[str, ...], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = _job(api, job_id)
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_one_at_a_time_a_job_waits_behind_the_running_one_and_a_queued_cancel_drops_it(
        one_at_a_time: RunningServer, mongo_server) -> None:
    api = f"{one_at_a_time.url}/api/v1"
    create = lambda prompt, duration: requests.post(  # noqa: E731
        f"{api}/generate", json={"prompt": prompt, "duration": duration}, timeout=30).json()["job_id"]
    # A long job runs; one waits behind it, and another behind that.
    long_id, next_id, dropped_id = create("long", 90), create("next", 2), create("dropped", 2)
    deadline = time.monotonic() + 60
    while True:
        job = _job(api, long_id)
        if job["status"] == "running" and job["progress"] > 0:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    queued = _job(api, next_id)
    assert queued["status"] == "queued" and queued["position"] == 1 and queued["eta_seconds"] > 0

    # Cancel the queued one: dropped at once.
    resp = requests.delete(f"{api}/jobs/{dropped_id}", timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"

    # Cancel the running one: canceled within 2 s, and the next job starts.
    started = time.monotonic()
    resp = requests.delete(f"{api}/jobs/{long_id}", timeout=10)
    while _job(api, long_id)["status"] != "canceled":
        assert time.monotonic() - started < 2.0, "the running job did not stop within 2 s"
        time.sleep(0.02)
    assert resp.status_code in (200, 202)
    assert _wait(api, next_id, ("running", "completed"), timeout=10)["status"] in ("running", "completed")
    assert _wait(api, next_id, ("completed", "failed"))["status"] == "completed"
    # Nothing was stored for the canceled jobs, and they have no audio.
    with pymongo.MongoClient(mongo_server.url) as client:
        files = client[MONGO_DB]["audio.files"]
        assert files.count_documents({"metadata.job_id": long_id, "metadata.kind": "output"}) == 0
        assert files.count_documents({"metadata.job_id": dropped_id}) == 0
    gone = requests.get(f"{api}/jobs/{long_id}/audio", timeout=10)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "NOT_READY"


def test_one_at_a_time_a_person_watches_the_progress_bar_show_the_queue_then_the_percent(
        one_at_a_time: RunningServer, tmp_path) -> None:
    """In a real terminal the bar shows the queue position while another job holds the
    worker, then the model's percent, and the last line says where the file went."""
    assert shutil.which("tmux"), "tmux is installed by scripts/install.sh test"
    (tmp_path / "in.wav").write_bytes(make_wav(30))
    shell = Shell(one_at_a_time.url, tmp_path)
    # Hold the worker with a long job, so the bang has to queue behind it.
    api = f"{one_at_a_time.url}/api/v1"
    blocker = requests.post(f"{api}/generate", json={"prompt": "blocker", "duration": 90}, timeout=30).json()
    deadline = time.monotonic() + 30
    while _job(api, blocker["job_id"])["status"] != "running":
        assert time.monotonic() < deadline, "the blocking job never started"
        time.sleep(0.1)

    socket, session = f"g4l-cli-test-{os.getpid()}-{time.monotonic_ns()}", "cli"
    env = " ".join(f"{k}={shlex.quote(shell.env[k])}" for k in ("G4L_URL", "G4L_CLI_STATE", "PATH"))
    command = (f"env {env} {shlex.join(G4L)} bang in.wav -o watched.wav --model debug; "
               f"echo EXIT=$?; sleep 300")
    tmux = ["tmux", "-u", "-L", socket]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "30", "-c", str(shell.cwd),
                    command], check=True)
    screens: list[str] = []
    try:
        canceled = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True, check=True).stdout
            screens.append(screen)
            if not canceled and re.search(r"bang: queued #\d+", screen):
                # The person saw the queue; free the worker.
                requests.delete(f"{api}/jobs/{blocker['job_id']}", timeout=10)
                canceled = True
            if "EXIT=" in screen:
                break
            time.sleep(0.05)
    finally:
        subprocess.run([*tmux, "kill-session", "-t", session], capture_output=True)
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        if not canceled:
            requests.delete(f"{api}/jobs/{blocker['job_id']}", timeout=10)

    final = [line for line in screens[-1].splitlines() if line.strip()]
    assert final[-1] == "EXIT=0", screens[-1]
    assert re.fullmatch(r"wrote watched\.wav: 30\.0 s, 48000 Hz stereo, 5\.8 MB "
                        r"\(session [0-9a-f-]{36}, seed \d+, \d+\.\d s\)", final[-2]), final
    running = [screen for screen in screens if "EXIT=" not in screen]
    assert any(re.search(r"bang: queued #\d+ of \d+.*\|\s+0% ", s) for s in running), running[-1]
    # While the model ran: a percentage strictly between 0 and 100, on the bar's line.
    percents = {int(m) for s in running for m in re.findall(r"bang: generating\s+\|[^|]*\|\s+(\d+)%", s)}
    assert {p for p in percents if 0 < p < 100}, percents
    assert "bang: done" in final[-3] and "100%" in final[-3]
    assert seconds(shell.cwd / "watched.wav") == pytest.approx(30.0, abs=0.05)
