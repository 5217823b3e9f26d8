"""Make AudioCraft importable in this environment, without touching site-packages.

Some of AudioCraft's module-level imports cannot succeed here, or cost more than they give,
although the code that MusicGen inference runs never needs them (or needs a few names):

* ``torchaudio``: the 2.11 wheel's compiled extension links against CUDA libraries
  (``libc10_cuda.so``) and is built for another torch ABI, so ``import torchaudio`` raises
  ``OSError`` on a CPU-only torch. AudioCraft only uses torchaudio's pure-Python parts
  (``functional.resample``, transforms), so we import it with a stand-in for
  ``torchaudio._extension`` that reports "no extension".
* ``spacy``: ``audiocraft.modules.conditioners`` imports it for the ``whitespace``
  tokenizer only (a debug/test tokenizer; real MusicGen checkpoints use T5). When spaCy
  is not installed we register a stub whose ``load`` raises a clear error, so every other
  conditioner keeps working.

* ``xformers``: ``audiocraft.modules.transformer`` imports ``xformers.ops`` at module level.
  g4l runs AudioCraft's ``'torch'`` attention backend only (SDPA; it never selects
  ``'xformers'``), on which AudioCraft touches three names: ``ops.unbind`` (a view split,
  as ``torch.unbind``), ``ops.LowerTriangularMask`` (only whether a mask is given matters)
  and ``xformers.profiler`` (whether a profiler runs). A stand-in that provides exactly
  these (:func:`_xformers_standin`) always takes xformers' place, and the package is not a
  dependency: its wheels are built for one torch each, and importing it pulls
  ``torch._dynamo`` and SciPy's optimizers, 2.4 CPU-s of every worker start.

* ``av`` (PyAV): ``audiocraft.data.audio`` imports it for reading and writing audio files,
  which MusicGen inference never does (g4l reads and writes WAV with soundfile). Its
  wheel is 35 MB; where it is not installed (the GPU check's carried wheels) a stub whose
  ``open`` raises stands in.

* ``pytorch_lightning`` (stable-audio-tools): ``stable_audio_tools.models.dit`` imports its
  LoRA package, whose ``callbacks`` module subclasses two Lightning training callbacks at
  module level. Text-to-audio inference never trains, so where Lightning (a training
  framework) is not installed, stand-in base classes that refuse to be instantiated take
  its place (:func:`prepare_stable_audio_import`).

Each shim but xformers' applies only when the real import fails; a working install is used
as is.
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
_stable_audio_done = False


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


def _stub_if_missing(probe: str, members: dict[str, tuple[str, ...]], message: str,
                     error: type[Exception] = RuntimeError) -> None:
    """Import ``probe``; when it cannot be imported, put stand-in modules in its place:
    ``members`` maps each module name to the attributes that raise ``error(message)`` when
    called (AudioCraft imports these packages at module level but MusicGen never calls them)."""
    try:
        importlib.import_module(probe)
        return
    except (ImportError, OSError):
        pass
    root = probe.split(".")[0]
    for name in [n for n in sys.modules if n == root or n.startswith(root + ".")]:
        del sys.modules[name]  # drop a half-initialised package

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise error(message)

    made: dict[str, types.ModuleType] = {}
    for name, attrs in members.items():
        module = types.ModuleType(name)
        module.__doc__ = f"g4l stub: {root} is not installed."
        for attr in attrs:
            setattr(module, attr, missing)
        made[name] = sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in made:
            setattr(made[parent], child, module)


def _import_spacy() -> None:
    _stub_if_missing("spacy", {"spacy": ("load",), "spacy.cli": ("download",)},
                     "spaCy is not installed: AudioCraft's 'whitespace' text tokenizer is unavailable "
                     "(use a T5 or a 'noop' LUT conditioner)", OSError)


def _import_xformers() -> None:
    """Put :func:`_xformers_standin` in xformers' place (unless xformers is already imported)."""
    if "xformers" in sys.modules and sys.modules["xformers"] is not None:
        return  # imported by someone before us: theirs serves AudioCraft as well
    for name, module in _xformers_standin().items():
        sys.modules[name] = module


class _LowerTriangularMask:
    """g4l stand-in for ``xformers.ops.LowerTriangularMask``: a causal mask's marker (the
    torch backend passes ``is_causal=mask is not None`` to SDPA)."""


