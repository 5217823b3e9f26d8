"""A station pushed live to an RTMP server, end to end (and recorded into files, last):
Debian's nginx with its RTMP module (started here on a free port, its own config, stopped
by PID) receives a station's output;
ffprobe reads H.264 and AAC from it; the audio is the very program the HLS listeners hear;
the RTMP server dies and comes back mid-stream and the output reconnects on its own; the
packager is killed and the output comes back with it; the stream key never shows.

One g4l server with API keys on (its own stores), the tiny model, a small video size.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import RunningServer, start_server, wait_until

from g4l import embedded
from g4l.hls.watch import PlaylistWatcher, decode_ts

KEY_A, KEY_B = "outputs-key-a-" + "a" * 20, "outputs-key-b-" + "b" * 20
A, B = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
RATE = 48_000
ENV = {"G4L_OUTPUT_SECONDS": "10", "G4L_STATION_BUFFER_S": "20", "G4L_STATION_PROMPT_SECONDS": "3",
       "G4L_STATION_LOW_BUFFER_S": "6", "G4L_API_KEYS": f"{KEY_A},{KEY_B}", "G4L_STATIONS_PER_KEY": "3",
       "G4L_RTMP_VIDEO_SIZE": "640x360", "G4L_RTMP_VIDEO_KBPS": "800", "G4L_STATION_MAX_OUTPUTS": "2",
       "G4L_RECORDING_SECONDS": "8", "G4L_RECORDING_RETENTION_HOURS": "0.01", "G4L_HLS_IDLE_TIMEOUT_S": "15"}
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")

pytestmark = pytest.mark.skipif(not (shutil.which("nginx") and NGINX_MODULE.exists()),
                                reason="nginx with its RTMP module is not installed (scripts/install.sh test)")


# ---------------------------------------------------------------- an RTMP server
class RtmpServer:
    """Debian's nginx with the RTMP module, in the foreground, on ``port``."""

    def __init__(self, prefix: Path, port: int) -> None:
        self.prefix, self.port = prefix, port
        self.proc: subprocess.Popen | None = None
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(f"""
load_module {NGINX_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
rtmp {{
  server {{
    listen 127.0.0.1:{port};
    chunk_size 4096;
    application live {{ live on; record off; }}
  }}
}}
""")

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live"

    def start(self) -> None:
        self.proc = subprocess.Popen(["nginx", "-p", str(self.prefix), "-e", str(self.prefix / "logs/error.log"),
                                      "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _accepts(self.port), 10, "nginx to listen")

    def kill(self) -> None:
        """Gone at once, as a crashed server is (no goodbye to its publishers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class OutputsServer:
    tmp: Path
    server: RunningServer
    rtmp: RtmpServer

    @property
    def url(self) -> str:
        return self.server.url

    def log_text(self) -> str:
        return (self.tmp / "server.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Iterator[OutputsServer]:
    tmp = tmp_path_factory.mktemp("outputs-server")
    rtmp = RtmpServer(tmp / "nginx", embedded.free_port())
    rtmp.start()
    r = embedded.start_redis(tmp / "redis")
    m = embedded.start_mongo(tmp / "mongo")
    s = OutputsServer(tmp, start_server(tmp, redis_url=r.url, mongo_url=m.url, **ENV), rtmp)
    yield s
    s.server.stop()
    rtmp.stop()
    m.stop()
    r.stop()


# ---------------------------------------------------------------- helpers
def start_station(srv: OutputsServer, headers: dict, **body) -> dict:
    resp = requests.post(f"{srv.url}/api/v1/stations", json={"model": "debug", **body}, headers=headers, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def station(srv: OutputsServer, station_id: str, headers: dict = A) -> dict:
    resp = requests.get(f"{srv.url}/api/v1/stations/{station_id}", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def output_of(srv: OutputsServer, station_id: str, output_id: str, key: str) -> dict:
    resp = requests.get(f"{srv.url}/api/v1/stations/{station_id}", headers=A, timeout=10)
    assert key not in resp.text, "the stream key came back in a station's status"
    return next(o for o in resp.json()["outputs"] if o["output_id"] == output_id)


def probe(url: str, *entries: str, extra: tuple[str, ...] = ()) -> dict:
    proc = subprocess.run(["ffprobe", "-v", "error", "-rw_timeout", "15000000", *extra, "-show_entries",
                           ",".join(entries), "-of", "json", url], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    return json.loads(proc.stdout)


def capture_audio(url: str, seconds: float) -> np.ndarray:
    proc = subprocess.run(["ffmpeg", "-v", "error", "-rw_timeout", "15000000", "-i", url, "-t", str(seconds), "-vn",
                           "-f", "f32le", "-ac", "2", "-ar", str(RATE), "pipe:1"], capture_output=True, timeout=90)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-500:]
    return np.frombuffer(proc.stdout, np.float32).reshape(-1, 2).T


def best_match(excerpt: np.ndarray, haystack: np.ndarray) -> tuple[float, int]:
    """(normalised cross-correlation peak, offset) of a mono ``excerpt`` inside ``haystack``
    (FFT correlation; window energies by a running sum: a direct np.convolve of the two,
    2 s against the whole playlist, was 10^11 multiplications, minutes of CPU)."""
    n = len(haystack) + len(excerpt)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(excerpt, size)), size)
    corr = corr[: len(haystack) - len(excerpt) + 1]
    sums = np.concatenate([[0.0], np.cumsum(haystack.astype(np.float64) ** 2)])
    energy = sums[len(excerpt):] - sums[: len(sums) - len(excerpt)]
    ref = float(np.sum(excerpt.astype(np.float64) ** 2))
    # Near-silent windows are skipped: there the FFT's rounding noise would dominate.
    ncc = np.where(energy > 0.05 * ref, corr / np.sqrt(ref * np.maximum(energy, 1e-12)), 0.0)
    at = int(np.argmax(ncc))
    return float(ncc[at]), at


def ffmpeg_pushers(port: int) -> list[int]:
    """PIDs of processes whose command line pushes to ``port`` (the outputs' ffmpeg)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"ffmpeg") and any(f"rtmp://127.0.0.1:{port}/".encode() in a for a in cmd) \
                and b"pipe:0" in cmd:
            found.append(int(entry.name))
    return found


def processes_with_in_args(text: str) -> list[int]:
    """PIDs of every process whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def child_pid(parent: int, module: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and module.encode() in cmd:
            return int(entry.name)
    return None


# ---------------------------------------------------------------- the story
def test_a_station_goes_live_over_rtmp_reconnects_after_the_server_restarts_and_stops(outputs) -> None:
    srv = outputs
    st = start_station(srv, A, prompt="warm analog synth pads", name="Night Shift Radio")
    sid = st["station_id"]
    key = "live-" + secrets.token_hex(12)
    resp = requests.post(f"{srv.url}/api/v1/stations/{sid}/outputs",
                         json={"url": srv.rtmp.url, "stream_key": key}, headers=A, timeout=10)
    assert resp.status_code == 201, resp.text
    assert key not in resp.text
    created = resp.json()
    oid = created["output_id"]
    assert created == {"output_id": oid, "station_id": sid, "url": srv.rtmp.url, "visual": "card",
                       "state": "connecting"}

    t0 = time.monotonic()
    wait_until(lambda: output_of(srv, sid, oid, key)["state"] == "connected", 30, "the output to connect")
    print(f"\noutput connected {time.monotonic() - t0:.1f} s after it was added")
    # The key is in no process's arguments (ps shows those to every local user); its ffmpeg
    # reads it from a pipe (docs/hls.md).
    pushers = ffmpeg_pushers(srv.rtmp.port)
    assert len(pushers) == 1, pushers
    assert key.encode() not in Path(f"/proc/{pushers[0]}/cmdline").read_bytes()
    assert processes_with_in_args(key) == []

    # What a platform receives: H.264 (keyframes every 2 s) and AAC, in FLV over RTMP.
    live = f"{srv.rtmp.url}/{key}"
    info = probe(live, "stream=codec_name,codec_type,width,height,r_frame_rate,sample_rate,channels,profile")
    streams = {s["codec_type"]: s for s in info["streams"]}
    print("ffprobe:", json.dumps(info["streams"]))
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 360)
    assert streams["video"]["r_frame_rate"] == "30/1"
    assert streams["audio"]["codec_name"] == "aac" and streams["audio"]["profile"] == "LC"
    assert int(streams["audio"]["sample_rate"]) == RATE and streams["audio"]["channels"] == 2
    frames = probe(live, "frame=key_frame,pts_time", extra=("-select_streams", "v:0", "-read_intervals", "%+7"))
    keys_at = [float(f["pts_time"]) for f in frames["frames"] if f.get("key_frame") == 1 and "pts_time" in f]
    gaps = np.diff(keys_at)
    print(f"keyframes at {keys_at}")
    assert len(gaps) >= 2 and np.allclose(gaps, 2.0, atol=0.05), keys_at

    # The audio is the station's program: a stretch of it is found in what HLS listeners get.
    wait_until(lambda: station(srv, sid)["generations"] >= 1 and station(srv, sid)["played_seconds"] > 12, 90,
               "the station to play music")
    watcher = PlaylistWatcher(srv.url + st["playlist_url"]).start()
    try:
        pushed = capture_audio(live, 8.0)
        time.sleep(9.0)  # HLS lists that audio a segment or two later
    finally:
        watcher.stop()
    heard = decode_ts(b"".join(s.data for s in watcher.ordered()))
    excerpt = pushed.mean(axis=0)[3 * RATE: 5 * RATE]
    assert np.sqrt(np.mean(excerpt ** 2)) > 1e-3, "the output carries silence"
    score, at = best_match(excerpt, heard.mean(axis=0))
    print(f"RTMP audio found in the HLS program: correlation {score:.3f} at {at / RATE:.2f} s "
          f"of {heard.shape[1] / RATE:.1f} s heard")
    assert score > 0.9

    # The RTMP server crashes and comes back: the output reconnects on its own.
    before = output_of(srv, sid, oid, key)
    assert before["state"] == "connected" and before["uptime_s"] > 0 and before["bitrate_kbps"] > 100
    srv.rtmp.kill()
    wait_until(lambda: output_of(srv, sid, oid, key)["state"] == "reconnecting", 15, "the drop to be noticed")
    time.sleep(2.0)
    srv.rtmp.start()
    back = time.monotonic()
    after = wait_until(lambda: (lambda o: o if o["state"] == "connected" else None)(output_of(srv, sid, oid, key)),
                       20, "the output to reconnect")
    reconnect_s = time.monotonic() - back
    print(f"reconnected {reconnect_s:.1f} s after the RTMP server came back (down 2 s); status {after}")
    assert after["reconnects"] == before["reconnects"] + 1
    assert after["uptime_s"] < before["uptime_s"] + reconnect_s + 5  # a new connection
    assert after["last_error"] and key not in after["last_error"]
    again = probe(live, "stream=codec_name")
    assert sorted(s["codec_name"] for s in again["streams"]) == ["aac", "h264"]

    # DELETE stops it: its ffmpeg ends, the status says stopped.
    assert ffmpeg_pushers(srv.rtmp.port)
    resp = requests.delete(f"{srv.url}/api/v1/stations/{sid}/outputs/{oid}", headers=A, timeout=10)
    assert resp.status_code == 200 and resp.json() == {"output_id": oid, "station_id": sid, "state": "stopped"}
    wait_until(lambda: not ffmpeg_pushers(srv.rtmp.port), 10, "its ffmpeg to exit")
    gone = output_of(srv, sid, oid, key)
    assert gone["state"] == "stopped" and gone["bitrate_kbps"] == 0
    time.sleep(1.5)  # a packager tick later it still says stopped
    assert output_of(srv, sid, oid, key)["state"] == "stopped"
    assert requests.delete(f"{srv.url}/api/v1/stations/{sid}/outputs/{oid}", headers=A,
                           timeout=10).status_code == 200  # stopping twice is harmless

    # The key never showed: not in any reply above, not in any log line.
    assert key not in srv.log_text()
    assert key not in requests.get(f"{srv.url}/api/v1/stations", headers=A, timeout=10).text
    requests.delete(f"{srv.url}/api/v1/stations/{sid}", headers=A, timeout=10)


def test_an_uploaded_image_is_the_video_and_the_output_survives_a_packager_restart(outputs) -> None:
    srv = outputs
    st = start_station(srv, A, prompt="dub techno")
    created_at = time.monotonic()
    sid = st["station_id"]
    png = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=0xff0000:s=320x240", "-frames:v",
                          "1", "-f", "image2", "-c:v", "png", "pipe:1"], capture_output=True, check=True).stdout
    key = "img-" + secrets.token_hex(10)
    resp = requests.post(f"{srv.url}/api/v1/stations/{sid}/outputs", headers=A, timeout=30, json={
        "url": srv.rtmp.url + "/", "stream_key": key, "visual": base64.b64encode(png).decode()})
    assert resp.status_code == 201, resp.text
    oid = resp.json()["output_id"]
    assert resp.json()["visual"] == "image" and resp.json()["url"] == srv.rtmp.url
    wait_until(lambda: output_of(srv, sid, oid, key)["state"] == "connected", 30, "the output to connect")
    assert processes_with_in_args(key) == []

    # The picture, letterboxed into 640x360: red in the middle, black at the sides.
    live = f"{srv.rtmp.url}/{key}"
    frame = subprocess.run(["ffmpeg", "-v", "error", "-rw_timeout", "15000000", "-i", live, "-frames:v", "1",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, timeout=60).stdout
    img = np.frombuffer(frame, np.uint8).reshape(360, 640, 3).astype(int)
    assert img[180, 320, 0] > 200 and img[180, 320, 1] < 60, img[180, 320]
    assert img[180, 10].max() < 40, img[180, 10]

    # The packager dies (kill -9); the launcher starts it again and it takes the output back.
    before = output_of(srv, sid, oid, key)
    packager = child_pid(srv.server.proc.pid, "g4l.hls")
    assert packager is not None
    os.kill(packager, signal.SIGKILL)
    killed = time.monotonic()
    after = wait_until(lambda: (lambda o: o if o["state"] == "connected" and o["reconnects"] > before["reconnects"]
                                else None)(output_of(srv, sid, oid, key)), 60, "the output to come back")
    print(f"\noutput back {time.monotonic() - killed:.1f} s after the packager was killed: {after}")
    assert child_pid(srv.server.proc.pid, "g4l.hls") not in (None, packager)
    # The dead packager's ffmpeg ends at its stdin's EOF, a moment after (up to seconds on
    # a loaded box), not never: it must not go on pushing beside the new one.
    wait_until(lambda: len(ffmpeg_pushers(srv.rtmp.port)) == 1, 15, "the dead packager's ffmpeg to stop pushing")
    assert sorted(s["codec_name"] for s in probe(live, "stream=codec_name")["streams"]) == ["aac", "h264"]

    # Nobody listened over HLS for longer than G4L_HLS_IDLE_TIMEOUT_S (15 s here) plus the
    # cleanup's period (10 s): a station that pushes to an output is not idle.
    time.sleep(max(0.0, created_at + 30 - time.monotonic()))
    assert station(srv, sid)["status"] == "running"

    # Stopping the station stops its outputs.
    assert requests.delete(f"{srv.url}/api/v1/stations/{sid}", headers=A, timeout=10).status_code == 200
    wait_until(lambda: not ffmpeg_pushers(srv.rtmp.port), 15, "the outputs' ffmpeg to exit")
    assert output_of(srv, sid, oid, key)["state"] == "stopped"
    assert key not in srv.log_text()


def test_output_requests_are_checked_and_belong_to_the_station_owner(outputs) -> None:
    srv = outputs
    sid = start_station(srv, A, prompt="minimal house")["station_id"]
    url = f"{srv.url}/api/v1/stations/{sid}/outputs"

    def post(body: dict, headers: dict = A) -> requests.Response:
        return requests.post(url, json=body, headers=headers, timeout=30)

    for body, needle in [({"url": "http://example.com/live", "stream_key": "k"}, "rtmp://"),
                         ({"url": "srt://example.com:9000", "stream_key": "k"}, "rtmp://"),
                         ({"url": "rtmp://", "stream_key": "k"}, "host"),
                         ({"url": "rtmp://example.com", "stream_key": "k"}, "application"),
                         ({"url": "rtmp://user:pw@example.com/live", "stream_key": "k"}, "credentials"),
                         ({"url": "rtmp://example.com/live"}, "stream_key"),
                         ({"url": "rtmp://example.com/live", "stream_key": "  "}, "stream_key"),
                         ({"url": "rtmp://example.com/live", "stream_key": "k", "visual": "not base64!"}, "base64"),
                         ({"url": "rtmp://example.com/live", "stream_key": "k",
                           "visual": base64.b64encode(b"just some text, no picture").decode()}, "image")]:
        resp = post(body)
        assert resp.status_code == 400, (body, resp.text)
        err = resp.json()["error"]
        assert err["code"] == "INVALID_REQUEST" and needle in err["message"], (body, err)
    assert station(srv, sid)["outputs"] == []  # a refused request changed nothing

    # Unknown station, another key's station, unknown output: 404.
    unknown = requests.post(f"{srv.url}/api/v1/stations/{'0' * 36}/outputs", headers=A, timeout=10,
                            json={"url": "rtmp://example.com/live", "stream_key": "k"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "STATION_NOT_FOUND"
    theirs = post({"url": "rtmp://example.com/live", "stream_key": "k"}, headers=B)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "STATION_NOT_FOUND"
    assert requests.post(url, json={"url": "rtmp://example.com/live", "stream_key": "k"},
                         timeout=10).status_code == 401

    # An unreachable server: the output keeps trying, says why, and the limit holds.
    dead = f"rtmp://127.0.0.1:{embedded.free_port()}/live"
    first = post({"url": dead, "stream_key": "dead-key-1"})
    assert first.status_code == 201, first.text
    oid = first.json()["output_id"]
    failing = wait_until(lambda: (lambda o: o if o["failed_attempts"] >= 2 else None)(
        output_of(srv, sid, oid, "dead-key-1")), 30, "failed attempts to be reported")
    print(f"\nunreachable output: {failing}")
    assert failing["state"] == "connecting" and failing["last_error"]
    assert "dead-key-1" not in failing["last_error"]
    assert post({"url": dead, "stream_key": "dead-key-2"}).status_code == 201
    full = post({"url": dead, "stream_key": "dead-key-3"})
    assert full.status_code == 409 and full.json()["error"]["code"] == "OUTPUTS_FULL"

    other = requests.delete(f"{url}/{oid}", headers=B, timeout=10)
    assert other.status_code == 404 and other.json()["error"]["code"] == "STATION_NOT_FOUND"
    missing = requests.delete(f"{url}/{'f' * 32}", headers=A, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "OUTPUT_NOT_FOUND"
    assert requests.delete(f"{url}/{oid}", headers=A, timeout=10).status_code == 200
    assert post({"url": dead, "stream_key": "dead-key-4"}).status_code == 201  # a slot is free again

    assert requests.delete(f"{srv.url}/api/v1/stations/{sid}", headers=A, timeout=10).status_code == 200
    stopped = post({"url": dead, "stream_key": "k"})
    assert stopped.status_code == 400 and "stopped" in stopped.json()["error"]["message"]
    assert all(o["state"] == "stopped" for o in station(srv, sid)["outputs"])
    assert "dead-key" not in srv.log_text()


# ---------------------------------------------------------------- recordings
def test_a_recorded_station_is_kept_in_files_of_the_configured_length(outputs) -> None:
    srv = outputs
    sid = start_station(srv, A, prompt="deep ambient drones", record=True)["station_id"]
    assert station(srv, sid)["recording"] is True
    url = f"{srv.url}/api/v1/stations/{sid}/recordings"

    def listed() -> list[dict]:
        resp = requests.get(url, headers=A, timeout=10)
        assert resp.status_code == 200, resp.text
        return resp.json()["recordings"]

    recs = wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(listed()), 60, "two finished recordings")
    print(f"\nrecordings: {recs}")
    first = recs[0]
    # 8 s rounded down to whole AAC frames: 375 frames of 1024 samples.
    assert all(abs(r["duration_s"] - 375 * 1024 / RATE) < 0.002 for r in recs), recs
    assert abs(recs[1]["started_at"] - first["started_at"] - first["duration_s"]) < 0.1, recs
    data = requests.get(srv.url + first["url"], headers=A, timeout=30)
    assert data.status_code == 200 and data.headers["Content-Type"] == "audio/mp4"
    assert len(data.content) == first["bytes"] and data.headers["Accept-Ranges"] == "bytes"
    probed = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                             "format=duration:stream=codec_name,sample_rate,channels", "-of", "json", "-"],
                            input=data.content, capture_output=True, timeout=30)
    info = json.loads(probed.stdout)
    print(f"ffprobe of the first recording: {info}")
    assert info["streams"][0]["codec_name"] == "aac" and int(info["streams"][0]["sample_rate"]) == RATE
    assert abs(float(info["format"]["duration"]) - 8.0) < 0.1
    part = requests.get(srv.url + first["url"], headers={**A, "Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == data.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{first['bytes']}"

    other = requests.get(url, headers=B, timeout=10)
    assert other.status_code == 404 and other.json()["error"]["code"] == "STATION_NOT_FOUND"
    assert requests.get(srv.url + first["url"], headers=B, timeout=10).status_code == 404
    missing = requests.get(f"{url}/{'0' * 32}", headers=A, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"

    # Retention (36 s here): the oldest file goes, from the list and from the store.
    wait_until(lambda: first["recording_id"] not in [r["recording_id"] for r in listed()], 90,
               "the first recording to pass its retention")
    assert requests.get(srv.url + first["url"], headers=A, timeout=10).status_code == 404
    assert station(srv, sid)["status"] == "running"  # recorded: never idle, though nobody listened
    assert requests.delete(f"{srv.url}/api/v1/stations/{sid}", headers=A, timeout=10).status_code == 200
    assert station(srv, sid)["recording"] is False


def test_a_recording_cut_by_a_killed_packager_is_stored_playable_on_its_next_start(outputs) -> None:
    srv = outputs
    sid = start_station(srv, A, prompt="slow dub chords", record=True)["station_id"]
    url = f"{srv.url}/api/v1/stations/{sid}/recordings"

    def listed() -> list[dict]:
        return requests.get(url, headers=A, timeout=10).json()["recordings"]

    wait_until(lambda: listed(), 60, "a first finished recording (the recorder runs)")
    folder = srv.tmp / "hls" / ".recordings" / sid
    packager = child_pid(srv.server.proc.pid, "g4l.hls")
    assert packager is not None
    recorder = child_pid(packager, "mp4")  # the recorder's ffmpeg (the HLS encoder writes mpegts)
    assert recorder is not None
    # Mid-file: a few seconds into one of the 8 s files (ffmpeg flushes a fragment a second).
    open_file = wait_until(lambda: next((p for p in folder.glob("rec_*.m4a") if p.stat().st_size > 60_000), None),
                           30, "a file a few seconds long")
    # The hardest cut: the packager and its ffmpeg both killed, so nobody closes the file.
    os.kill(recorder, signal.SIGKILL)
    os.kill(packager, signal.SIGKILL)
    time.sleep(0.5)
    left = folder / open_file.name
    assert left.exists(), "the open file was not left behind"
    print(f"\nleft behind: {left.name}, {left.stat().st_size} bytes")
    prefix_ms, index = (int(v) for v in left.stem.split("_")[1:])
    expected_start = prefix_ms / 1000 + index * 375 * 1024 / RATE

    # The next packager stores it: listed, shorter than a whole file, and it plays.
    rec = wait_until(lambda: next((r for r in listed() if abs(r["started_at"] - expected_start) < 0.01), None), 90,
                     "the cut recording to be listed")
    print(f"recovered: {rec}")
    assert 1.0 < rec["duration_s"] < 8.0, rec
    assert not left.exists()  # stored, then deleted
    data = requests.get(srv.url + rec["url"], headers=A, timeout=30)
    assert data.status_code == 200 and len(data.content) == rec["bytes"]
    probed = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name,sample_rate",
                             "-of", "json", "-"], input=data.content, capture_output=True, timeout=30)
    info = json.loads(probed.stdout)
    assert info["streams"][0]["codec_name"] == "aac" and int(info["streams"][0]["sample_rate"]) == RATE
    assert abs(float(info["format"]["duration"]) - rec["duration_s"]) < 0.1
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "f32le", "-ac", "2", "pipe:1"],
                             input=data.content, capture_output=True, timeout=60)
    assert decoded.returncode == 0 and not decoded.stderr, decoded.stderr[-500:]
    pcm = np.frombuffer(decoded.stdout, np.float32)
    assert len(pcm) / 2 / RATE == pytest.approx(rec["duration_s"], abs=0.1)
    assert np.sqrt(np.mean(pcm ** 2)) > 1e-3, "the recovered file is silent"
    # And the station records on, in new files.
    wait_until(lambda: any(r["started_at"] > rec["started_at"] + 1 for r in listed()), 60, "recording to go on")
    assert requests.delete(f"{srv.url}/api/v1/stations/{sid}", headers=A, timeout=10).status_code == 200
