"""The operator's station pages, end to end: a real server (API keys on) runs a station on
the tiny model; headless Chromium opens its dashboard with the operator's key, waits for
the buffer plot, and reads what the page shows against ``GET /api/v1/stations/{id}``. Then
who may open what (no key 401, a plain key 403, another operator's key 404), the archive
page and its downloads (Range), and the buffer history store on its own.

The dashboard's screenshot is written to the test's temporary folder and, when
``G4L_SCREENSHOT_DIR`` is set, there too (``dashboard.png``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import RunningServer, start_server, wait_until

from g4l import embedded, keys

OPERATOR = "op-key-" + "a1" * 12
OTHER_OPERATOR = "op-key-" + "b2" * 12
PLAIN = "plain-key-" + "c3" * 12
#: A prompt that would run script if the page ever wrote it as HTML.
XSS_PROMPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> calm pads & "strings"'
ENV = {"G4L_API_KEYS": PLAIN, "G4L_OPERATOR_KEYS": f"{OPERATOR},{OTHER_OPERATOR}",
       "G4L_OUTPUT_SECONDS": "10", "G4L_STATION_BUFFER_S": "20", "G4L_STATION_PROMPT_SECONDS": "3",
       "G4L_STATION_LOW_BUFFER_S": "6", "G4L_STATION_HISTORY_EVERY_S": "1", "G4L_RECORDING_SECONDS": "4"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


@dataclass
class Dash:
    tmp: Path
    server: RunningServer
    station_id: str

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, path: str, key: str = OPERATOR) -> requests.Response:
        return requests.get(f"{self.url}/api/v1{path}", headers={"X-API-Key": key}, timeout=10)

    def status(self) -> dict:
        resp = self.api(f"/stations/{self.station_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def dash(tmp_path_factory) -> Iterator[Dash]:
    """A server with keys on, and a recording station of the operator's with a hostile prompt."""
    tmp = tmp_path_factory.mktemp("dashboard-server")
    r = embedded.start_redis(tmp / "redis")
    m = embedded.start_mongo(tmp / "mongo")
    server = start_server(tmp, redis_url=r.url, mongo_url=m.url, **ENV)
    try:
        resp = requests.post(f"{server.url}/api/v1/stations", headers={"X-API-Key": OPERATOR}, json={
            "prompt": XSS_PROMPT, "model": "debug", "record": True, "name": "night <b>shift</b>"}, timeout=10)
        assert resp.status_code == 201, resp.text
        d = Dash(tmp, server, resp.json()["station_id"])
        wait_until(lambda: d.status()["generations"] >= 1, 90, "the station's first generation")
        yield d
    finally:
        server.stop()
        m.stop()
        r.stop()


def page_values(page) -> dict:
    """What the dashboard shows."""
    return page.evaluate("""() => {
        const v = (id) => document.getElementById(id);
        return {status: v('status').dataset.value, state: v('state').textContent,
                buffered: parseFloat(v('buffered').dataset.value), listeners: v('listeners').textContent,
                current_prompt: v('current-prompt').textContent, name: v('name').textContent,
                points: parseInt((document.getElementById('buffer-line') || {dataset: {}}).dataset.points || '0'),
                path: (document.getElementById('buffer-line') || {getAttribute: () => ''}).getAttribute('d')};
    }""")


