"""Nothing reaches whom it is not for: ``/health`` tells anyone how much is running but
only an operator key where (hosts, pids, ports), and the command line client
(:class:`g4l.cli.http.Api`, which every ``g4l`` command uses) sends its API key only to
the origin (scheme, host, port) it was given: never to an absolute URL a server hands it
(``g4l listen --play`` polls the playlist URL it is given) nor to a redirect that leads
elsewhere."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from conftest import RunningServer, start_server

from g4l.cli.http import Api, origin

USER_KEY = "leaks-user-key"
OPERATOR_KEY = "leaks-operator-key"


class Elsewhere:
    """Another origin (another port of the same host): a real HTTP server that records
    what reaches it. ``/go`` redirects to :attr:`redirect_to`; anything else answers 200
    with a tiny HLS playlist."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (path, X-API-Key) of every request
        self.redirect_to = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.seen.append((self.path, self.headers.get("X-API-Key")))
                if self.path == "/go":
                    self.send_response(302)
                    self.send_header("Location", outer.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"#EXTM3U\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.apple.mpegurl")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def keys_seen(self) -> set[str | None]:
        return {key for _path, key in self.seen}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[Elsewhere]:
    e = Elsewhere()
    yield e
    e.close()


@pytest.fixture(scope="module")
def keyed(redis_server, mongo_server, tmp_path_factory) -> Iterator[RunningServer]:
    """A server with API keys on and an operator key."""
    s = start_server(tmp_path_factory.mktemp("leaks"), redis_url=re.sub(r"/\d+$", "", redis_server.url) + "/8",
                     mongo_url=mongo_server.url, G4L_MONGO_DB="g4l_leaks", G4L_HLS_ENABLED="false",
                     G4L_API_KEYS=USER_KEY, G4L_OPERATOR_KEYS=OPERATOR_KEY)
    yield s
    s.stop()


def _health(server: RunningServer, path: str = "/health", key: str | None = None) -> tuple[int, dict, str]:
    resp = requests.get(server.url + path, headers={"X-API-Key": key} if key else {}, timeout=30)
    return resp.status_code, resp.json(), resp.text


def _web_pid(server: RunningServer) -> int:
    found = subprocess.run(["pgrep", "-P", str(server.proc.pid), "-f", "g4l.web"], capture_output=True, text=True)
    [pid] = [int(p) for p in found.stdout.split()]
    return pid


# ---------------------------------------------------------------- /health
def test_health_tells_anyone_how_many_and_only_an_operator_where(keyed) -> None:
    pid = _web_pid(keyed)
    port = keyed.url.rsplit(":", 1)[1]
    for path in ("/health", "/health/ready"):
        # No key, a wrong key, an ordinary key: the counts, never a host, pid or port.
        for key in (None, "not-a-key", USER_KEY):
            status, doc, text = _health(keyed, path, key)
            assert status == 200, (path, key, text)
            assert doc["web_nodes_alive"] == 1 and doc["workers"] == 1
            assert "web_nodes" not in doc
            assert str(pid) not in text and socket.gethostname() not in text and port not in text, (key, text)
        # The operator's key: where each web process runs.
        status, doc, _text = _health(keyed, path, OPERATOR_KEY)
        assert status == 200 and doc["web_nodes_alive"] == 1
        [node] = doc["web_nodes"]
        assert node["pid"] == pid and node["host"] == socket.gethostname() and str(node["port"]) == port


def test_session_ids_name_no_host_or_pid(keyed) -> None:
    # Every Engine.IO session id starts with its web process's name (the balancer routes by
    # it); without G4L_WEB_NODE that name is random, not <host>-<pid>.
    resp = requests.get(keyed.url + "/socket.io/", params={"EIO": "4", "transport": "polling"}, timeout=30)
    sid = json.loads(resp.text[resp.text.index("{"):])["sid"]
    node = sid.split(".")[0]
    assert re.fullmatch(r"web-[0-9a-f]{12}", node), sid
    assert socket.gethostname() not in sid and str(_web_pid(keyed)) not in node


# ---------------------------------------------------------------- the CLI's key
def test_the_key_goes_to_the_given_origin_only(keyed, elsewhere) -> None:
    api = Api(keyed.url, USER_KEY)
    assert api.get("/api/v1/jobs") is not None  # the server itself gets the key
    # An absolute URL of the same origin (as the server hands them out) gets it too:
    # /api/v1/jobs answers 401 without it.
    assert api.status(keyed.url + "/api/v1/jobs") == 200
    # Another origin (another port of the same host) does not.
    elsewhere.seen.clear()
    assert api.status(elsewhere.url + "/stream/playlist.m3u8") == 200
    assert elsewhere.seen == [("/stream/playlist.m3u8", None)]


def test_a_redirect_to_another_origin_drops_the_key(keyed, elsewhere) -> None:
    # The client was given `elsewhere`; it redirects to the keyed server, which must not
    # get the key (401). `requests` alone keeps custom headers across hosts.
    elsewhere.seen.clear()
    elsewhere.redirect_to = keyed.url + "/api/v1/jobs"
    assert Api(elsewhere.url, USER_KEY).status(elsewhere.url + "/go") == 401
    assert elsewhere.seen == [("/go", USER_KEY)]  # its own origin did get it
    # The same request with the key the redirect target expects, sent there directly: 200.
    assert Api(keyed.url, USER_KEY).status(keyed.url + "/api/v1/jobs") == 200


def test_origins_compare_scheme_host_and_port() -> None:
    assert origin("http://Example.COM/a") == origin("http://example.com:80/b?c")
    assert origin("https://example.com/") == origin("https://example.com:443")
    assert origin("http://example.com") != origin("https://example.com")
    assert origin("http://example.com") != origin("http://example.com:8080")
    assert origin("http://example.com") != origin("http://example.com.evil.net")
    assert origin("http://example.com@evil.net/") != origin("http://example.com/")

