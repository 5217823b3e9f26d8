"""Fixtures that start real servers: redis-server, secantusd-py (MongoDB wire protocol)
and the g4l launcher (web + worker processes) on free ports, once per test session."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from g4l import embedded

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- audio helpers
def wait_until(check, timeout: float, what: str, interval: float = 0.25):
    """``check()``'s first truthy value, polled until ``timeout``; else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def notice_seen(pubsub, kind: str, timeout: float = 5.0) -> bool:
    """Whether a notice of ``kind`` arrives on ``pubsub`` (subscribed to the notices) in time."""
    from g4l.jobs import notices

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message" and notices.decode(msg["data"])["type"] == kind:
            return True
    return False


def make_wav(seconds: float, rate: int = 48000, channels: int = 2, subtype: str = "PCM_16",
             freq: float = 220.0) -> bytes:
    """A sine (plus a little noise) as WAV bytes."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(0)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([x] * channels, axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def wav_info(data: bytes) -> sf._SoundFileInfo:
    return sf.info(io.BytesIO(data))


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, rate


# ---------------------------------------------------------------- stores
@pytest.fixture(scope="session")
def redis_server() -> Iterator[embedded.ManagedProcess]:
    proc = embedded.start_redis(None)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory) -> Iterator[embedded.ManagedProcess]:
    # On disk: the suite stores well over a GB of audio, and secantusd-py's :memory:
    # mode refuses writes after about half a GB.
    proc = embedded.start_mongo(tmp_path_factory.mktemp("mongo"))
    yield proc
    proc.stop()


# ---------------------------------------------------------------- the server
@dataclass
class RunningServer:
    url: str
    proc: subprocess.Popen
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)

    def health(self, path: str = "/health") -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    @property
    def jerry_url(self) -> str:
        """jerry's localhost-mode port (``G4L_JERRY_PORT``), as the device calls it locally."""
        return f"http://127.0.0.1:{self.env['G4L_JERRY_PORT']}"

    @property
    def terry_url(self) -> str:
        """terry's localhost-mode port (``G4L_TERRY_PORT``)."""
        return f"http://127.0.0.1:{self.env['G4L_TERRY_PORT']}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(tmp: Path, *, redis_url: str | None, mongo_url: str | None, **env_overrides: str
                 ) -> RunningServer:
    """Start ``python -m g4l.launcher`` and wait for its ready line."""
    port = embedded.free_port()
    local_ports = set()
    while len(local_ports) < 2 or port in local_ports:  # three different free ports
        local_ports = {embedded.free_port(), embedded.free_port()}
    jerry_port, terry_port = sorted(local_ports)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MONGO_URL")}
    env.update({
        "G4L_HOST": "127.0.0.1", "G4L_PORT": str(port), "G4L_MODELS": "debug",
        "G4L_DATA_DIR": str(tmp), "G4L_RATE_LIMIT_PER_MINUTE": "0", "G4L_LOG_LEVEL": "INFO",
        "G4L_WORKER_DEAD_AFTER_S": "4", "G4L_TORCH_THREADS": "1",
        # Localhost mode's ports (8005, 8002 in production) on free ports: test servers never
        # take fixed ones (RunningServer.jerry_url / terry_url).
        "G4L_JERRY_PORT": str(jerry_port), "G4L_TERRY_PORT": str(terry_port),
    })
    # The shipped defaults (batching on: G4L_MAX_BATCH 8) unless the test asks otherwise;
    # the one-at-a-time path has tests of their own (G4L_MAX_BATCH="1", named so).
    if redis_url:
        env["REDIS_URL"] = redis_url
    if mongo_url:
        env["MONGO_URL"] = mongo_url
    env.update(env_overrides)
    proc = subprocess.Popen([sys.executable, "-m", "g4l.launcher"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=open(tmp / "server.log", "ab"), text=True)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, env)
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            server.lines.append(line.rstrip("\n"))
            if line.startswith("g4l ready on "):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(180):
        server.stop()
        log = (tmp / "server.log").read_text()[-4000:]
        raise RuntimeError(f"server did not become ready; log tail:\n{log}")
    return server


@dataclass
class ServerStack:
    """A g4l server on a Redis and a store of its own, for tests that restart or break it."""

    tmp: Path
    redis: embedded.ManagedProcess
    mongo: embedded.ManagedProcess
    server: RunningServer
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def hls_dir(self) -> Path:
        return self.tmp / "hls"

    def restart(self, **env: str) -> None:
        """Stop the whole server (web, worker, packager) and start it again on the same
        stores and data folder, with ``env`` over the stack's own settings."""
        assert self.server.stop() == 0
        self.server = start_server(self.tmp, redis_url=self.redis.url, mongo_url=self.mongo.url,
                                   **{**self.env, **env})

    def redis_client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.redis.url, decode_responses=True)


