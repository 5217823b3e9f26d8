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

Both shims apply only when the real import fails; a working install is used as is.
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


def prepare_audiocraft_import() -> None:
    """Install the shims above (once per process) so ``import audiocraft`` succeeds."""
    global _done
    with _lock:
        if _done:
            return
        _import_torchaudio()
        _import_spacy()
        _done = True
