"""Live listening over HLS, end to end on real servers: a musician's listen link, a
generative station heard in headless Chromium, a restart, and the cleanup.

These tests run their own server (own Redis, MongoDB-compatible store and data folder)
with short generations (10 s), so that joins between generations are heard within
seconds; playlists are parsed with the ``m3u8`` package and segments decoded by ffmpeg.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator

import m3u8
import numpy as np
import pytest
import requests
from conftest import ServerStack, make_wav, server_stack, wait_until

from g4l.hls.watch import PlaylistWatcher, check_playlist, decode_ts, max_step
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError

RATE = 48_000
MIX = 1.5  # an equal-power crossfade may sum two signals' steps (see test_hls_units)
ENV = {"G4L_OUTPUT_SECONDS": "10", "G4L_HLS_SESSION_PREROLL_S": "10", "G4L_STATION_BUFFER_S": "20",
       "G4L_STATION_PROMPT_SECONDS": "3", "G4L_STATION_LOW_BUFFER_S": "6"}


HlsServer = ServerStack


@pytest.fixture(scope="module")
def hls(tmp_path_factory) -> Iterator[HlsServer]:
    with server_stack(tmp_path_factory.mktemp("hls-server"), **ENV) as stack:
        yield stack


def stream_info(hls: HlsServer, token: str) -> dict:
    return hls.redis_client().hgetall(f"g4l:listen:{token}")


def covered_seconds(watcher: PlaylistWatcher) -> float:
    return sum(s.duration for s in watcher.ordered())


def assert_playlist_ok(url: str) -> m3u8.M3U8:
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert "no-cache" in resp.headers["Cache-Control"]
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    pl = m3u8.loads(resp.text)
    assert check_playlist(pl) == []
    base = url.rsplit("/", 1)[0]
    for seg in pl.segments:  # every listed segment exists
        assert requests.head(f"{base}/{seg.uri}", timeout=10).status_code == 200
    return pl


# ---------------------------------------------------------------------- sessions
def test_a_listen_link_streams_each_new_generation_and_controls_nothing(hls: HlsServer) -> None:
    with DeviceClient(hls.url, timeout=120) as client:
        bang = client.bang(make_wav(6), model_name="debug", prompt_duration=2)
        sid = bang.session_id
        since = client.mark()
        client.emit(events.GET_LISTEN_URL, {"session_id": sid})
        _, link = client.wait_for(events.LISTEN_URL, since, session_id=sid)
        assert link["session_id"] == sid and link["playlist_url"].endswith("/index.m3u8")
        token = link["playlist_url"].split("/")[2]
        assert token not in sid and len(token) >= 32
        # The REST twin gives the same link.
        rest = requests.post(f"{hls.url}/api/v1/sessions/{sid}/listen", timeout=10).json()
        assert rest == link

        watcher = PlaylistWatcher(hls.url + link["playlist_url"]).start()
        try:
            # Arrives while the preroll (the bang's result) still plays. With the audio sent
            # along, only the new audio is handed off through Redis: the packager streams it.
            client.continue_(sid, bang.audio)
            joins = wait_until(lambda: json.loads(stream_info(hls, token).get("joins") or "[]")[1:], 20,
                               "the continuation to be queued")
            join_s = joins[0]
            wait_until(lambda: covered_seconds(watcher) > join_s + 2.5, 40, "segments past the join")
            for moment in range(3):  # the playlist at several moments
                pl = assert_playlist_ok(hls.url + link["playlist_url"])
                assert len(pl.segments) >= 5
                time.sleep(1.0)
        finally:
            watcher.stop()
        assert watcher.problems == []
        assert watcher.gaps() == []
        segments = watcher.ordered()
        assert segments[0].sequence == 0
        for seg in segments:  # every segment decodes on its own
            assert decode_ts(seg.data).shape[1] >= 0.9 * RATE  # 46 AAC frames: 0.98 s
        decoded = decode_ts(b"".join(s.data for s in segments))
        assert decoded.shape[1] >= (join_s + 2) * RATE
        j = int(join_s * RATE)
        around = decoded[:, j - RATE // 10: j + RATE // 10]
        body = np.concatenate([decoded[:, j - RATE: j - RATE // 10], decoded[:, j + RATE // 10: j + RATE]], axis=1)
        assert np.abs(body).max() > 1e-3, "music plays on both sides of the join"
        assert max_step(around) <= max_step(body) * MIX, "a click at the join between two generations"

        # The listen token is read-only: it is no session id.
        with pytest.raises(ProtocolError) as err:
            client.continue_(token)
        assert err.value.code == "SESSION_NOT_FOUND"
        with pytest.raises(ProtocolError) as err:
            client.crop(token, make_wav(2))
        assert err.value.code == "SESSION_NOT_FOUND"
        with pytest.raises(ProtocolError) as err:
            client.cleanup(token)
        assert err.value.code == "SESSION_NOT_FOUND"
        assert requests.post(f"{hls.url}/api/v1/sessions/{token}/listen", timeout=10).status_code == 404
        assert client.verify(sid)["exists"] is True

    # Serving: content types, CORS, and 404 for anything but the stream's own files.
    seg = segments[-1]
    base = f"{hls.url}/hls/{token}"
    resp = requests.get(f"{base}/{seg.uri}", timeout=10)
    assert resp.status_code in (200, 404)  # it may have slid out of the window by now
    latest = m3u8.loads(requests.get(f"{base}/index.m3u8", timeout=10).text).segments[-1].uri
    resp = requests.get(f"{base}/{latest}", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "video/mp2t"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    other = "A" * 32
    for path in (f"/hls/{other}/index.m3u8", f"/hls/{sid}/index.m3u8", f"/listen/{other}",
                 f"/hls/{token}/..%2F..%2Fserver.log", f"/hls/{token}/.ffmpeg.log", f"/hls/{token}/index.m3u8.tmp",
                 f"/hls/{token}/seg_000000.part", f"/hls/{token}/%2E%2E/index.m3u8",
                 f"/hls/..%2F{token}/index.m3u8", "/hls/" + urllib.parse.quote(f"{token}/../{token}", safe="") + "/index.m3u8"):
        assert requests.get(hls.url + path, timeout=10).status_code == 404, path
    page = requests.get(f"{hls.url}{link['page_url']}", timeout=10)
    assert page.status_code == 200 and "hls.min.js" in page.text and token in page.text
    status = requests.get(f"{hls.url}/listen/{token}/status", timeout=10).json()
    assert status["kind"] == "session" and status["listeners"] >= 1


# ---------------------------------------------------------------------- stations
def default_hlsjs_latency(browser, page_url: str, playlist_url: str, seconds: float = 12.0) -> dict:
    """Play ``playlist_url`` with hls.js as it comes, no config (a page of someone else's),
    for ``seconds``; its latency readings over the last half of them."""
    page = browser.new_page()
    try:
        page.goto(page_url)  # same origin, and the page's copy of hls.js
        page.evaluate("""(src) => {
            const audio = document.createElement('audio');
            document.body.appendChild(audio);
            const probe = new Hls();
            probe.loadSource(src);
            probe.attachMedia(audio);
            probe.on(Hls.Events.MANIFEST_PARSED, () => audio.play());
            window.probe = probe; window.probeAudio = audio;
        }""", playlist_url)
        wait_until(lambda: page.evaluate("window.probeAudio.currentTime") > 0, 30, "default hls.js to play")
        edge, clock = [], []
        for i in range(int(seconds)):
            if i >= seconds / 2:
                edge.append(page.evaluate("window.probe.latency"))
                clock.append(page.evaluate("(Date.now() - window.probe.playingDate.getTime()) / 1000"))
            time.sleep(1.0)
        return {"target_duration": page.evaluate("window.probe.levels[0].details.targetduration"),
                "target_latency": page.evaluate("window.probe.targetLatency"),
                "behind_edge": edge, "behind_clock": clock}
    finally:
        page.close()


def test_a_station_plays_in_chromium_rotates_prompts_and_reports_its_buffer(hls: HlsServer) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    resp = requests.post(f"{hls.url}/api/v1/stations", json={
        "prompts": ["slow ambient pads", "fast drum and bass"], "rotate_every_s": 10, "temperature": 1.0,
        "model": "debug"}, timeout=10)
    assert resp.status_code == 201, resp.text
    st = resp.json()
    assert set(st) >= {"station_id", "playlist_url", "page_url", "status"}
    assert st["playlist_url"].startswith("/hls/")
    station_url = f"{hls.url}/api/v1/stations/{st['station_id']}"
    watcher = PlaylistWatcher(hls.url + st["playlist_url"]).start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                "--disable-background-networking", "--disable-component-update", "--no-first-run"])
            try:
                page = browser.new_page()
                page.goto(hls.url + st["page_url"])
                page.click("#play")
                times = []
                wait_until(lambda: page.evaluate("document.getElementById('player').currentTime") > 0, 30,
                           "playback to start")
                for _ in range(11):
                    times.append(page.evaluate("document.getElementById('player').currentTime"))
                    time.sleep(1.0)
                assert times[-1] - times[0] >= 8.0, times
                assert all(b >= a for a, b in zip(times, times[1:])), times
                assert "s" in page.inner_text("#latency")
                latency = default_hlsjs_latency(browser, hls.url + st["page_url"], hls.url + st["playlist_url"])
            finally:
                browser.close()
        print(f"\nhls.js with its default config: target duration {latency['target_duration']} s, "
              f"target latency {latency['target_latency']:.2f} s, behind the live edge "
              f"{min(latency['behind_edge']):.2f}-{max(latency['behind_edge']):.2f} s, behind the wall clock "
              f"(program date time) {min(latency['behind_clock']):.2f}-{max(latency['behind_clock']):.2f} s")
        # hls.js starts three target durations behind the playlist's end: segments cut on
        # AAC frames make that 1 s (2.005 s segments made it 3, and 9.6 s of latency).
        assert latency["target_duration"] == 1 and latency["target_latency"] <= 4.0, latency
        info = wait_until(lambda: (lambda s: s if s["rotations"] else None)(requests.get(station_url, timeout=10).json()),
                          60, "a prompt rotation")
        assert info["status"] == "running" and info["errors"] == []
        assert info["buffer_health"] in ("ok", "low") and info["buffered_seconds"] > 0
        assert info["current_prompt"] in info["prompts"]
        assert info["listeners"] >= 1
        rotation = info["rotations"][0]
        assert rotation["index"] == 1 and rotation["scheduled_audio_s"] == 10.0
        assert abs(rotation["audio_s"] - 10.0) <= 4.0
        assert_playlist_ok(hls.url + st["playlist_url"])
    finally:
        watcher.stop()
    assert watcher.problems == [] and watcher.gaps() == []
    for seg in watcher.ordered()[-3:]:
        assert np.isfinite(decode_ts(seg.data)).all()

    assert requests.delete(station_url, timeout=10).json()["status"] == "stopped"
    assert requests.get(station_url, timeout=10).json()["buffer_health"] == "stopped"
    assert requests.get(hls.url + st["playlist_url"], timeout=10).status_code == 404
    token = st["playlist_url"].split("/")[2]
    wait_until(lambda: not (hls.hls_dir / token).exists(), 10, "the stopped station's segments to be deleted")


def test_a_station_survives_a_server_restart(hls: HlsServer) -> None:
    st = requests.post(f"{hls.url}/api/v1/stations", json={"prompt": "lofi beats", "model": "debug"},
                       timeout=10).json()
    station_url = f"{hls.url}/api/v1/stations/{st['station_id']}"
    wait_until(lambda: requests.get(station_url, timeout=10).json()["generations"] >= 2, 60, "two generations")
    before = wait_until(lambda: (lambda pl: pl if len(pl.segments) >= 2 else None)(
        m3u8.loads(requests.get(hls.url + st["playlist_url"], timeout=10).text)), 30, "segments")
    last_before = before.media_sequence + len(before.segments) - 1
    generations = requests.get(station_url, timeout=10).json()["generations"]

    hls.restart()
    station_url = f"{hls.url}/api/v1/stations/{st['station_id']}"  # a new port

    info = requests.get(station_url, timeout=10).json()
    assert info["status"] == "running" and info["generations"] >= generations
    # The timeline broke once: one EXT-X-DISCONTINUITY (still listed, or counted in the
    # discontinuity sequence once it slid out), and the numbering went on.
    after = wait_until(lambda: (lambda pl: pl if pl.segments and not pl.segments[-1].discontinuity
                                and (any(s.discontinuity for s in pl.segments) or pl.discontinuity_sequence == 1)
                                else None)(
        m3u8.loads(requests.get(hls.url + st["playlist_url"], timeout=10).text)), 30,
        "new segments after a discontinuity")
    assert after.segments[-1].program_date_time > before.segments[-1].program_date_time
    assert check_playlist(after) == []
    assert after.media_sequence + len(after.segments) - 1 > last_before  # numbering continued
    wait_until(lambda: requests.get(station_url, timeout=10).json()["generations"] > generations, 60,
               "the station to generate again")
    requests.delete(station_url, timeout=10)


def test_idle_streams_are_cleaned_up_on_request(hls: HlsServer) -> None:
    with DeviceClient(hls.url, timeout=120) as client:
        sid = client.bang(make_wav(4), model_name="debug", prompt_duration=2).session_id
    link = requests.post(f"{hls.url}/api/v1/sessions/{sid}/listen", timeout=10).json()
    token = link["playlist_url"].split("/")[2]
    wait_until(lambda: (hls.hls_dir / token / "index.m3u8").exists(), 20, "the stream to start")
    stopped = requests.post(f"{hls.url}/api/v1/listen/cleanup", json={"max_idle_s": 0}, timeout=10).json()["stopped"]
    assert token in stopped
    wait_until(lambda: not (hls.hls_dir / token).exists(), 10, "its segments to be deleted")
    assert requests.get(hls.url + link["playlist_url"], timeout=10).status_code == 404
    assert requests.get(hls.url + link["page_url"], timeout=10).status_code == 404
    # The session itself is untouched, and can be listened to again.
    again = requests.post(f"{hls.url}/api/v1/sessions/{sid}/listen", timeout=10).json()
    assert again == link