@contextmanager
def server_stack(tmp: Path, **env: str) -> Iterator[ServerStack]:
    """Start Redis, the store and a server in ``tmp``; stop all three afterwards."""
    r = embedded.start_redis(tmp / "redis")
    m = embedded.start_mongo(tmp / "mongo")
    stack = None
    try:
        stack = ServerStack(tmp, r, m, start_server(tmp, redis_url=r.url, mongo_url=m.url, **env), env)
        yield stack
    finally:
        if stack is not None:
            stack.server.stop()
        m.stop()
        r.stop()


@pytest.fixture(scope="session")
def server(redis_server, mongo_server, tmp_path_factory) -> Iterator[RunningServer]:
    """The shared server: web + one worker on the tiny debug model."""
    s = start_server(tmp_path_factory.mktemp("server"), redis_url=redis_server.url, mongo_url=mongo_server.url)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    from plugin_protocol.client import DeviceClient

    with DeviceClient(server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def mongo_db(mongo_server):
    import pymongo

    client = pymongo.MongoClient(mongo_server.url)
    yield client["g4l"]
    client.close()


@pytest.fixture(scope="session")
def redis_client(redis_server):
    import redis

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def ctx(redis_server, mongo_server):
    """A Context on its own Redis database and Mongo database of the shared servers."""
    import redis as redis_lib

    from g4l.context import Context
    from g4l.settings import Settings

    r = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    assert db == 0
    # Each test gets its own Redis database and Mongo database: no cross-talk with the
    # shared server's state.
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    settings = Settings(REDIS_URL=url, MONGO_URL=mongo_server.url, mongo_db=f"g4l_unit_{time.time_ns()}",
                        models=["debug"], worker_dead_after_s=0.2, job_max_attempts=2)
    c = Context.from_settings(settings)
    c.redis.flushdb()
    yield c
    c.redis.flushdb()
    c.blobs.client.drop_database(settings.mongo_db)


# ---------------------------------------------------------------- lanes
#: Fixtures that start the whole server (launcher, worker, packager): tests that use one
#: are the slow lane. ``scripts/test -m "not slow"`` runs the rest in about a minute.
SERVER_FIXTURES = {"server", "client", "api", "hls", "own_stores", "own_store", "scaled", "embedded_server"}
#: A test, or a fixture it uses, that calls one of these starts a server too (module
#: fixtures such as the station tests' ``stack`` need no entry above).
SERVER_STARTERS = {"start_server", "server_stack"}


def _starts_server(fn: object) -> bool:
    code = getattr(fn, "__code__", None)
    return code is not None and bool(SERVER_STARTERS & set(code.co_names))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        fixture_fns = [d.func for defs in (info.name2fixturedefs.values() if info else ()) for d in defs]
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) \
                or _starts_server(getattr(item, "function", None)) or any(map(_starts_server, fixture_fns)):
            item.add_marker(pytest.mark.slow)
    _longest_modules_first(config, items)


# ---------------------------------------------------------------- parallel runs (pytest-xdist)
# pyproject's addopts run the suite on ``-n auto --dist loadfile``: a module's tests stay on
# one worker, so a module-scoped server starts once. Each worker has its own session
# fixtures (its own redis-server, store and shared server on free ports, its own basetemp),
# so workers share nothing but the machine. ``-n 0`` runs in this process.

#: Workers per CPU for the whole suite: most of its time is spent waiting on servers and
#: one-thread tiny models, not computing, so more workers than cores pays (see the README).
WORKERS_PER_CPU = 2
MAX_WORKERS = 8
#: Where the last whole run's seconds per module are kept (pytest's cache, .pytest_cache).
DURATIONS_KEY = "g4l/module_seconds"
#: The same, from a whole run on the 2-core dev box, for a checkout without that cache
#: (refresh it from .pytest_cache/v/g4l/module_seconds after adding a long module).
MODULE_SECONDS = Path(__file__).with_name("module_seconds.json")


