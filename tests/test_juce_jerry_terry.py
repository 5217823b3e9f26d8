"""gary4juce's jerry (generate, smart loop) and terry (transform, poll, undo) over plain HTTP,
exactly as the plugin sends and reads them (PluginEditor.{Jerry,Terry,Backend}.cpp,
PluginEditor.cpp's poll, PluginProcessor.cpp's getServiceUrl and health check; CLIENTS.md has
the line references): JUCE JSON bodies, JUCE WAVs (JUNK chunk), one poll at a time, only the
fields the plugin reads. Remote mode: one host, jerry under /audio/. Localhost mode: jerry on
its own port (8005 in the plugin) and terry on its own (8002); the server takes them from
G4L_JERRY_PORT / G4L_TERRY_PORT, here free ports.

Every flow here is served (issue 19): the localhost ports, jerry's and terry's."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import soundfile as sf
from conftest import RunningServer, make_wav, read_wav, start_server, wait_until
from test_juce_client import HEALTHY, b64, juce_json, with_junk

from g4l import embedded

JERRY_RATE = 44_100
#: What marks a service offline in the plugin's health readers (PluginProcessor.cpp, Backend.cpp).
OFFLINE = ("unhealthy", "failed", "down", "error")
pytestmark = [pytest.mark.slow]


@dataclass
class Plugin:
    """The plugin's calls in one backend mode, and its reading of the replies."""

    gary: str  # getServiceUrl(Gary, ""): the server in remote mode, localhost:8000 locally
    jerry: str  # getServiceUrl(Jerry, "")
    terry: str  # getServiceUrl(Terry, "")
    localhost: bool

    def __post_init__(self) -> None:
        self.http = requests.Session()

    # ---------------------------------------------------------------- wire
    def post(self, url: str, fields: dict, timeout: float = 120) -> tuple[int, dict]:
        """withPOSTData(JSON) + Content-Type: application/json; the plugin reads the body only."""
        resp = self.http.post(url, data=juce_json(fields).encode(), headers={"Content-Type": "application/json"},
                              timeout=timeout)
        return resp.status_code, resp.json()

    def jerry_url(self, endpoint: str) -> str:
        """Jerry's generate/models endpoints: bare on the local port, under /audio/ remotely
        (PluginEditor.Jerry.cpp generate: /generate vs /audio/generate; models/status alike)."""
        return self.jerry + (endpoint if self.localhost else "/audio" + endpoint)

    # ---------------------------------------------------------------- jerry
    def jerry_generate(self, prompt: str, bpm: int, loop_type: str | None = None, **extra: object) -> tuple[int, dict]:
        fields: dict[str, object] = {"prompt": f"{prompt} {bpm}bpm", "steps": 8, "cfg_scale": 1.0,
                                     "return_format": "base64", "seed": -1, "model_type": "standard",
                                     "sampler_type": "pingpong"}
        if loop_type is not None:
            fields["loop_type"] = loop_type
        fields.update(extra)
        return self.post(self.jerry_url("/generate/loop" if loop_type is not None else "/generate"), fields)

    # ---------------------------------------------------------------- terry
    def transform(self, audio: bytes, variation: str = "accordion_folk", *, midpoint: bool = False,
                  custom_prompt: str = "", seed: int = -1, flowstep: float = 0.13) -> tuple[int, dict]:
        """PluginEditor.Terry.cpp: audio, flowstep (float), solver always, seed, variation
        (accordion_folk beside a custom prompt); never a session_id."""
        fields: dict[str, object] = {"audio_data": b64(audio), "flowstep": flowstep,
                                     "solver": "midpoint" if midpoint else "euler", "seed": seed}
        if custom_prompt:
            fields.update(variation="accordion_folk", custom_prompt=custom_prompt)
        else:
            fields["variation"] = variation
        return self.post(self.terry + "/api/juce/transform_audio", fields)

    def wait(self, session_id: str, poll_s: float = 0.3, timeout: float = 300) -> tuple[bytes, dict, list[dict]]:
        """Poll terry's poll_status as the plugin does until it would stop (PluginEditor.cpp
        pollForResults / handlePollingResponse); fail where it would fail."""
        polls: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.http.get(f"{self.terry}/api/juce/poll_status/{session_id}", timeout=8,
                                  headers={"Accept": "application/json", "Content-Type": "application/json"}).json()
            polls.append(reply)
            assert reply.get("success") is True, reply  # success false: "processing failed: <error>"
            if reply.get("generation_in_progress") or reply.get("transform_in_progress"):
                # A transform polls as a transform ("transforming: N%"), with a queue status
                # (the stall rule resets on it) and a progress in 0-100.
                assert reply.get("transform_in_progress") is True and not reply.get("generation_in_progress"), reply
                qs = reply.get("queue_status")
                assert isinstance(qs, dict) and qs.get("status"), reply
                assert 0 <= reply["progress"] <= 100, reply
                time.sleep(poll_s)
                continue
            assert reply["status"] == "completed" and reply.get("audio_data"), reply
            return base64.b64decode(reply["audio_data"]), reply, polls
        raise AssertionError(f"transform {session_id} not done in {timeout} s; last poll {polls[-1:]}")

    def undo(self, session_id: str) -> tuple[int, dict]:
        return self.post(self.terry + "/api/juce/undo_transform", {"session_id": session_id}, timeout=15)


