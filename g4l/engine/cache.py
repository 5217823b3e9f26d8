"""``ModelCache``: load each allowed model once per process and hand out its engine.

Every model belongs to a family (:mod:`g4l.engine.families`: MusicGen, Stable Audio Open
Small, MelodyFlow), whose module loads it (``load_engine(model_id, source, device)``).
Model ids resolve as follows:

* ``'debug'``: the tiny random-weight MusicGen of :mod:`g4l.engine.debug_model`, built in
  process by AudioCraft's builders;
* another family's debug id (``debug-stable-audio``, ``debug-melodyflow``): its tiny model,
  written once in the released file layout under the cache's ``debug_dir`` and loaded from
  there by the family's production loader;
* an id the operator mapped to a directory (``G4L_MODEL_PATHS``): that directory, as below;
* an existing local directory: a checkpoint directory in its family's released layout
  (MusicGen, MelodyFlow: ``state_dict.bin`` + ``compression_state_dict.bin``; Stable Audio:
  ``model_config.json`` + ``model.safetensors``);
* anything else (``'facebook/musicgen-small'``, ``'thepatch/vanya_ai_dnb_0.1'``...): a
  Hugging Face repo id, loaded by its family's loader (downloads on first use, or reads
  the Hugging Face cache only with ``HF_HUB_OFFLINE=1``).

A released checkpoint also names, by hub id, its text encoder (``t5-base``) and usually its
codec (``facebook/encodec_32khz``): those come from the Hugging Face cache (``HF_HOME``)
even when the checkpoint is a directory.

Importing this module is cheap: torch and AudioCraft are imported on the first load.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from g4l.engine.debug_model import DEBUG_MODEL_ID
from g4l.engine.families import ModelFamily, expand_allowlist, family_of
from g4l.errors import ModelNotAllowed, ModelUnavailable
from g4l.log import adopt_library_loggers

_DEVICES = ("auto", "cpu", "cuda")


class ModelLoadError(ModelUnavailable):
    """An allowed model could not be loaded (missing files, download failure, bad config).
    Its message is one line an operator understands (:func:`load_failure_reason`)."""


#: Exception names (anywhere in the chain) that mean "the hub could not be reached".
_OFFLINE_SIGNS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
                  "NameResolutionError", "MaxRetryError", "gaierror")


def load_failure_reason(model_id: str, exc: BaseException) -> str:
    """One line saying why ``model_id`` did not load and what to do about it."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = {type(e).__name__ for e in chain}
    last = str(chain[-1]).splitlines()[0][:160] if str(chain[-1]) else type(chain[-1]).__name__
    if names & set(_OFFLINE_SIGNS) or any("resolve" in str(e).lower() and "host" in str(e).lower() for e in chain):
        repo = _hub_repo_fetched(chain)
        if repo is not None and repo != model_id:
            # A checkpoint found (a directory, or cached) whose parts are not: released
            # MusicGens name their text encoder ('t5-base') and codec by hub id.
            return (f"model {model_id!r} needs {repo!r} from the Hugging Face hub, which is not in the cache "
                    f"({_hub_cache_dir()}) and could not be downloaded (offline or no network): {last}. "
                    f"Download {repo!r} once into that cache (HF_HOME), or use G4L_MODELS=debug.")
        return (f"model {model_id!r} could not be downloaded from the Hugging Face hub (no network?): {last}. "
                "Use G4L_MODELS=debug (a tiny built-in model), a local checkpoint directory, or a Hugging Face "
                f"cache that holds it (HF_HOME; now {_hub_cache_dir()}).")
    if isinstance(exc, FileNotFoundError):
        return f"model {model_id!r}: {last}. Point G4L_MODELS at a checkpoint directory in the model's released layout."
    return f"model {model_id!r} could not be loaded: {type(chain[-1]).__name__}: {last}"


#: Argument names under which transformers' ``from_pretrained`` and huggingface_hub's
#: downloads hold the hub repo they fetch.
_REPO_ARGS = ("pretrained_model_name_or_path", "repo_id")