def _selected_files(config) -> set[str] | None:
    """The test files the command line names, or None when it names a folder (or nothing)."""
    files = set()
    for arg in config.args:
        path = Path(str(arg).split("::", 1)[0])
        if not path.is_file():
            return None
        files.add(str(path.resolve()))
    return files


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one file runs in this process (a module never spans workers, so xdist
    would only add its start-up); the fast lane (CPU-bound unit tests) and a ``-k``
    selection (usually a few tests; every worker collects the whole suite, ~10 s of CPU)
    get a worker per CPU; the whole suite ``WORKERS_PER_CPU`` per CPU, at most one per
    file named. ``G4L_TEST_WORKERS`` overrides."""
    if os.environ.get("G4L_TEST_WORKERS"):
        return int(os.environ["G4L_TEST_WORKERS"])
    files = _selected_files(config)
    if files is not None and len(files) <= 1:
        return 0
    cpus = len(os.sched_getaffinity(0))
    narrowed = "not slow" in (config.option.markexpr or "") or bool(config.option.keyword)
    wanted = cpus if narrowed else min(MAX_WORKERS, WORKERS_PER_CPU * cpus)
    return wanted if files is None else min(wanted, len(files))


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _longest_modules_first(config, items) -> None:
    """Order the modules longest first (xdist hands them out in this order, so the run does
    not end on one worker finishing a long module the others could have shared the time
    of). A module's length is its seconds in this checkout's last whole run (pytest's
    cache), else in tests/module_seconds.json (a whole run on the 2-core box, for a fresh
    checkout), else a guess: 30 s per test that starts a server of its own or is marked
    slow in its code, 3 s per other slow test (the session's or the module's server),
    0.2 s per unit test, and 30 s more for a module whose fixtures start a server. The
    order within a module is kept; the modules' order is the same on every worker (xdist
    checks)."""
    cache = getattr(config, "cache", None)
    measured: dict[str, float] = json.loads(MODULE_SECONDS.read_text()) if MODULE_SECONDS.exists() else {}
    measured.update(cache.get(DURATIONS_KEY, {}) if cache is not None else {})
    guess: dict[str, float] = {}
    for item in items:
        module = _module_of(item.nodeid)
        own = _starts_server(getattr(item, "function", None)) or any(
            m.name == "slow" for m in getattr(item, "own_markers", ()))
        guess[module] = guess.get(module, 0.0) + (30.0 if own else 3.0 if item.get_closest_marker("slow") else 0.2)
        if module not in measured and item.get_closest_marker("slow") and not own:
            guess[module] = max(guess[module], 30.0)  # its server's start-up
    weight = {m: measured.get(m, g) for m, g in guess.items()}
    items.sort(key=lambda item: -weight[_module_of(item.nodeid)])


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    # Runs where the results are reported: in this process, or xdist's controller.
    module = _module_of(report.nodeid)
    _seconds[module] = _seconds.get(module, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    """After a whole run (no -k, -m or file names, every module ran to its end), keep each
    module's seconds for the next run's order."""
    config = session.config
    cache = getattr(config, "cache", None)
    whole = not config.option.keyword and not config.option.markexpr and _selected_files(config) is None \
        and not hasattr(config, "workerinput") and exitstatus in (0, 1) and not session.shouldstop
    if cache is not None and whole and _seconds:
        cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}), **{m: round(s, 1) for m, s in _seconds.items()}})


# ---------------------------------------------------------------- tests that need the machine
# A few tests watch real-time behaviour that needs the tiny model faster than real time
# (a station's buffer filling while it plays): on the 2-core box with every xdist worker
# busy at the same priority, generation slows to about real time and they cannot happen
# at all (they fail the same way, serially, on a box loaded by others). Marked ``alone``,
# such a test runs first in the CPU's queue: for its duration its xdist worker and every
# process under it (the module's server, stores, packager and encoders) run
# ``ALONE_NICE`` levels above their own, so the scheduler gives them the cores whenever they
# want them, and the other workers go on with what is left (the idle time of a test that
# mostly waits on playback). One ``alone`` test at a time (a lock file under the run's
# shared basetemp). Where raising a priority is not allowed (no root or CAP_SYS_NICE), it
# falls back to running with no other test beside it: it waits for the running ones to
# end, the others wait for it, and a turnstile makes it go before tests that arrive later.

#: How many nice levels higher an ``alone`` test's processes run. -15 puts its CPU worker
#: (``G4L_WORKER_NICE`` 10) at -5, a weight of 3 to 1 against the other tests' busy web,
#: store and pytest processes (nice 0) and 28 to 1 against their workers.
ALONE_NICE = -15


def _process_tree(root: int) -> list[int]:
    """``root`` and every process under it (``/proc``'s parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _shift_tree_priority(root: int, steps: int) -> None:
    """Move every thread of every process under ``root`` (Linux's nice is per thread) by
    ``steps`` nice levels, each from its own: a CPU worker keeps its ``G4L_WORKER_NICE``
    below the web process it serves.
    :raises PermissionError: raising a priority is not allowed here."""
    for pid in _process_tree(root):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + steps)
            except ProcessLookupError:
                pass


def _may_raise_priority() -> bool:
    """Whether this process may lower its nice value (root, or CAP_SYS_NICE)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, base - 1)
    except PermissionError:
        return False
    os.setpriority(os.PRIO_PROCESS, 0, base)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    config = item.config
    if not hasattr(config, "workerinput"):  # serial run (-n 0): nothing runs beside it
        yield
        return
    import fcntl

    root = config._tmp_path_factory.getbasetemp().parent  # popen-gwN's parent: the run's own
    alone = item.get_closest_marker("alone") is not None
    if not hasattr(config, "_g4l_by_priority"):
        config._g4l_by_priority = _may_raise_priority()
    if config._g4l_by_priority:
        if not alone:
            yield
            return
        with open(root / "alone.lock", "a") as one_at_a_time:
            fcntl.flock(one_at_a_time, fcntl.LOCK_EX)
            _shift_tree_priority(os.getpid(), ALONE_NICE)
            try:
                yield
            finally:
                _shift_tree_priority(os.getpid(), -ALONE_NICE)  # what it started meanwhile too
        return
    with open(root / "machine.turnstile", "a") as turnstile, open(root / "machine.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
