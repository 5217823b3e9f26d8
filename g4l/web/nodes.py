"""Web nodes: each web process names itself, beats a heartbeat in Redis that ``/health``
lists as ``web_nodes``, and prefixes the Engine.IO session ids it hands out with its name.

The prefix is what lets N web processes behind one balancer serve long-polling clients
without sticky cookies: a polling request carries ``sid=<node>.<random>`` and the balancer
(:mod:`g4l.balancer`) sends it to that node. Websocket clients need none of it (one
connection, one node), and nothing else is per node: sessions, jobs and results live in
Redis and GridFS, and every node relays the notices of the sockets it holds.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis

from g4l import keys
from g4l.log import get_logger
from g4l.settings import Settings
from g4l.store import heartbeats

log = get_logger(__name__)

#: Seconds between two beats, and how long a node that stopped beating is still listed.
BEAT_S = 2.0
TTL_S = 10.0
#: A node name is used in Redis keys, session ids and the balancer's routing regex.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
#: Separates the node's name from the random part of an Engine.IO session id.
SID_SEPARATOR = "."


def node_name(settings: Settings) -> str:
    """This process's node name: ``G4L_WEB_NODE``, else ``web-<12 random hex>``.

    Not the host and pid: the name prefixes every Engine.IO session id, which every client
    sees (the heartbeat has the host and pid, for ``/health``'s operator view)."""
    name = settings.web_node or f"web-{secrets.token_hex(6)}"
    name = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:48]
    if not _NAME.match(name):
        raise ValueError(f"G4L_WEB_NODE {settings.web_node!r}: use 1-48 of A-Z a-z 0-9 _ -")
    return name


def prefix_session_ids(eio_server: Any, name: str) -> None:
    """Make an Engine.IO server hand out session ids that start with ``<name>.``."""
    generate: Callable[[], str] = eio_server.generate_id

    def generate_id() -> str:
        return f"{name}{SID_SEPARATOR}{generate()}"

    eio_server.generate_id = generate_id


def node_of_sid(sid: str) -> str | None:
    """The node a session id was handed out by (None for an id without a prefix)."""
    name, sep, _rest = sid.partition(SID_SEPARATOR)
    return name if sep and _NAME.match(name) else None


class NodeHeartbeat:
    """Renews ``g4l:web_node:<name>`` every :data:`BEAT_S` from a greenlet.

    :param describe: what to publish besides the name, pid, host and times (the port, the
        number of connected sockets); called on the event loop, so it must be cheap.
    """

    def __init__(self, r: redis.Redis, name: str, describe: Callable[[], dict[str, Any]]) -> None:
        self.r = r
        self.name = name
        self.describe = describe
        self.started = time.time()
        self._greenlet: gevent.Greenlet | None = None

    def beat(self) -> None:
        info = {"node": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "started": self.started, "at": time.time(), **self.describe()}
        heartbeats.publish(self.r, keys.WEB_NODES, keys.web_node, self.name, info, TTL_S)

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis away: /health says so; beat again next tick
                log.debug("web node heartbeat failed", node=self.name, error=str(exc)[:200])
            except Exception:
                log.exception("web node heartbeat failed", node=self.name)
            gevent.sleep(BEAT_S)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop beating and take the node off the list (a clean shutdown)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        try:
            heartbeats.withdraw(self.r, keys.WEB_NODES, keys.web_node, self.name)
        except redis.RedisError:
            pass


def alive_nodes(r: redis.Redis) -> list[dict[str, Any]]:
    """The heartbeat of every web node that beat within :data:`TTL_S`, by name."""
    return [json.loads(b) for b in heartbeats.alive(r, keys.WEB_NODES, keys.web_node).values()]