def _xformers_standin() -> dict[str, types.ModuleType]:
    """The modules ``xformers``, ``xformers.ops`` and ``xformers.profiler`` as AudioCraft's
    torch attention backend uses them; ``memory_efficient_attention`` (the ``'xformers'``
    backend, which g4l never selects) raises."""
    import torch

    doc = "g4l stub: xformers is not used (AudioCraft's 'torch' attention backend; g4l/engine/_compat.py)."

    def memory_efficient_attention(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("xformers is not installed: AudioCraft's 'xformers' attention backend is unavailable "
                           "(MusicGen uses the 'torch' backend)")

    def unbind(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
        return torch.unbind(x, dim)

    root, ops, profiler = (types.ModuleType(n) for n in ("xformers", "xformers.ops", "xformers.profiler"))
    for module in (root, ops, profiler):
        module.__doc__ = doc
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    ops.unbind = unbind  # type: ignore[attr-defined]
    ops.LowerTriangularMask = _LowerTriangularMask  # type: ignore[attr-defined]
    # audiocraft's _is_profiled(): ``profiler._Profiler._CURRENT_PROFILER is not None``.
    profiler.profiler = types.SimpleNamespace(_Profiler=types.SimpleNamespace(_CURRENT_PROFILER=None))  # type: ignore[attr-defined]
    root.ops, root.profiler = ops, profiler  # type: ignore[attr-defined]
    return {"xformers": root, "xformers.ops": ops, "xformers.profiler": profiler}


def _import_av() -> None:
    _stub_if_missing("av", {"av": ("open",)},
                     "PyAV is not installed: AudioCraft's audio file reading and writing is unavailable "
                     "(g4l reads and writes WAV with soundfile)")


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


def _training_only(name: str) -> type:
    """A stand-in for a Lightning base class: subclassable, but instantiating it fails."""

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"pytorch_lightning is not installed: {name} (stable-audio-tools training) "
                           "is unavailable; g4l only runs inference")

    return type(name, (), {"__init__": refuse, "__doc__": f"g4l stand-in for pytorch_lightning's {name}."})


def _import_pytorch_lightning() -> None:
    try:
        importlib.import_module("pytorch_lightning")
        return
    except (ImportError, OSError):
        pass
    for name in [n for n in sys.modules if n == "pytorch_lightning" or n.startswith("pytorch_lightning.")]:
        del sys.modules[name]
    root = types.ModuleType("pytorch_lightning")
    root.__doc__ = "g4l stub: pytorch_lightning is not installed (training only)."
    callbacks = types.ModuleType("pytorch_lightning.callbacks")
    callbacks.__doc__ = root.__doc__
    root.Callback = callbacks.Callback = _training_only("Callback")  # type: ignore[attr-defined]
    callbacks.ModelCheckpoint = _training_only("ModelCheckpoint")  # type: ignore[attr-defined]
    root.callbacks = callbacks  # type: ignore[attr-defined]
    sys.modules["pytorch_lightning"] = root
    sys.modules["pytorch_lightning.callbacks"] = callbacks


class CompileOnFirstCall:
    """``compile(fn, **options)`` put off until the result is first called, then kept.

    ``torch.compile`` itself defers compiling to the first call, but asking for it loads
    TorchInductor's code generators (1.8 CPU-s); a function compiled at import time and
    rarely called should not cost every process that import."""

    def __init__(self, compile: Callable[..., Any], fn: Callable[..., Any], options: dict[str, Any]) -> None:
        self._compile, self._fn, self._options = compile, fn, options
        self._compiled: Callable[..., Any] | None = None
        self._compiled_lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            with self._compiled_lock:
                if self._compiled is None:
                    self._compiled = self._compile(self._fn, **self._options)
        return self._compiled(*args, **kwargs)


def _import_stable_audio_transformer() -> None:
    """Import ``stable_audio_tools.models.transformer`` with its module-level
    ``torch.compile(flex_attention, ...)`` put off (:class:`CompileOnFirstCall`): that
    function serves only sliding-window attention, which the released models do not use."""
    import torch

    if "stable_audio_tools.models.transformer" in sys.modules:
        return
    real = torch.compile

    def deferred(model: Any = None, **options: Any) -> Any:
        if model is None:  # the decorator form: @torch.compile(...)
            return lambda fn: CompileOnFirstCall(real, fn, options)
        return CompileOnFirstCall(real, model, options)

    torch.compile = deferred
    try:
        importlib.import_module("stable_audio_tools.models.transformer")
    finally:
        torch.compile = real


def prepare_stable_audio_import() -> None:
    """Install the shims stable-audio-tools' inference path needs (once per process):
    torchaudio's pure-Python parts (its transforms are imported by the autoencoder and
    data modules) and the Lightning stand-in; then import its transformer module with
    its import-time compile put off."""
    global _stable_audio_done
    with _lock:
        if _stable_audio_done:
            return
        _import_torchaudio()
        _import_pytorch_lightning()
        _import_stable_audio_transformer()
        _stable_audio_done = True
