"""``BatchedMusicGen``: audio in, audio out, over a :class:`~g4l.engine.batching.DecodeLoop`.

What ``MusicGen.generate_continuation``/``generate`` do around the language model, per
job: the prompt is encoded to codes by the model's EnCodec and the description turned into
``ConditioningAttributes`` (AudioCraft's own ``_prepare_tokens_and_attributes``), the codes
are generated in the shared loop, and the finished codes are decoded back to audio. Encoding
and decoding run in the submitting thread; only the token loop is shared.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from g4l.engine import memory
from g4l.engine._compat import prepare_audiocraft_import
from g4l.engine.base import AudioCallback, GenerationParams, PartialAudio, ProgressCallback
from g4l.log import get_logger

prepare_audiocraft_import()

import torch  # noqa: E402  (after the import shims)

from g4l.engine.batching import DecodeLoop, RowHandle, RowRequest  # noqa: E402
from g4l.engine.sampling import SamplingParams  # noqa: E402
from g4l.engine.streaming import WindowedDecoder  # noqa: E402

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = get_logger(__name__)

#: How often a waiting caller reports its row's progress and, when streamed, looks for
#: newly final frames (seconds).
POLL_S = 0.05


def sampling_of(params: GenerationParams) -> SamplingParams:
    """The loop's sampling parameters of a job's generation parameters."""
    return SamplingParams(top_k=params.top_k, top_p=params.top_p, temperature=params.temperature,
                          cfg_coef=params.cfg_coef)


class BatchedMusicGen:
    """Many concurrent generations of one MusicGen model through one decoding loop.

    :param model: a loaded ``audiocraft.models.MusicGen``.
    :param max_batch: most jobs decoding together.
    :param kv_budget_bytes: most bytes of KV cache (``None``: no limit).
    :param decode_slots: threads for whole-generation EnCodec decodes, the most running at
        once (``None``: :func:`default_decode_slots`).
    :param loop_kwargs: further :class:`DecodeLoop` options (``row_multiple``, ``attention``...).
    """

    def __init__(self, model: MusicGen, max_batch: int = 8, kv_budget_bytes: int | None = None,
                 decode_slots: int | None = None, **loop_kwargs: object) -> None:
        self.model = model
        # Whole decodes run on a few threads of their own. Rows of a batch end together and
        # each decode needs its own activations (about 200 MB for 30 s of the tiny model on
        # CPU): eight at once, each in its job's thread, peaked 1.6 GB over the worker's
        # 0.8 GB and ran no faster than the device's parallelism allows; and as glibc keeps
        # what a thread freed in that thread's arena, every new job thread left another
        # 200 MB behind (RSS 1.1-1.4 GB, swinging with the batches). On a fixed few threads
        # the same memory is reused: the worker's RSS stays flat (docs/engine-batching.md).
        self.decode_slots = decode_slots or default_decode_slots(model.device)
        self._decoders = ThreadPoolExecutor(self.decode_slots, thread_name_prefix="encodec-decode")
        if "autocast" not in loop_kwargs and model.device.type == "cuda":
            # MusicGen's own mixed precision on CUDA (float16), as its generate runs the LM.
            loop_kwargs["autocast"] = lambda: model.autocast
        self.loop = DecodeLoop(model.lm, max_batch=max_batch, kv_budget_bytes=kv_budget_bytes,
                               **loop_kwargs)  # type: ignore[arg-type]
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.model.frame_rate)

    # ------------------------------------------------------------ submit
    def submit(self, prompt: np.ndarray | None, params: GenerationParams,
               on_progress: ProgressCallback | None = None, priority: int = 0) -> RowHandle:
        """Queue one generation: a continuation of ``prompt`` (``(channels, frames)`` float32
        at :attr:`sample_rate`), or from nothing when ``prompt`` is ``None``.

        :raises ValueError: for a duration past the model's window or a prompt too long.
        """
        model = self.model
        if params.duration > model.max_duration:
            raise ValueError(f"duration {params.duration} s is past the model's window ({model.max_duration} s)")
        max_gen_len = int(params.duration * model.frame_rate)
        wav = None
        if prompt is not None:
            wav = torch.from_numpy(np.ascontiguousarray(prompt, dtype=np.float32))[None].to(model.device)
        with torch.inference_mode():
            attributes, codes = model._prepare_tokens_and_attributes([params.text], wav)
        request = RowRequest(attributes=attributes, max_gen_len=max_gen_len,
                             prompt=None if codes is None else codes[0], params=sampling_of(params),
                             seed=params.seed, on_progress=on_progress, priority=priority)
        return self.loop.submit(request)

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """``[K, T]`` codes to ``(channels, frames)`` float32 audio (EnCodec, one row alone)."""
        with torch.inference_mode():
            audio = self.model.compression_model.decode(codes[None].to(self.model.device), None)
        return np.ascontiguousarray(audio[0].detach().to("cpu", torch.float32).numpy())

    def _timed_decode(self, codes: torch.Tensor) -> tuple[float, np.ndarray]:
        """:meth:`decode` on a decode thread, with when it began (its wait for a thread
        ends); the activations it freed go back to the system (:func:`memory.trim_heap`)."""
        began = time.monotonic()
        audio = self.decode(codes)
        memory.trim_heap()
        return began, audio

    def generate(self, prompt: np.ndarray | None, params: GenerationParams,
                 on_progress: ProgressCallback | None = None, priority: int = 0,
                 timeout: float | None = None, on_audio: AudioCallback | None = None,
                 chunk_s: float = 1.0) -> np.ndarray:
        """Submit, wait (the loop must be running: :meth:`start`) and decode one generation.

        ``on_progress`` runs in the calling thread, not on the loop's: a worker's progress
        callback talks to Redis (progress notices, the cancel and give-way checks), and on
        the shared loop thread every row's round trips were added to every other row's
        steps (measured: 0.04 s a row over a 30 s generation, 7% of an 8-row loop). It is
        called every :data:`POLL_S` with the row's latest step counts; whatever it raises
        (``Cancelled``...) drops the row before its next step and is raised here.

        With ``on_audio`` the generation is streamed: while the row decodes, this (the
        caller's) thread decodes its newly final frames every ``chunk_s`` seconds of audio
        in overlapping windows (:class:`~g4l.engine.streaming.WindowedDecoder`) and hands
        each piece to ``on_audio``; the last piece is the rest of the whole decode, which
        is still what this returns. A failing ``on_audio`` stops the streaming, not the job.
        """
        with memory.fails_alone():  # encoding the prompt
            handle = self.submit(prompt, params, None, priority)
        decoder: WindowedDecoder | None = None
        hop = int(round(self.sample_rate / self.frame_rate))
        prompt_frames = 0
        try:
            if on_audio is not None:
                prompt_frames = 0 if handle.request.prompt is None else int(handle.request.prompt.shape[-1])
                decoder = WindowedDecoder(self.decode, hop, max(1, int(round(chunk_s * self.frame_rate))))
            with memory.fails_alone():  # a streamed piece's decode
                codes, on_audio = self._wait(handle, on_progress, decoder, on_audio, prompt_frames * hop, timeout)
        except BaseException:
            handle.cancel()
            raise
        decoding = time.monotonic()
        with memory.fails_alone():
            began, audio = self._decoders.submit(self._timed_decode, codes).result()
        joined, finished = handle.joined_at or decoding, handle.finished_at or decoding
        # Where a job's model time went (docs/engine-batching.md, "Where the time goes").
        log.info("row generated", wait_s=round(joined - handle.submitted_at, 3),
                 loop_s=round(finished - joined, 3), codec_wait_s=round(began - decoding, 3),
                 codec_s=round(time.monotonic() - began, 3), steps=int(codes.shape[-1]))
        if on_audio is not None and decoder is not None:
            rest = decoder.rest(audio)
            _hand_out(on_audio, PartialAudio(rest, decoder.emitted_samples, self.sample_rate,
                                             prompt_frames * hop, final=True))
        return audio

    def _wait(self, handle: RowHandle, on_progress: ProgressCallback | None, decoder: WindowedDecoder | None,
              on_audio: AudioCallback | None, prompt_samples: int,
              timeout: float | None) -> tuple[torch.Tensor, AudioCallback | None]:
        """Wait for the row in this (the caller's) thread, reporting its progress and, when
        streamed, handing out its audio as it becomes final; returns its codes and the
        audio callback (``None`` once it failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        reported = (0, 0)
        while not handle.wait(POLL_S):
            if on_progress is not None and handle.progress != reported:
                reported = handle.progress
                on_progress(*reported)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the row has not finished")
            if on_audio is None or decoder is None or not decoder.ready(handle.steps_taken):
                continue  # (the cheap bound first: the codes are read about once a piece)
            codes = handle.codes_so_far()
            if not decoder.ready(int(codes.shape[-1])):
                continue
            start = decoder.emitted_samples
            piece = decoder.feed(codes)
            if piece is not None and not _hand_out(on_audio, PartialAudio(piece, start, self.sample_rate,
                                                                          prompt_samples)):
                on_audio = None
        return handle.result(0), on_audio

    # ------------------------------------------------------------ the loop thread
    def start(self) -> None:
        """Run the decoding loop in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="decode-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with torch.inference_mode():
            self.loop.serve(self._stop)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop thread after its current iteration."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def default_decode_slots(device: torch.device | str) -> int:
    """Whole-generation decodes one model runs at once: on CPU as many as fit the cores
    beside each other (each takes ``torch.get_num_threads()`` of them), on a GPU two (one
    computing while the other's result is copied out)."""
    if torch.device(device).type == "cpu":
        return max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))
    return 2


def _hand_out(on_audio: AudioCallback, piece: PartialAudio) -> bool:
    """Give ``piece`` to ``on_audio``; whether it took it (a failure is logged once and
    ends the streaming of that generation, never the generation)."""
    try:
        on_audio(piece)
        return True
    except Exception:
        log.exception("streaming a generation's audio failed; it goes on unstreamed")
        return False