def wav_of(data: bytes) -> sf._SoundFileInfo:
    return sf.info(io.BytesIO(data))


def samples_equal(a: bytes, b: bytes) -> bool:
    (x, ra), (y, rb) = read_wav(a), read_wav(b)
    return ra == rb and x.shape == y.shape and bool((x == y).all())


def refused(status: int, reply: dict) -> str:
    """A refusal as the plugin reads it: success not true, ``error`` a plain string."""
    assert status >= 400 and reply.get("success") is not True, (status, reply)
    assert isinstance(reply.get("error"), str) and reply["error"], reply
    return reply["error"]


# ---------------------------------------------------------------- the flows
def check_health_remote(plugin: Plugin) -> None:
    """checkBackendHealth: backendBaseUrl + /health, HTTP < 400 and status in the healthy set."""
    resp = plugin.http.get(plugin.gary + "/health", headers={"Accept": "application/json"}, timeout=3)
    assert resp.status_code < 400 and resp.json()["status"].strip().lower() in HEALTHY, resp.text[:300]


def check_jerry_models(plugin: Plugin) -> None:
    """fetchJerryModels: GET (/audio)/models/status; needs model_details {key: {source, type}};
    cache_status.usage_order's last entry is the live model."""
    resp = plugin.http.get(plugin.jerry_url("/models/status"), timeout=10)
    body = resp.json()
    details = body["model_details"]
    assert isinstance(details, dict) and details, body
    for key, model in details.items():
        assert model["type"] in ("standard", "finetune") and isinstance(model["source"], str), (key, model)
    assert any(m["type"] == "standard" for m in details.values()), "the plugin's default is the standard model"
    order = body.get("cache_status", {}).get("usage_order")
    if order:
        assert order[-1] in details, body


