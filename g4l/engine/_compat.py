"""Make AudioCraft importable in this environment, without touching site-packages.

Two of AudioCraft's module-level imports cannot succeed here, although the code that
MusicGen inference runs never needs them:

* ``torchaudio``: the 2.11 wheel's compiled extension links against CUDA libraries
  (``libc10_cuda.so``) and is built for another torch ABI, so ``import torchaudio`` raises
  ``OSError`` on a CPU-only torch. AudioCraft only uses torchaudio's pure-Python parts
  (``functional.resample``, transforms), so we import it with a stand-in for
  ``torchaudio._extension`` that reports "no extension".
* ``spacy``: ``audiocraft.modules.conditioners`` imports it for the ``whitespace``
  tokenizer only (a debug/test tokenizer; real MusicGen checkpoints use T5). When spaCy
  is not installed we register a stub whose ``load`` raises a clear error, so every other
  conditioner keeps working.

* ``xformers``: ``audiocraft.modules.transformer`` imports ``xformers.ops`` at module level,
  but calls it only with its ``'xformers'`` attention backend (MusicGen runs ``'torch'``,
  SDPA). Its wheels are built for one torch each; where none fits (a CUDA image with
  another torch: the GPU check, ``scripts/gpu_check``) a stub whose functions raise
  stands in.

* ``av`` (PyAV): ``audiocraft.data.audio`` imports it for reading and writing audio files,
  which MusicGen inference never does (g4l reads and writes WAV with soundfile). Its
  wheel is 35 MB; where it is not installed (the GPU check's carried wheels) a stub whose
  ``open`` raises stands in.

Each shim applies only when the real import fails; a working install is used as is.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_done = False


def _no_extension(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator standing in for torchaudio's ``fail_if_no_align``: fails when called."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"torchaudio.{func.__name__} needs torchaudio's compiled extension, "
                           "which cannot load in this environment")

    return fail


def _import_torchaudio() -> None:
    try:
        importlib.import_module("torchaudio")
        return
    except OSError:
        pass  # the compiled extension failed to load: retry with the stand-in below
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        del sys.modules[name]  # drop the half-initialised package
    ext = types.ModuleType("torchaudio._extension")
    ext.__doc__ = "g4l stand-in: torchaudio's compiled extension is unavailable."
    ext._IS_TORCHAUDIO_EXT_AVAILABLE = False  # type: ignore[attr-defined]
    ext._IS_ALIGN_AVAILABLE = False  # type: ignore[attr-defined]
    ext.fail_if_no_align = _no_extension  # type: ignore[attr-defined]
    ext._load_lib = lambda lib: False  # type: ignore[attr-defined]
    ext._check_cuda_version = lambda: None  # type: ignore[attr-defined]
    sys.modules["torchaudio._extension"] = ext
    importlib.import_module("torchaudio")


def _spacy_missing(*args: Any, **kwargs: Any) -> Any:
    raise OSError("spaCy is not installed: AudioCraft's 'whitespace' text tokenizer is "
                  "unavailable (use a T5 or a 'noop' LUT conditioner)")


def _import_spacy() -> None:
    try:
        importlib.import_module("spacy")
        return
    except ImportError:
        pass
    spacy = types.ModuleType("spacy")
    spacy.__doc__ = "g4l stub: spaCy is not installed."
    cli = types.ModuleType("spacy.cli")
    cli.download = _spacy_missing  # type: ignore[attr-defined]
    spacy.load = _spacy_missing  # type: ignore[attr-defined]
    spacy.cli = cli  # type: ignore[attr-defined]
    sys.modules["spacy"] = spacy
    sys.modules["spacy.cli"] = cli


def _xformers_missing(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("xformers is not installed: AudioCraft's 'xformers' attention backend is unavailable "
                       "(MusicGen uses the 'torch' backend)")


def _import_xformers() -> None:
    try:
        importlib.import_module("xformers.ops")
        return
    except (ImportError, OSError):
        pass
    for name in [n for n in sys.modules if n == "xformers" or n.startswith("xformers.")]:
        del sys.modules[name]
    xformers = types.ModuleType("xformers")
    xformers.__doc__ = "g4l stub: xformers is not installed."
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = _xformers_missing  # type: ignore[attr-defined]
    ops.unbind = _xformers_missing  # type: ignore[attr-defined]
    ops.LowerTriangularMask = _xformers_missing  # type: ignore[attr-defined]
    xformers.ops = ops  # type: ignore[attr-defined]
    sys.modules["xformers"] = xformers
    sys.modules["xformers.ops"] = ops


def _av_missing(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("PyAV is not installed: AudioCraft's audio file reading and writing is unavailable "
                       "(g4l reads and writes WAV with soundfile)")


def _import_av() -> None:
    try:
        importlib.import_module("av")
        return
    except ImportError:
        pass
    av = types.ModuleType("av")
    av.__doc__ = "g4l stub: PyAV is not installed."
    av.open = _av_missing  # type: ignore[attr-defined]
    sys.modules["av"] = av


def prepare_audiocraft_import() -> None:
    """Install the shims above (once per process) so ``import audiocraft`` succeeds."""
    global _done
    with _lock:
        if _done:
            return
        _import_torchaudio()
        _import_spacy()
        _import_xformers()
        _import_av()
        _done = True