def test_the_dashboard_draws_the_buffer_and_shows_the_status_in_chromium(dash: Dash, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    wait_until(lambda: len(dash.api(f"/stations/{dash.station_id}/history").json()["samples"]) >= 8, 40,
               "eight buffer samples")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 1000})
            page = context.new_page()
            # The key once in the link: it goes to an HttpOnly cookie, and the URL drops it.
            page.goto(f"{dash.url}/stations/{dash.station_id}/dashboard?key={OPERATOR}")
            assert page.url == f"{dash.url}/stations/{dash.station_id}/dashboard"
            cookie = next(c for c in context.cookies() if c["name"] == "g4l_operator_key")
            assert cookie["httpOnly"] and cookie["path"] == "/stations" and cookie["sameSite"] == "Lax"
            assert OPERATOR not in page.evaluate("document.cookie")

            wait_until(lambda: page_values(page)["points"] >= 8, 20, "the plot to be drawn")
            shown = page_values(page)
            # A path of as many points as samples, every one inside the plot.
            coords = [tuple(map(float, xy.split(","))) for xy in re.findall(r"[ML]([\d.]+,[\d.]+)", shown["path"])]
            assert len(coords) == shown["points"] >= 8
            assert all(60 <= x <= 800 and 0 <= y <= 260 for x, y in coords), coords
            assert [x for x, _ in coords] == sorted(x for x, _ in coords)

            # What the page shows is what the API says (a pair read within one poll of each other).
            def agree() -> tuple[dict, dict] | None:
                seen, api = page_values(page), dash.status()
                same = (seen["status"] == api["status"] and seen["listeners"] == str(api["listeners"])
                        and seen["current_prompt"] == api["current_prompt"]
                        and seen["state"] == (api.get("buffer_state") or api["buffer_health"])
                        and abs(seen["buffered"] - api["buffered_seconds"]) <= 3.5
                        # The realtime factor moves with every chunk: compared within the pair too.
                        and (api.get("realtime_factor") is None
                             or page.inner_text("#rtf").startswith(f"{api['realtime_factor']:.2f}")))
                return (seen, api) if same else None

            seen, api = wait_until(agree, 20, "the page to show the API's values", interval=1.0)
            print(f"\ndashboard shows {seen['status']}, {seen['state']}, {seen['buffered']:.1f} s buffered, "
                  f"{seen['listeners']} listeners, {seen['points']} plot points; the API: {api['status']}, "
                  f"{api['buffer_health']}, {api['buffered_seconds']:.1f} s, {api['listeners']} listeners")
            assert api["status"] == "running"
            # The hostile prompt and name are text: shown as written, nothing of them ran.
            assert seen["current_prompt"] == XSS_PROMPT and seen["name"] == "night <b>shift</b>"
            assert page.evaluate("window.__pwned") is None
            assert page.query_selector_all("#current-prompt *, #name *") == []
            # Fields of the five-state buffer show "-" while the server does not send them.
            for field, elem in (("realtime_factor", "rtf"), ("next_prompt", "next-prompt")):
                if api.get(field) is None:
                    assert page.inner_text(f"#{elem}") == "-"
            if api.get("buffer_thresholds_s"):  # bands, and a dashed line per lower bound in range
                drawn = page.evaluate("[...document.querySelectorAll('#plot line.bound[data-state]')]"
                                      ".map(l => [l.dataset.state, parseFloat(l.dataset.seconds)])")
                assert all(float(api["buffer_thresholds_s"][k]) == v for k, v in drawn), drawn
                assert page.query_selector("#plot rect.band-depleted") is not None
            assert page.get_attribute("#recordings-link", "href") == f"/stations/{dash.station_id}/recordings"

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
            if os.environ.get("G4L_SCREENSHOT_DIR"):
                out = Path(os.environ["G4L_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, out / "dashboard.png")

            # The list: the station, linked to its dashboard, with its health.
            page.goto(f"{dash.url}/stations")
            row = f"tr[data-station='{dash.station_id}']"
            page.wait_for_selector(row, timeout=10_000)
            assert page.get_attribute(f"{row} a", "href") == f"/stations/{dash.station_id}/dashboard"
            assert page.inner_text(f"{row} .status") == "running"
            assert page.inner_text(f"{row} .prompt") == XSS_PROMPT
            assert page.evaluate("window.__pwned") is None
        finally:
            browser.close()


def test_only_an_operator_key_opens_the_pages(dash: Dash) -> None:
    sid = dash.station_id
    pages = ["/stations", f"/stations/{sid}/dashboard", f"/stations/{sid}/recordings"]
    data = ["/stations/list.json", f"/stations/{sid}/status.json", f"/stations/{sid}/history.json"]
    for path in pages:
        resp = requests.get(dash.url + path, timeout=10)  # no key: 401, a page with the key form
        assert resp.status_code == 401 and resp.headers["Content-Type"].startswith("text/html"), path
        assert 'action="/stations/login"' in resp.text and "operator" in resp.text
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        resp = requests.get(dash.url + path, headers={"X-API-Key": PLAIN}, timeout=10)
        assert resp.status_code == 403 and "not an operator key" in resp.text, path
        resp = requests.get(dash.url + path, headers={"X-API-Key": OPERATOR}, timeout=10)
        assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store", path
    for path in data:
        resp = requests.get(dash.url + path, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "UNAUTHORIZED", path
        assert requests.get(dash.url + path, headers={"X-API-Key": PLAIN}, timeout=10).json()["error"]["code"] \
            == "FORBIDDEN"
        assert requests.get(dash.url + path, headers={"X-API-Key": OPERATOR}, timeout=10).status_code == 200

    # A wrong key in the link: 401, and no cookie.
    resp = requests.get(f"{dash.url}/stations?key=not-a-key", allow_redirects=False, timeout=10)
    assert resp.status_code == 401 and "Set-Cookie" not in resp.headers
    # The key form: a plain key is kept, then refused; an operator key opens. It never
    # sends anyone off the site.
    with requests.Session() as browser:
        resp = browser.post(f"{dash.url}/stations/login", data={"key": PLAIN, "next": f"/stations/{sid}/dashboard"},
                            allow_redirects=False, timeout=10)
        assert resp.status_code == 303 and resp.headers["Location"].endswith(f"/stations/{sid}/dashboard")
        assert "HttpOnly" in resp.headers["Set-Cookie"] and "Path=/stations" in resp.headers["Set-Cookie"]
        assert browser.get(f"{dash.url}/stations/{sid}/dashboard", timeout=10).status_code == 403
        resp = browser.post(f"{dash.url}/stations/login", data={"key": OPERATOR, "next": "https://evil.example/x"},
                            allow_redirects=False, timeout=10)
        assert resp.status_code == 303 and resp.headers["Location"].endswith("/stations")
        assert browser.get(f"{dash.url}/stations/{sid}/dashboard", timeout=10).status_code == 200
        assert browser.get(f"{dash.url}/stations/{sid}/status.json", timeout=10).json()["station_id"] == sid
        browser.get(f"{dash.url}/stations/logout", timeout=10)
        assert browser.get(f"{dash.url}/stations/{sid}/dashboard", timeout=10).status_code == 401
        bad = browser.post(f"{dash.url}/stations/login", data={"key": "wrong"}, allow_redirects=False, timeout=10)
        assert bad.status_code == 401 and "Set-Cookie" not in bad.headers

    # Another operator's key: the station is not in its list, and its pages are not found.
    other = {"X-API-Key": OTHER_OPERATOR}
    listed = requests.get(f"{dash.url}/stations/list.json", headers=other, timeout=10).json()["stations"]
    assert sid not in [st["station_id"] for st in listed]
    assert sid in [st["station_id"] for st in requests.get(
        f"{dash.url}/stations/list.json", headers={"X-API-Key": OPERATOR}, timeout=10).json()["stations"]]
    for path in pages[1:] + data[1:] + [f"/stations/{sid}/recordings.json"]:
        assert requests.get(dash.url + path, headers=other, timeout=10).status_code == 404, path
    assert dash.api(f"/stations/{sid}/history", key=OTHER_OPERATOR).status_code == 404

    # The keys never reach the server's log.
    log = (dash.tmp / "server.log").read_text() + "\n".join(dash.server.lines)
    for key in (OPERATOR, OTHER_OPERATOR, PLAIN):
        assert key not in log


def test_the_archive_page_lists_recordings_and_serves_them_with_range(dash: Dash) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    sid = dash.station_id
    recs = wait_until(lambda: dash.api(f"/stations/{sid}/recordings").json()["recordings"] or None, 60,
                      "a finished recording")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{dash.url}/stations/{sid}/recordings?key={OPERATOR}")
            row = f"tr[data-recording='{recs[0]['recording_id']}']"
            page.wait_for_selector(row, timeout=10_000)
            href = page.get_attribute(f"{row} a.download", "href")
            length = float(page.get_attribute(f"{row} .length", "data-value"))
            size = int(page.get_attribute(f"{row} .size", "data-value"))
            assert page.inner_text(f"{row} .start")  # a date and time
            # The link downloads with the page's cookie, whole or a range.
            cookies = {c["name"]: c["value"] for c in context.cookies()}
        finally:
            browser.close()
    assert href == f"/stations/{sid}/recordings/{recs[0]['recording_id']}"
    assert length == recs[0]["duration_s"] > 0 and size == recs[0]["bytes"] > 0
    whole = requests.get(dash.url + href, cookies=cookies, timeout=10)
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "audio/mp4"
    assert len(whole.content) == size and whole.content[4:8] == b"ftyp"
    part = requests.get(dash.url + href, cookies=cookies, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.headers["Content-Range"] == f"bytes 100-199/{size}"
    assert part.content == whole.content[100:200]
    # It is the same file as the API's.
    api = requests.get(f"{dash.url}/api/v1/stations/{sid}/recordings/{recs[0]['recording_id']}",
                       headers={"X-API-Key": OPERATOR}, timeout=10)
    assert api.content == whole.content
    assert requests.get(dash.url + href, timeout=10).status_code == 401
    assert requests.get(f"{dash.url}/stations/{sid}/recordings/{'f' * 32}", cookies=cookies,
                        timeout=10).status_code == 404


# ---------------------------------------------------------------------- the history store
def test_the_buffer_history_is_spaced_trimmed_kept_across_restarts_and_expires_with_the_station(ctx) -> None:
    from g4l.services.auth import Caller
    from g4l.services.stations.history import StationHistory
    from g4l.services.stations.service import StationService

    ctx.settings = ctx.settings.model_copy(update={"station_history_every_s": 10.0,
                                                   "station_history_hours": 55 / 3600})
    history = StationHistory(ctx)
    t0 = time.time()
    added = [history.record("st-1", 100.0 - i, "ok", now=t0 + i) for i in range(0, 100, 5)]
    assert added == [i % 10 == 0 for i in range(0, 100, 5)]  # one sample per 10 s at most
    samples = history.read("st-1")
    # Only the last 55 s are kept: samples at 40..90 s.
    assert [round(s["t"] - t0) for s in samples] == [40, 50, 60, 70, 80, 90]
    assert samples[-1] == {"t": pytest.approx(t0 + 90, abs=1e-3), "buffered_s": 10.0, "state": "ok"}
    assert [round(s["t"] - t0) for s in history.read("st-1", since=samples[-2]["t"])] == [90]
    # A new instance (a restarted packager) reads the same, and keeps the spacing.
    again = StationHistory(ctx)
    assert again.read("st-1") == samples
    assert again.record("st-1", 1.0, "low", now=t0 + 95) is False
    assert again.record("st-1", 1.0, "low", now=t0 + 100) is True
    assert ctx.redis.ttl(keys.station_history("st-1")) > 0  # never kept forever

    # Stopping a station lets its history expire with its record.
    owner = Caller("ip:test", keyed=False, operator=True)
    st = StationService(ctx).create(owner, prompts=["ambient"], model="debug")
    sid = st["station_id"]
    StationService(ctx).history.record(sid, 5.0, "ok")
    assert ctx.redis.ttl(keys.station_history(sid)) > 0
    StationService(ctx).stop(sid, owner)
    assert 0 < ctx.redis.ttl(keys.station_history(sid)) <= ctx.settings.retention_seconds
    assert ctx.redis.ttl(keys.station(sid)) == pytest.approx(ctx.redis.ttl(keys.station_history(sid)), abs=2)


def test_with_keys_off_the_pages_are_open(ctx) -> None:
    from flask import Flask

    from g4l.services.auth import ApiKeys, Caller
    from g4l.services.stations.service import StationService
    from g4l.web.api.routing import install_errors
    from g4l.web.dashboard import dashboard_blueprint

    assert not ctx.settings.api_keys and not ctx.settings.operator_keys
    app = Flask("dashboard-test")
    app.config["G4L_SETTINGS"] = ctx.settings
    install_errors(app)
    app.register_blueprint(dashboard_blueprint(ctx, ApiKeys(ctx.settings)))
    sid = StationService(ctx).create(Caller("ip:127.0.0.1", keyed=False, operator=True), prompts=["<i>x</i>"],
                                     model="debug")["station_id"]
    web = app.test_client()
    assert web.get("/stations").status_code == 200
    assert web.get(f"/stations/{sid}/dashboard").status_code == 200
    assert web.get(f"/stations/{sid}/recordings").status_code == 200
    status = web.get(f"/stations/{sid}/status.json").get_json()
    assert status["station_id"] == sid and status["current_prompt"] == "<i>x</i>"
    assert sid in [st["station_id"] for st in web.get("/stations/list.json").get_json()["stations"]]
    assert web.get(f"/stations/{sid}/history.json?since=abc").status_code == 400
    assert web.get("/stations/not-a-station/dashboard").status_code == 404
    # The page itself carries no station data: scripts fill it in as text.
    page = web.get(f"/stations/{sid}/dashboard").get_data(as_text=True)
    assert "<i>x</i>" not in page and "<script>" not in page.replace('<script src="/stations-static/', "")