def check_jerry(plugin: Plugin) -> None:
    """generate, then smart loops: the answer the plugin reads and the audio it saves."""
    status, reply = plugin.jerry_generate("lofi hip hop drums", 120)
    assert status == 200 and reply["success"] is True and reply["audio_base64"], (status, str(reply)[:500])
    meta = reply["metadata"]
    for field in ("generation_time", "realtime_factor"):  # shown as "jerry's done already <t>s (<rt>x RT)"
        assert isinstance(meta[field], (int, float)), meta
    assert isinstance(meta["seed"], int) and meta["seed"] >= 0, meta  # seed -1: picked and reported
    take = base64.b64decode(reply["audio_base64"])
    info = wav_of(take)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (JERRY_RATE, 2, "PCM_16", 11 * JERRY_RATE)

    for loop_type in ("auto", "drums", "instruments"):
        status, reply = plugin.jerry_generate("lofi hip hop drums", 120, loop_type=loop_type)
        assert status == 200 and reply["success"] is True, (loop_type, status, str(reply)[:500])
        meta = reply["metadata"]
        # "smart loop rdy <bars> bars (<loop_duration_seconds>s)": auto takes the most bars that
        # fit in 11 s: 4 bars of 2 s at 120 bpm.
        assert meta["bars"] == 4 and meta["loop_duration_seconds"] == pytest.approx(8.0), meta
        info = wav_of(base64.b64decode(reply["audio_base64"]))
        assert (info.samplerate, info.channels, info.frames) == (JERRY_RATE, 2, 8 * JERRY_RATE), loop_type

    # Refusals the plugin shows as "jerry error: <error>".
    no_bpm = {"prompt": "lofi hip hop drums", "steps": 8, "cfg_scale": 1.0, "return_format": "base64", "seed": -1,
              "model_type": "standard", "sampler_type": "pingpong", "loop_type": "auto"}
    status, reply = plugin.post(plugin.jerry_url("/generate/loop"), no_bpm)
    assert "bpm" in refused(status, reply).lower()
    status, reply = plugin.jerry_generate("lofi hip hop drums", 120, steps=8.5)
    refused(status, reply)


def check_terry(plugin: Plugin) -> None:
    """transform twice (a preset with euler, a custom prompt with midpoint), poll, undo; the
    seed; refusals. The plugin transforms the file it holds (myOutput.wav, JUCE-written)."""
    source = with_junk(make_wav(8))
    status, reply = plugin.transform(source, "lofi_chill")
    assert status == 200 and reply["success"] is True and reply["session_id"], (status, reply)
    first_sid = reply["session_id"]
    first, done, _ = plugin.wait(first_sid)
    assert done["transform_in_progress"] is False and done["generation_in_progress"] is False
    info, src = wav_of(first), wav_of(source)
    assert (info.samplerate, info.frames, info.channels) == (src.samplerate, src.frames, 2)
    assert not samples_equal(first, source)

    # The plugin saves the result and transforms THAT next, again without a session id.
    status, reply = plugin.transform(first, midpoint=True, custom_prompt="warm analog synth pads")
    assert status == 200 and reply["success"] is True and reply["session_id"], (status, reply)
    second, _, _ = plugin.wait(reply["session_id"])
    assert (wav_of(second).samplerate, wav_of(second).frames) == (info.samplerate, info.frames)
    assert not samples_equal(second, first)

    # Undo: the audio the last transform started from.
    status, undone = plugin.undo(reply["session_id"])
    assert status == 200 and undone["success"] is True and undone["audio_data"], (status, str(undone)[:300])
    assert undone["session_id"] == reply["session_id"]
    assert samples_equal(base64.b64decode(undone["audio_data"]), first)
    refused(*plugin.undo(reply["session_id"]))  # nothing left to undo
    refused(*plugin.undo("no-such-session"))

    # The seed the plugin sends (terryUI's, -1 = pick one) is honoured and echoed.
    runs = []
    for _ in range(2):
        status, reply = plugin.transform(source, "synth_edm", seed=1234)
        assert status == 200 and reply["success"] is True, reply
        if "seed" in reply:
            assert str(reply["seed"]) == "1234", reply
        runs.append(plugin.wait(reply["session_id"])[0])
    assert samples_equal(*runs), "the same seed and input gave different audio"

    # Refusals the plugin shows as "terry error: <error>"; nothing is queued.
    error = refused(*plugin.transform(source, "not_a_preset"))
    assert error == "Unknown variation: not_a_preset"
    status, reply = plugin.post(plugin.terry + "/api/juce/transform_audio",
                                {"audio_data": b64(source), "flowstep": 0.13, "solver": "rk4", "seed": -1,
                                 "variation": "lofi_chill"})
    assert "solver" in refused(status, reply).lower()
    refused(*plugin.transform(source, "lofi_chill", flowstep=0.0))


# ---------------------------------------------------------------- remote mode
def remote(server: RunningServer) -> Plugin:
    return Plugin(gary=server.url, jerry=server.url, terry=server.url, localhost=False)