def _hub_repo_fetched(chain: list[BaseException]) -> str | None:
    """The hub repo whose files were being fetched when the load failed, read off the
    failing calls' arguments (the exceptions' own messages do not name it)."""
    for error in chain:
        for frame, _line in traceback.walk_tb(error.__traceback__):
            for name in _REPO_ARGS:
                value = frame.f_locals.get(name)
                if isinstance(value, str) and value:
                    return value
    return None


def _hub_cache_dir() -> str:
    """The Hugging Face hub cache this process reads (``HF_HOME``/``HF_HUB_CACHE``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - a dependency
        return "unknown"


def _engine_code_digest() -> str:
    """A digest of the engine's code: a debug model written by other code is not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def normalize_model_id(model_id: str) -> str:
    """The canonical form of a model id: surrounding whitespace removed."""
    return model_id.strip()


def resolve_device(device: str) -> str:
    """``'auto'`` -> ``'cuda'`` when a GPU is visible, else ``'cpu'``; others unchanged."""
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelCache:
    """Loads allowed models on demand and keeps them for the life of the process.

    Args:
        allowlist: the model ids that may be loaded (normalized, blanks dropped).
        device: ``'cpu'``, ``'cuda'`` or ``'auto'`` (GPU when available).
        retry_after_s: how long a failed load is refused before it is tried again.
        paths: model id -> checkpoint directory, for allowed ids served from local files.
        debug_dir: where the debug models of the families loaded from files are written
            (default: ``g4l-debug-models`` in the system's temporary directory, shared by
            every server on the machine).

    ``debug`` in the allowlist allows the debug model of every family
    (:func:`~g4l.engine.families.expand_allowlist`).
    """

    def __init__(self, allowlist: Iterable[str], device: str = "auto", retry_after_s: float = 600.0,
                 paths: Mapping[str, str] | None = None, debug_dir: str | Path | None = None) -> None:
        if device not in _DEVICES:
            raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
        self._allowlist = expand_allowlist(normalize_model_id(x) for x in allowlist)
        self._device = device
        self._paths = {normalize_model_id(k): v for k, v in (paths or {}).items()}
        self._debug_dir = Path(debug_dir) if debug_dir else Path(tempfile.gettempdir()) / "g4l-debug-models"
        #: Engines by model id: a MusicGenEngine, StableAudioEngine or MelodyFlowEngine.
        self._engines: dict[str, Any] = {}
        #: Model ids being loaded now (``loading`` in the families' state).
        self._loading: set[str] = set()
        # One lock per model id: two threads asking for the same model load it once,
        # while a slow download of one model does not block getting another.
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        #: model id -> (reason, when): loads that failed, refused until ``retry_after_s`` passed.
        self._failed: dict[str, tuple[str, float]] = {}
        self._retry_after_s = retry_after_s

    @property
    def allowlist(self) -> list[str]:
        """The normalized allowed ids, in configuration order."""
        return list(self._allowlist)

    @property
    def device(self) -> str:
        """The torch device models are loaded on (``'auto'`` resolved)."""
        return resolve_device(self._device)

    def is_allowed(self, model_id: str) -> bool:
        """Whether ``model_id`` (after normalization) is in the allowlist."""
        return normalize_model_id(model_id) in self._allowlist

    def loaded(self) -> list[str]:
        """Ids of the models loaded so far, in load order."""
        with self._guard:
            return list(self._engines)

    def failed(self) -> dict[str, str]:
        """Model id -> why it could not be loaded, for every model whose last load failed."""
        with self._guard:
            return {model_id: reason for model_id, (reason, _at) in self._failed.items()}

    def sizes(self) -> dict[str, str]:
        """Model id -> size (``small`` / ``medium`` / ``large``) of every loaded MusicGen."""
        with self._guard:
            return {model_id: engine.size for model_id, engine in self._engines.items() if hasattr(engine, "size")}

    def family(self, model_id: str) -> ModelFamily:
        """The family ``model_id`` belongs to."""
        return family_of(normalize_model_id(model_id), self._paths)

    def state(self, model_id: str) -> str:
        """``loaded``, ``loading``, ``failed`` or ``not_loaded``."""
        key = normalize_model_id(model_id)
        with self._guard:
            if key in self._engines:
                return "loaded"
            if key in self._loading:
                return "loading"
            return "failed" if key in self._failed else "not_loaded"

    def get(self, model_id: str) -> Any:
        """The engine for ``model_id`` (its family's engine type), loading it on first use.

        Raises:
            ModelNotAllowed: the id is not in the allowlist.
            ModelLoadError: loading failed (now, or less than ``retry_after_s`` ago: a dead
                download is not retried on every request); the message says why.
        """
        key = normalize_model_id(model_id)
        if key not in self._allowlist:
            raise ModelNotAllowed(f"model {key!r} is not allowed on this server "
                                  f"(allowed: {', '.join(self._allowlist) or 'none'})")
        with self._guard:
            engine = self._engines.get(key)
            if engine is not None:
                return engine
            failure = self._failed.get(key)
            if failure is not None and time.monotonic() - failure[1] < self._retry_after_s:
                raise ModelLoadError(failure[0])
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                engine = self._engines.get(key)  # loaded by another thread meanwhile
            if engine is None:
                with self._guard:
                    self._loading.add(key)
                try:
                    engine = self._load(key)
                except ModelLoadError as exc:
                    with self._guard:
                        self._failed[key] = (exc.message, time.monotonic())
                    raise
                finally:
                    with self._guard:
                        self._loading.discard(key)
                with self._guard:
                    self._engines[key] = engine
                    self._failed.pop(key, None)
            return engine

    def _load(self, model_id: str) -> Any:
        device = self.device
        family = self.family(model_id)
        try:
            if model_id == DEBUG_MODEL_ID:
                from g4l.engine.debug_model import build_debug_musicgen
                from g4l.engine.musicgen import MusicGenEngine  # torch + AudioCraft, on first use

                return MusicGenEngine(build_debug_musicgen(device=device), model_id=model_id)
            loader = importlib.import_module(family.loader)  # the family's libraries, on first use
            source = self._debug_checkpoint(family, loader) if model_id == family.debug_model \
                else self._checkpoint_name(model_id)
            # The hub and transformers bring their own stderr handlers: structured lines only.
            adopt_library_loggers()
            return loader.load_engine(model_id, source, device)
        except Exception as exc:
            raise ModelLoadError(load_failure_reason(model_id, exc)) from exc

    def _debug_checkpoint(self, family: ModelFamily, loader: Any) -> str:
        """The directory of ``family``'s debug model, written in the released layout once
        per version of the code that builds it (into a scratch directory renamed into
        place: two workers never see half a model), and shared by every server on the
        machine (the weights are seeded: always the same)."""
        target = self._debug_dir / f"{family.debug_model}-{_engine_code_digest()}"
        if not target.is_dir():
            self._debug_dir.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{family.debug_model}-", dir=self._debug_dir))
            try:
                loader.write_debug_checkpoint(scratch)
                os.rename(scratch, target)
            except OSError:
                if not target.is_dir():  # not another worker's rename winning the race
                    raise
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return str(target)

    def _checkpoint_name(self, model_id: str) -> str:
        """What to pass to the family's loader: a local directory or a HF repo id."""
        mapped = self._paths.get(model_id)
        if mapped is not None:
            path = os.path.expanduser(mapped)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no checkpoint directory at {path} (G4L_MODEL_PATHS)")
            return path
        path = os.path.expanduser(model_id)
        if os.path.isdir(path):
            return path  # the loaders read <dir>/state_dict.bin etc. directly
        if model_id.startswith(("/", ".", "~")):
            # Clearly a path: don't let it fall through to a confusing Hub lookup.
            raise FileNotFoundError(f"no checkpoint directory at {path}")
        return model_id
