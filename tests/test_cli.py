"""The ``g4l`` command line client, as a person at a shell or a script uses it against a
real server: a whole session (bang, continue, retry, crop, continue, generate, listen, a
station, health) with the current session remembered between runs; refusals that exit
non-zero with the server's error code. (The progress bar a person watches in a real
terminal, queue position first, is in test_one_at_a_time.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import make_wav, read_wav, wav_info

from g4l import embedded
from plugin_protocol import events

RATE = 48_000
_SCRIPT = Path(sys.executable).with_name("g4l")
#: The installed console script (scripts/install.sh), else the module.
G4L = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "g4l.cli"]


class Shell:
    """Runs ``g4l`` in a working directory, as a shell would: its own state file, the
    server in ``G4L_URL``, stdin closed, stdout and stderr pipes (not a terminal)."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "G4L_URL": url, "G4L_CLI_STATE": str(cwd / "state" / "cli.json")}
        self.env.pop("G4L_API_KEY", None)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*G4L, *args], cwd=self.cwd, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=180, stdin=subprocess.DEVNULL)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = self.run(*args, env=env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> dict:
        done = self.ok("--json", *args)
        # One JSON object on stdout and no decoration anywhere: stderr is no terminal.
        assert done.stderr == "", done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 1, done.stdout
        return json.loads(lines[0])

    def state(self) -> dict:
        return json.loads((self.cwd / "state" / "cli.json").read_text())


@pytest.fixture
def shell(server, tmp_path) -> Shell:
    (tmp_path / "in.wav").write_bytes(make_wav(30))
    return Shell(server.url, tmp_path)


def seconds(path: Path) -> float:
    info = wav_info(path.read_bytes())
    return info.frames / info.samplerate


def test_a_whole_session_from_a_shell(shell: Shell, server) -> None:
    cwd = shell.cwd
    # bang: no --model, so the CLI asks the server for its default (debug here).
    bang = shell.json("bang", "in.wav", "-o", "take1.wav")
    sid = bang["session_id"]
    assert bang["output"] == str(cwd / "take1.wav") and bang["job_id"] and isinstance(bang["seed"], int)
    assert bang["seconds"] == pytest.approx(30.0, abs=0.05) and bang["bytes"] == (cwd / "take1.wav").stat().st_size
    info = wav_info((cwd / "take1.wav").read_bytes())
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 2, "PCM_16")
    assert seconds(cwd / "take1.wav") == pytest.approx(30.0, abs=0.05)
    assert shell.state()["servers"][server.url]["session_id"] == sid

    # continue the file, as the device does: the current session; the file loses its last
    # 6 s (the prompt) and gains the model's 12 (-d), and its head is the input's. A
    # person's run: one line saying where the file went.
    done = shell.ok("continue", "take1.wav", "-o", "take2.wav", "--seed", "1234", "-d", "12")
    assert done.stdout.splitlines()[-1].startswith("wrote take2.wav: 36.0 s, 48000 Hz stereo")
    assert f"session {sid}, seed 1234" in done.stdout and done.stderr == ""
    assert seconds(cwd / "take2.wav") == pytest.approx(30 - 6 + 12, abs=0.05)
    head, _ = read_wav((cwd / "take1.wav").read_bytes())
    out, _ = read_wav((cwd / "take2.wav").read_bytes())
    keep = head.shape[0] - 6 * RATE
    np.testing.assert_allclose(out[:keep], head[:keep], atol=1e-4)

    # retry: the current session by default, written under a name of its own.
    retry = shell.json("retry", "-d", "12")
    assert retry["session_id"] == sid and retry["output"] == str(cwd / f"g4l-{sid[:8]}-retry.wav")
    assert seconds(Path(retry["output"])) == pytest.approx(36.0, abs=0.05)

    # crop, then continue without a file: the session's current audio is the cropped one.
    (cwd / "cropped.wav").write_bytes(make_wav(20))
    crop = shell.json("crop", "cropped.wav")
    assert crop["session_id"] == sid and crop["new_session"] is False and crop["seconds"] == pytest.approx(20.0)
    after = shell.json("continue", "-o", "take3.wav", "-d", "12")
    assert after["session_id"] == sid and seconds(cwd / "take3.wav") == pytest.approx(20 - 6 + 12, abs=0.05)
    status = shell.json("status")
    assert status["exists"] is True and status["status"] == "idle" and status["version"] == 5

    # history, undo, redo, checkout: each move writes the version's audio, byte for byte.
    tree = shell.json("history")
    assert tree["current"] == 5 and [(v["version"], v["parent"], v["operation"]) for v in tree["versions"]] == [
        (1, None, "bang"), (2, 1, "continue"), (3, 1, "retry"), (4, 3, "crop"), (5, 4, "continue")]
    assert "* v5" in shell.ok("history").stdout
    undo = shell.json("undo", "-o", "undo1.wav")
    assert undo["version"] == 4 and undo["operation"] == "crop"
    assert (cwd / "undo1.wav").read_bytes() == (cwd / "cropped.wav").read_bytes()
    assert shell.json("undo")["version"] == 3
    assert Path(shell.json("redo")["output"]).read_bytes() == (cwd / "cropped.wav").read_bytes()
    back = shell.json("checkout", "2", "-o", "v2.wav")
    assert back["version"] == 2 and (cwd / "v2.wav").read_bytes() == (cwd / "take2.wav").read_bytes()
    missing = shell.run("checkout", "99")
    assert missing.returncode == 1 and "VERSION_NOT_FOUND" in missing.stderr

    # A file and --new: continue that file as a new session (the device's continue without an id).
    fresh = shell.json("continue", "take1.wav", "--new", "-o", "fresh.wav", "-p", "4", "-d", "10")
    assert fresh["session_id"] != sid and fresh["seconds"] == pytest.approx(30 - 4 + 10, abs=0.05)
    assert shell.state()["servers"][server.url]["session_id"] == fresh["session_id"]

    # generate: an HTTP job, live over Socket.IO, then again by polling.
    gen = shell.json("generate", "warm analog pads", "-d", "8", "-o", "gen.wav", "--seed", "7", "--model", "debug")
    assert gen["job_id"] and gen["seed"] == 7 and gen["model"] == "debug" and gen["output"] == str(cwd / "gen.wav")
    info = wav_info((cwd / "gen.wav").read_bytes())
    assert (info.samplerate, info.channels) == (32_000, 1) and info.frames / info.samplerate == pytest.approx(8.0)
    polled = shell.json("generate", "warm analog pads", "-d", "5", "--poll")
    assert polled["seconds"] == pytest.approx(5.0) and Path(polled["output"]).exists()
    # --progress draws even on a pipe; it ends at 100 % and the result line follows on stdout.
    drawn = shell.ok("--progress", "generate", "x", "-d", "4", "-o", "drawn.wav")
    assert "generate: done" in drawn.stderr and "100%" in drawn.stderr
    assert drawn.stdout.startswith("wrote drawn.wav: 4.0 s, 32000 Hz mono")

    # listen: absolute links of the current session; the page answers.
    link = shell.json("listen")
    assert link["session_id"] == fresh["session_id"]
    assert re.fullmatch(re.escape(server.url) + r"/hls/[A-Za-z0-9_-]{32}/index\.m3u8", link["playlist_url"])
    assert link["page_url"].startswith(server.url + "/listen/")
    assert requests.get(link["page_url"], timeout=10).status_code == 200
    # --play waits for the stream to start, then hands the playlist to ffplay (a stand-in
    # here, that notes its arguments and what the playlist answered: no sound card on CI).
    bin_dir = cwd / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffplay").write_text(
        f"#!{sys.executable}\nimport sys, urllib.request\n"
        f"open({str(cwd / 'ffplay.args')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        f"open({str(cwd / 'ffplay.status')!r}, 'w').write(str(urllib.request.urlopen(sys.argv[-1]).status))\n")
    (bin_dir / "ffplay").chmod(0o755)
    played = shell.ok("listen", "--play", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert played.stdout.splitlines()[0] == f"playlist: {link['playlist_url']}"
    assert (cwd / "ffplay.args").read_text().split() == ["-nodisp", "-loglevel", "warning", link["playlist_url"]]
    assert (cwd / "ffplay.status").read_text() == "200"

    # a station: start, status, list, stop.
    started = shell.json("station", "start", "slow ambient pads", "--model", "debug")
    station = started["station_id"]
    assert started["status"] == "starting" and started["playlist_url"].startswith(server.url + "/hls/")
    st = shell.json("station", "status", station)
    assert st["station_id"] == station and st["status"] == "running" and st["prompts"] == ["slow ambient pads"]
    assert station in [s["station_id"] for s in shell.json("station", "list")["stations"]]
    stopped = shell.ok("station", "stop", station)
    assert stopped.stdout.strip() == f"station {station} stopped"

    health = shell.ok("health")
    assert health.stdout.startswith(f"{server.url}: live, ready")
    assert shell.json("health")["ok"] is True


def test_results_never_overwrite_unless_asked_and_the_state_is_per_server(tmp_path, monkeypatch) -> None:
    from g4l.cli.files import output_path
    from g4l.cli.state import State

    monkeypatch.chdir(tmp_path)
    first = output_path(None, "5575f4ce-06c7-46d9", "retry")
    assert first == tmp_path / "g4l-5575f4ce-retry.wav"
    first.write_bytes(b"taken")
    assert output_path(None, "5575f4ce-06c7-46d9", "retry") == tmp_path / "g4l-5575f4ce-retry-2.wav"
    assert output_path("~/x.wav", "5575f4ce", "retry") == Path("~/x.wav").expanduser()

    state = State.load(tmp_path / "deep" / "state.json")  # missing: empty
    assert state.session("http://a:1") is None
    state.remember("http://a:1/", "s-a", first)
    state.remember("http://b:2", "s-b")
    again = State.load(tmp_path / "deep" / "state.json")
    assert (again.session("http://a:1"), again.session("http://b:2/")) == ("s-a", "s-b")
    again.forget("http://a:1")
    assert State.load(again.path).session("http://a:1") is None
    (tmp_path / "deep" / "state.json").write_text("{not json")  # a broken file is an empty state
    assert State.load(tmp_path / "deep" / "state.json").servers == {}


def test_a_dropped_connection_still_gets_its_result(server, tmp_path) -> None:
    """The socket drops while the model runs: the client reconnects, asks for its session
    again (verify_session, as the device does) and gets the result all the same; a job
    subscription is renewed the same way."""
    from g4l.cli.device import Device
    from g4l.cli.progress import Progress

    quiet = Progress("bang", enabled=False)
    with Device(server.url, api_key=None, timeout=60) as device:
        dropped = threading.Timer(1.0, lambda: device.client.sio.eio.ws.close())
        dropped.start()
        gen = device.generate("bang", quiet, wav=make_wav(10), params={"model_name": "debug", "prompt_duration": 6})
        dropped.join()
        assert wav_info(gen.result.audio).duration == pytest.approx(30.0, abs=0.05)
        names = [name for _t, name, _d in device.client.received]
        assert events.SESSION_STATUS in names  # the answer to the reconnect's verify_session

        job = requests.post(f"{server.url}/api/v1/generate", json={"prompt": "x", "duration": 20}, timeout=30).json()
        dropped = threading.Timer(0.5, lambda: device.client.sio.eio.ws.close())
        dropped.start()
        final = device.watch_job(job["job_id"], Progress("generate", enabled=False), 60)
        dropped.join()
        assert final["status"] == "completed" and final["audio_url"]
        assert [name for _t, name, _d in device.client.received].count("subscribed") == 2  # renewed


def test_refusals_exit_non_zero_with_the_server_code(shell: Shell) -> None:
    cwd = shell.cwd
    first = shell.json("crop", "in.wav")  # a session with audio but no generation yet
    # The server refuses: exit 1, its code on stderr (and in the --json object).
    refused = shell.run("--json", "bang", "in.wav", "--model", "nope")
    assert refused.returncode == 1 and "error: MODEL_NOT_ALLOWED: " in refused.stderr
    assert json.loads(refused.stdout)["error"]["code"] == "MODEL_NOT_ALLOWED"
    (cwd / "notes.wav").write_text("not a wav at all\n")
    bad = shell.run("bang", "notes.wav", "--model", "debug")
    assert bad.returncode == 1 and bad.stderr.startswith("error: INVALID_AUDIO: ") and bad.stdout == ""
    nothing = shell.run("retry")
    assert nothing.returncode == 1 and "error: NOTHING_TO_RETRY: " in nothing.stderr
    out_of_range = shell.run("continue", "--prompt-duration", "99")
    assert out_of_range.returncode == 1 and "error: INVALID_REQUEST: " in out_of_range.stderr
    unknown = shell.run("station", "status", "no-such-station")
    assert unknown.returncode == 1 and "error: STATION_NOT_FOUND: " in unknown.stderr
    # A refused request changes nothing: the current session is still the crop's, no file was written.
    assert shell.json("status")["session_id"] == first["session_id"]
    assert sorted(p.name for p in cwd.glob("*.wav")) == ["in.wav", "notes.wav"]

    # Usage errors: exit 2, before anything is sent.
    for args, text in ((("bang", "missing.wav"), "no such file: missing.wav"),
                       (("bang",), "the following arguments are required: input"),
                       (("continue", "--session", "a", "--new", "in.wav"), "not allowed with argument"),
                       (("generate", "x", "-d", "ten"), "invalid float value: 'ten'")):
        done = shell.run(*args)
        assert done.returncode == 2 and "error: USAGE: " in done.stderr and text in done.stderr, done.stderr
    shell.ok("status", "--forget")
    forgotten = shell.run("retry")  # no current session any more
    assert forgotten.returncode == 2 and "error: USAGE: no current session" in forgotten.stderr

    # No server there: exit 3.
    gone = shell.run("--url", f"http://127.0.0.1:{embedded.free_port()}", "health")
    assert gone.returncode == 3 and gone.stderr.startswith("error: UNREACHABLE: cannot reach ")


# The progress bar a person watches in a real terminal, queue position first, is
# test_one_at_a_time.py's: a job queues behind another only when the worker runs one at a time.