def test_remote_jerry_generate_and_smart_loop(server) -> None:
    plugin = remote(server)
    check_health_remote(plugin)
    check_jerry_models(plugin)
    check_jerry(plugin)


def test_remote_terry_transform_poll_and_undo(server) -> None:
    plugin = remote(server)
    check_health_remote(plugin)
    check_terry(plugin)


# ---------------------------------------------------------------- localhost mode
def probe_raw(port: int) -> bool:
    """The plugin's Windows localhost probe (PluginEditor.Backend.cpp probeLocalhostHealth): a
    raw HTTP/1.1 GET /health with Connection: close; online = 2xx, a framed body (Content-Length
    or chunked) within a second, and a status not in the offline set."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.4) as s:
        s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
                  "Connection: close\r\n\r\n".encode())
        s.settimeout(1.0)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    code = int(head.split(b"\r\n")[0].split()[1])
    headers = head.decode("latin-1").lower()
    if "transfer-encoding: chunked" in headers:
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    else:
        match = re.search(r"content-length:\s*(\d+)", headers)
        if match is None or len(body) < int(match.group(1)):
            return False
    status = str(json.loads(body).get("status", "")).strip().lower() if body.strip() else ""
    return 200 <= code < 300 and bool(body.strip()) and status not in OFFLINE


def probe_url(port: int) -> bool:
    """The macOS/Linux probe: GET http://127.0.0.1:<port>/health; offline on a status >= 400 or
    a status field in the offline set; any other non-empty body is online."""
    resp = requests.get(f"http://127.0.0.1:{port}/health", headers={"Accept": "application/json"}, timeout=1.5)
    if resp.status_code >= 400 or not resp.text.strip():
        return False
    try:
        status = str(resp.json().get("status", "")).strip().lower()
    except ValueError:
        return True
    return status not in OFFLINE


def _online(port: int) -> bool:
    try:
        return probe_url(port)
    except requests.RequestException:
        return False


@dataclass
class LocalStack:
    server: RunningServer
    jerry_port: int
    terry_port: int


@pytest.fixture(scope="module")
def local_stack(server) -> Iterator[LocalStack]:
    """The shared server: its jerry's and terry's localhost ports are on free ports (conftest)."""
    yield LocalStack(server, int(server.env["G4L_JERRY_PORT"]), int(server.env["G4L_TERRY_PORT"]))


def local(stack: LocalStack) -> Plugin:
    return Plugin(gary=stack.server.url, jerry=f"http://localhost:{stack.jerry_port}",
                  terry=f"http://localhost:{stack.terry_port}", localhost=True)


def test_localhost_ports_answer_the_plugins_health_probes(local_stack: LocalStack) -> None:
    for port in (local_stack.jerry_port, local_stack.terry_port):
        assert probe_url(port), f"port {port} reads offline (URL probe)"
        assert probe_raw(port), f"port {port} reads offline (raw Windows probe)"


def test_localhost_jerry_generate_and_smart_loop(local_stack: LocalStack) -> None:
    plugin = local(local_stack)
    check_jerry_models(plugin)
    check_jerry(plugin)


def test_localhost_terry_transform_poll_and_undo(local_stack: LocalStack) -> None:
    check_terry(local(local_stack))


def test_a_taken_localhost_port_is_skipped_with_a_clear_log_line(redis_server, mongo_server, tmp_path) -> None:
    """Another program on jerry's port: the server still starts, says so, and terry's port works."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        terry_port = embedded.free_port()
        s = start_server(tmp_path, redis_url=redis_server.url, mongo_url=mongo_server.url,
                         G4L_JERRY_PORT=str(busy), G4L_TERRY_PORT=str(terry_port))
        try:
            assert s.health()[0] == 200
            assert wait_until(lambda: _online(terry_port), 30, "terry's port")
            log = (tmp_path / "server.log").read_text() + "\n".join(s.lines)
            assert any(re.search(rf"\b{busy}\b", line) and "jerry" in line.lower() for line in log.splitlines()), \
                "no log line names jerry's taken port"
        finally:
            s.stop()
