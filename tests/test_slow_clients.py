"""Slow clients cannot hold the web process: half-sent headers and a stalled upload are
let go at their deadlines (g4l/web/http_server.py), while well-behaved clients, an idle
Socket.IO websocket included, go on as usual."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from conftest import make_wav, start_server

from g4l import balancer, embedded
from plugin_protocol.client import DeviceClient

#: The header deadline the ``strict`` server runs with (G4L_HTTP_HEADER_TIMEOUT_S, 20 s shipped).
HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def strict(redis_server, mongo_server, tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("slow"), redis_url=re.sub(r"/\d+$", "", redis_server.url) + "/7",
                     mongo_url=mongo_server.url, G4L_MONGO_DB="g4l_slow", G4L_HLS_ENABLED="false",
                     G4L_HTTP_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), G4L_HTTP_KEEPALIVE_TIMEOUT_S="4",
                     G4L_HTTP_BODY_GRACE_S="2", G4L_HTTP_BODY_MIN_KBPS="32")
    yield s
    s.stop()


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _ended(s: socket.socket) -> bytes:
    """What the server sent before closing (blocks until it closes)."""
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return got


#: Beginnings of a request that never finish: half a request line, a whole line and half
#: the headers, all but the blank line.
HALF_SENT = [b"GET /hea", b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Ag",
             b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"]


def _outcome(s: socket.socket) -> str:
    """How the server ended the connection: "reset", "closed" (FIN) or "open" (the socket's timeout)."""
    try:
        while s.recv(4096):
            pass
        return "closed"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "open"


def _hold_half_sent(url: str, count: int) -> tuple[list[str], float, int]:
    """Open ``count`` connections that each send a beginning of a request and stall, and
    meanwhile send a whole request on another: how each ended, after how long, and the
    whole request's status."""
    socks = [_open(url) for _ in range(count)]
    for i, s in enumerate(socks):
        s.sendall(HALF_SENT[i % len(HALF_SENT)])
    started = time.monotonic()
    host, port = url.removeprefix("http://").split(":")
    whole = socket.create_connection((host, int(port)), timeout=30)
    whole.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status = int(whole.makefile("rb").readline().split()[1])
    whole.close()
    outcomes = [_outcome(s) for s in socks]
    elapsed = time.monotonic() - started
    for s in socks:
        s.close()
    return outcomes, elapsed, status


def test_half_sent_request_lines_and_headers_are_reset_at_the_header_timeout(strict) -> None:
    # 200 clients stall in their request line or headers: each is reset (RST: nothing is
    # left on either side, not even a half-closed socket) once G4L_HTTP_HEADER_TIMEOUT_S
    # has passed, and a whole request sent meanwhile is answered.
    outcomes, elapsed, status = _hold_half_sent(strict.url, 200)
    assert status == 200
    assert outcomes.count("reset") == 200, {o: outcomes.count(o) for o in set(outcomes)}
    assert HEADER_TIMEOUT_S * 0.75 < elapsed < 15, f"half-sent requests held for {elapsed:.1f} s"
    assert strict.health()[0] == 200


def test_the_balancer_resets_half_sent_requests_at_the_same_timeout(strict, tmp_path) -> None:
    # With several web processes nginx holds the client's connection: it applies the same
    # header deadline (nginx's own default is 60 s).
    port = int(strict.url.rsplit(":", 1)[1])
    nginx = balancer.start([balancer.Backend("w0", "127.0.0.1", port)], "127.0.0.1", embedded.free_port(),
                           tmp_path / "balancer", max_body_mb=16, header_timeout_s=HEADER_TIMEOUT_S,
                           keepalive_timeout_s=4)
    try:
        outcomes, elapsed, status = _hold_half_sent(nginx.url, 50)
        assert status == 200
        assert outcomes.count("reset") == 50, {o: outcomes.count(o) for o in set(outcomes)}
        assert HEADER_TIMEOUT_S * 0.75 < elapsed < 15, f"half-sent requests held for {elapsed:.1f} s"
    finally:
        nginx.stop()


def test_half_sent_headers_are_let_go(strict) -> None:
    socks = [_open(strict.url) for _ in range(50)]
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    started = time.monotonic()
    for s in socks:
        _ended(s)
        s.close()
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"half-sent requests held for {elapsed:.1f} s"
    assert strict.health()[0] == 200


def test_idle_connections_are_closed_after_the_keepalive_timeout(strict) -> None:
    socks = [_open(strict.url) for _ in range(20)]  # connected, never a byte
    started = time.monotonic()
    for s in socks:
        _ended(s)
        s.close()
    elapsed = time.monotonic() - started
    assert 3 < elapsed < 15, f"idle connections closed after {elapsed:.1f} s (keep-alive timeout 4 s)"


def test_a_stalled_upload_is_let_go_and_others_go_on(strict) -> None:
    s = _open(strict.url)
    s.sendall(b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100000\r\n\r\n{\"prompt\": \"")
    started = time.monotonic()
    ended: dict[str, object] = {}

    def watch() -> None:  # when the server lets the stalled upload go, whatever the bang takes
        ended["answer"] = _ended(s)
        ended["after_s"] = time.monotonic() - started

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with DeviceClient(strict.url, timeout=120) as c:  # meanwhile, a well-behaved client is served
        result = c.bang(make_wav(3), model_name="debug", prompt_duration=2)
        assert len(result.audio) > 1000
        watcher.join(60)
        assert "after_s" in ended, "the stalled upload is still held"
        # deadline: grace 2 s + 100,000 bytes at 32 KB/s ~ 3 s
        assert ended["after_s"] < 20, f"stalled upload held for {ended['after_s']:.1f} s"
        answer = ended["answer"]
        assert answer == b"" or b"408" in answer.split(b"\r\n", 1)[0], answer[:200]
        time.sleep(3)  # idle past the header deadline: an upgraded websocket is not affected
        assert c.verify(result.session_id)["exists"]
    s.close()
