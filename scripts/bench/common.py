"""Shared helpers for the g4l benchmarks: start/stop a whole server, make WAVs, stats.

Every benchmark starts its own stores (embedded Redis + secantusd-py, data under a temp dir) and its
own launcher on free loopback ports, and stops all of it on exit, even on error.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def ensure_venv() -> None:
    """Re-exec under the project's venv if we are not already running in it."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


ensure_venv()

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from g4l import embedded  # noqa: E402


def make_wav(seconds: float, rate: int = 48_000, channels: int = 2, subtype: str = "PCM_16",
             seed: int = 0) -> bytes:
    """A non-silent WAV: a few sines plus a little noise, different per channel."""
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    rng = np.random.default_rng(seed)
    chans = []
    for c in range(channels):
        f = 110.0 * (c + 1)
        x = 0.25 * np.sin(2 * np.pi * f * t) + 0.15 * np.sin(2 * np.pi * 2.5 * f * t + c)
        x += 0.05 * rng.standard_normal(n)
        chans.append(x.astype(np.float32))
    data = np.stack(chans, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class Server:
    """The whole g4l server (launcher + embedded stores) for one benchmark run."""

    def __init__(self, *, extra_env: dict[str, str] | None = None, ready_timeout: float = 180.0,
                 keep_dir: bool = False) -> None:
        self.extra_env = extra_env or {}
        self.ready_timeout = ready_timeout
        self.keep_dir = keep_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="g4l-bench-"))
        self.stores: list[embedded.ManagedProcess] = []
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.url = ""
        self.redis_url = ""
        self.mongo_url = ""
        self.log_path = self.tmp / "launcher.log"
        self._ready = threading.Event()

    def start(self) -> Server:
        try:
            self.stores.append(embedded.start_redis(None))
            self.redis_url = self.stores[-1].url
            # On disk under the run's temp dir: secantusd-py's ':memory:' mode refuses writes
            # after about 0.5 GB, and a 5-run roundtrip benchmark stores over 1 GB of audio.
            self.stores.append(embedded.start_mongo(self.tmp / "mongo"))
            self.mongo_url = self.stores[-1].url
            self.port = embedded.free_port()
            env = dict(os.environ)
            env.update({
                "G4L_MODELS": "debug", "G4L_PORT": str(self.port), "G4L_HOST": "127.0.0.1",
                "G4L_DATA_DIR": str(self.tmp / "data"), "G4L_RATE_LIMIT_PER_MINUTE": "0",
                # Localhost mode off: a benchmark takes no fixed port (8005, 8002).
                "G4L_JERRY_PORT": "0", "G4L_TERRY_PORT": "0",
                "REDIS_URL": self.redis_url, "MONGO_URL": self.mongo_url,
            })
            env.update(self.extra_env)
            log = open(self.log_path, "wb")
            # The venv's python; without a venv (the GPU check on a bare CUDA image) this one.
            python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
            self.proc = subprocess.Popen([python, "-m", "g4l.launcher"], cwd=str(ROOT), env=env,
                                         stdout=subprocess.PIPE, stderr=log, start_new_session=True)
            threading.Thread(target=self._read_stdout, daemon=True).start()
            deadline = time.monotonic() + self.ready_timeout
            while not self._ready.wait(0.25):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"launcher exited with {self.proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready within {self.ready_timeout:.0f} s; see {self.log_path}")
            self.url = f"http://127.0.0.1:{self.port}"
            return self
        except BaseException:
            self.stop()
            raise

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith("g4l ready on"):
                self._ready.set()

    def pids(self) -> dict[str, int]:
        """PIDs of the launcher's children (web, workers), from its log."""
        import json
        out: dict[str, int] = {}
        try:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") == "process started" or rec.get("msg") == "process started":
                    out[rec.get("process")] = int(rec.get("pid"))
        except OSError:
            pass
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for store in reversed(self.stores):
            try:
                store.stop(timeout=15)
            except Exception:
                pass
        self.stores = []
        if not self.keep_dir:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def install_alarm(seconds: int) -> None:
    """Bound the whole benchmark: raise in the main thread after ``seconds``."""

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"benchmark exceeded its {seconds} s time bound")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)


def install_term_handler() -> None:
    """SIGTERM/SIGINT unwind through ``finally`` so the server is always stopped."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
