"""``python -m g4l.launcher`` (what scripts/serve runs): the whole server in the foreground.

Starts the embedded Redis and MongoDB-compatible store when ``REDIS_URL`` / ``MONGO_URL``
are unset (data under ``G4L_DATA_DIR``, durable across restarts), then the generation
workers, the packager and the web process (or ``G4L_WEB_PROCESSES`` of them behind nginx,
:mod:`g4l.balancer`); restarts any of them that dies, and an embedded store or the
balancer that dies (on its port, stores from their append-only data), with backoff so a
crash loop does not spin; prints
``g4l ready on http://HOST:PORT`` once clients can connect, then which models are usable
(or, when the default model cannot load, ``g4l running on ... but NOT READY: <why>``, and
keeps serving, so /health says why); on SIGINT/SIGTERM stops every
process it started, web first and stores last, so no stored audio is lost.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from g4l import balancer, embedded
from g4l import log as logging_setup
from g4l.log import get_logger
from g4l.settings import get_settings
from g4l.store import guard as store_guard

log = get_logger("g4l.launcher")
READY_TIMEOUT_S = 300.0
#: Restarts within this window count towards the backoff of the next one.
RESTART_WINDOW_S = 60.0
MAX_RESTART_DELAY_S = 30.0
#: glibc malloc settings for the g4l processes started here, unless the environment sets
#: them. Each thread's frees stay in that thread's arena (up to 8 per core), and glibc
#: raises its mmap threshold to the largest block freed (up to 32 MB), so a process's RSS
#: was the largest recent mix of big buffers (decode activations, results, uploads) spread
#: over many heaps: under scripts/load the workers drifted between 1.0 and 1.5 GB. Two
#: arenas and a fixed threshold keep it to what the process holds. A 1 MB threshold held
#: the workers lower still (0.86-0.90 GB) but faulted in fresh pages for every block of 1 MB
#: or more: 2.6 times the page faults, the suite's system CPU +40%. At 16 MB the workers
#: stay flat at about 1.1 GB with no more faults than glibc's default (docs/engine-batching.md).
#: The embedded store has its own, measured for it (``embedded.STORE_ENV``); the Docker
#: image sets these for the processes it runs without the launcher.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(16 << 20)}


class Restarts:
    """When to start a dead process again: at once the first time, then doubling from
    0.5 s up to ``MAX_RESTART_DELAY_S`` while it keeps dying within ``RESTART_WINDOW_S``."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.due: dict[str, float] = {}

    def schedule(self, name: str) -> float:
        now = time.monotonic()
        recent = [t for t in self.history.get(name, []) if now - t < RESTART_WINDOW_S]
        delay = min(MAX_RESTART_DELAY_S, 0.5 * 2 ** (len(recent) - 1)) if recent else 0.0
        self.due[name] = now + delay
        return delay

    def ready(self) -> list[str]:
        now = time.monotonic()
        names = [n for n, at in self.due.items() if at <= now]
        for name in names:
            del self.due[name]
            self.history.setdefault(name, []).append(now)
        return names


def _readiness(url: str) -> dict | None:
    """``/health/ready``'s document (200 or 503), or None while the web does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            return json.load(exc)
        except Exception:
            return None
    except Exception:
        return None


def _models_line(doc: dict) -> str:
    loaded = doc.get("models_loaded") or []
    failed = doc.get("models_failed") or {}
    usable = ", ".join(loaded) or "none loaded yet"
    return f"g4l models: usable {usable}" + "".join(f"; UNUSABLE {reason}" for reason in failed.values())


def localhost_ports(host: str, main_port: int, wanted: dict[str, int]) -> list[int]:
    """The localhost-mode ports to answer on too (``{"jerry": 8005, "terry": 8002}``):
    each that is set (not 0), not the main port, and free; a taken one is skipped with a
    line on stdout and in the log saying so (another program, e.g. an upstream service,
    already answers there)."""
    ports: list[int] = []
    for name, port in wanted.items():
        if not port or port == main_port or port in ports:
            continue
        if not embedded.port_free(host, port):
            print(f"g4l: port {port} is taken: {name}'s localhost port is not served "
                  f"(set G4L_{name.upper()}_PORT to another port, or 0)", flush=True)
            log.warning("localhost port taken; not served", service=name, port=port)
            continue
        ports.append(port)
    return ports


def _what(managed_name: str) -> str:
    return "balancer" if managed_name == "balancer" else "embedded store"


def main() -> int:
    settings = get_settings()
    logging_setup.configure(settings.log_level, settings.log_format, process="launcher")
    stopping = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Processes of ours that are not g4l modules (the embedded stores, the balancer), by
    # name, each with how to start it again on the same port.
    managed: dict[str, embedded.ManagedProcess] = {}
    starters: dict[str, Callable[[int], embedded.ManagedProcess]] = {}
    restarts = Restarts()
    env = {**MALLOC_ENV, **os.environ}
    data_dir = Path(settings.data_dir).resolve()
    children: dict[str, subprocess.Popen] = {}
    guard: store_guard.StoreGuard | None = None
    try:
        if not settings.redis_url:
            starters["redis"] = lambda port: embedded.start_redis(data_dir / "redis", port=port or None)
            managed["redis"] = starters["redis"](0)
            env["REDIS_URL"] = managed["redis"].url
            log.info("embedded redis started", url=managed["redis"].url, pid=managed["redis"].proc.pid)
        if not settings.mongo_url:
            starters["mongo"] = lambda port: embedded.start_mongo(data_dir / "mongo", port=port or None,
                                                                  memory_mb=settings.store_memory_mb)
            managed["mongo"] = starters["mongo"](0)
            env["MONGO_URL"] = managed["mongo"].url
            log.info("embedded mongodb-compatible store started", url=managed["mongo"].url,
                     pid=managed["mongo"].proc.pid, memory_mb=settings.store_memory_mb,
                     min_free_mb=settings.store_min_free_mb)
            guard = store_guard.StoreGuard(managed["mongo"].url, settings.mongo_db, data_dir / "mongo",
                                           settings.store_memory_mb, settings.store_min_free_mb)

        modules: dict[str, tuple[str, dict[str, str]]] = {}

        def spawn(name: str, module: str, **extra_env: str) -> None:
            modules[name] = (module, extra_env)
            children[name] = subprocess.Popen([sys.executable, "-m", module], env={**env, **extra_env})
            log.info("process started", process=name, pid=children[name].pid, **extra_env)

        for i in range(settings.workers):
            spawn(f"worker-{i}", "g4l.worker")
        if settings.hls_enabled:
            # The HLS packager (live streams and stations), under a name its restarts share.
            spawn("hls", "g4l.hls", G4L_PACKAGER_NAME=f"hls-{secrets.token_hex(4)}")
        extra_ports = localhost_ports(settings.host, settings.port,
                                      {"jerry": settings.jerry_port, "terry": settings.terry_port})
        if settings.web_processes <= 1:
            spawn("web", "g4l.web", G4L_EXTRA_PORTS=",".join(map(str, extra_ports)))
        else:  # N web processes on loopback ports, nginx on G4L_PORT (g4l/balancer.py)
            prefix = f"{settings.web_node}-" if settings.web_node else ""
            backends = [balancer.Backend(f"{prefix}w{i}", "127.0.0.1", embedded.free_port())
                        for i in range(settings.web_processes)]
            for i, b in enumerate(backends):
                spawn(f"web-{i}", "g4l.web", G4L_HOST=b.host, G4L_PORT=str(b.port), G4L_WEB_NODE=b.node,
                      G4L_TRUSTED_PROXIES=str(settings.trusted_proxies + 1), G4L_EXTRA_PORTS="")
            starters["balancer"] = lambda port: balancer.start(
                backends, settings.host, port or settings.port, data_dir / "balancer", extra_ports=extra_ports,
                max_body_mb=settings.max_payload_mb + 1, header_timeout_s=settings.http_header_timeout_s,
                keepalive_timeout_s=settings.http_keepalive_timeout_s)
            managed["balancer"] = starters["balancer"](0)
            log.info("balancer started", url=managed["balancer"].url, pid=managed["balancer"].proc.pid,
                     web_processes=len(backends))

        url = f"http://{settings.host}:{settings.port}"
        if extra_ports:
            log.info("localhost ports served", ports=extra_ports)
        announced = False
        warned = False
        started = time.monotonic()
        while not stopping["flag"]:
            if guard is not None:
                guard.tick(managed["mongo"], time.monotonic())
            for name, managed_proc in managed.items():
                if managed_proc.proc.poll() is not None and name not in restarts.due:
                    delay = restarts.schedule(name)
                    log.error(f"{_what(name)} exited; restarting it", store=name, code=managed_proc.proc.returncode,
                              delay_s=delay)
            for name in restarts.ready():
                if name in managed:  # the same port (and data): clients reconnect to it
                    try:
                        managed[name] = starters[name](managed[name].port)
                        log.info(f"{_what(name)} restarted", store=name, pid=managed[name].proc.pid)
                    except Exception as exc:
                        log.error(f"{_what(name)} did not restart", store=name, error=str(exc)[:200])
                        restarts.schedule(name)
                else:
                    module, extra_env = modules[name]
                    spawn(name, module, **extra_env)
            for name, proc in list(children.items()):
                if proc.poll() is not None and name not in restarts.due:
                    # A dead worker's job is recovered by the others (or by its successor); a
                    # restarted packager takes its streams back; clients of a dead web process
                    # reconnect and get any result they missed (verify_session).
                    delay = restarts.schedule(name)
                    log.warning("process exited; restarting it", process=name, code=proc.returncode, delay_s=delay)
            if not announced:
                doc = _readiness(f"{url}/health/ready")
                if doc is not None and doc.get("status") == "ready" and \
                        (doc.get("web_nodes_alive") or 0) >= settings.web_processes:  # every web process up
                    print(f"g4l ready on {url}", flush=True)
                    print(_models_line(doc), flush=True)
                    announced = True
                elif doc is not None and guard is not None and guard.state not in ("ok", "unknown"):
                    if not warned:  # the store is at a limit: say why, and keep serving (reads work)
                        print(f"g4l running on {url} but NOT READY: {guard.reason}", flush=True)
                        log.error("server not ready", reason=guard.reason)
                        warned = True
                    started = time.monotonic()  # not a start that hangs: no READY_TIMEOUT_S exit
                elif doc is not None and doc.get("models_failed") and doc.get("workers"):
                    if not warned:  # up, but it cannot generate: say why, and keep serving
                        print(f"g4l running on {url} but NOT READY: {doc.get('pytorch', '')}", flush=True)
                        print(_models_line(doc), flush=True)
                        log.error("server not ready", reason=doc.get("pytorch"))
                        warned = True
                elif time.monotonic() - started > READY_TIMEOUT_S:
                    log.error("server did not become ready", seconds=READY_TIMEOUT_S)
                    return 1
            time.sleep(0.25)
        return 0
    finally:
        balancer_proc = managed.pop("balancer", None)
        if balancer_proc is not None:  # no new connections first
            balancer_proc.stop(timeout=10)
        webs = [n for n in children if n.startswith("web")]
        for name in [*webs, *[n for n in children if n not in webs]]:
            child = children.get(name)
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for name, proc in children.items():
            try:
                proc.wait(60 if name.startswith("worker") else 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if guard is not None:
            guard.close()
        for store in reversed(list(managed.values())):
            store.stop(timeout=30)
        log.info("all processes stopped")


if __name__ == "__main__":
    sys.exit(main())
