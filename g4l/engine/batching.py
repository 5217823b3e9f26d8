"""``DecodeLoop``: continuous batching of MusicGen token generation over one model.

One loop runs every active row (a job) of one language model, one token step at a time:

* **join**: a submitted row waits in a queue (higher priority first, then first come); at
  the next iteration with room in the batch and the KV budget it is *prefilled* alone (its
  conditions and prompt codes in one forward pass, written into its cache slots), which
  also samples its first token; from the next step it decodes with the others.
* **step**: one forward pass over all active rows, each at its own position (see
  :mod:`g4l.engine.batch_lm`), then each row samples with its own parameters and generator
  (:mod:`g4l.engine.sampling`) and reports progress.
* **leave**: a row that has sampled its last token, was cancelled (between steps) or whose
  callback failed leaves; the last row moves into its cache slot, the others go on.

Rows are laid out as half-row pairs (conditional, unconditional: classifier-free guidance)
in slots ``2i, 2i+1``. With two rows or more the forward pass runs over lines padded to a
multiple of ``row_multiple``, because the BLAS kernels of a linear layer round differently
for some line counts (measured on CPU: 1-3, 5-7, 9-11 lines differ from the rest, multiples
of 4 agree): a row's logits are then bit-for-bit the same in any batch of two or more. A
lone row runs its 2 lines unpadded by default: that is stock AudioCraft's own kernel (bit
for bit its output, and on this CPU's MKL 2 lines cost about 0.6 of 4), at the price of a
last-bit difference between a row alone and batched; ``pad_lone_row=True`` pads it too
(fully batch-invariant, slower alone).

Memory: the KV cache grows to the rows it holds (slots, positions) within
``kv_budget_bytes``; a row that would pass it waits for a row to leave. An out-of-memory
error in a step puts the most recently joined row back in the queue (its tokens and
generator kept: it resumes with a prefill of everything it has) and lowers the batch limit
until the batch empties; a joining row whose prefill runs out of memory waits for the batch
to empty, then retries in smaller chunks; a row is failed (``GPU_OUT_OF_MEMORY``) only when
it runs out of memory alone. A step samples every row before it writes any token, so a step
that fails part-way is retried whole. :data:`g4l.engine.memory.TEST_ONLY_OOM_ABOVE_ROWS`
injects the error on CPU (tests only).

Why one file of over 400 lines: join, step and leave all act on the loop's rows and its one KV
cache under one lock; the model-side step (:mod:`g4l.engine.batch_lm`) and the sampling
(:mod:`g4l.engine.sampling`) are modules of their own.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from g4l.engine import memory
from g4l.engine.base import Cancelled, ProgressCallback
from g4l.engine.batch_lm import KEY_BLOCK, BatchedLM, RowCondition
from g4l.engine.kv_cache import CacheShape, KVBudgetExceeded, KVCache, round_up
from g4l.engine.sampling import SamplingParams, guided, new_generator, sample_rows

if TYPE_CHECKING:
    from audiocraft.models.lm import LMModel

#: Codes not generated yet (AudioCraft's ``unknown_token``).
UNKNOWN = -1


@dataclass
class RowRequest:
    """One generation for the loop.

    :param attributes: the row's ``ConditioningAttributes`` (a list of one), as
        ``MusicGen._prepare_tokens_and_attributes`` builds them.
    :param max_gen_len: frames of the output, prompt included.
    :param prompt: ``[K, P]`` prompt codes, or ``None`` to generate from nothing.
    :param params: sampling parameters.
    :param seed: seeds the row's generator (``None``: random).
    :param on_progress: ``on_progress(done, total)`` after each of the row's steps, on the
        loop's thread; raising :class:`~g4l.engine.base.Cancelled` cancels the row.
    :param priority: higher joins first (interactive jobs over stations).
    """

    attributes: list[Any]
    max_gen_len: int
    prompt: torch.Tensor | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    on_progress: ProgressCallback | None = None
    priority: int = 0


class RowHandle:
    """The caller's side of a submitted row: wait for its codes, or cancel it."""

    def __init__(self, request: RowRequest) -> None:
        self.request = request
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._codes: torch.Tensor | None = None
        self._error: BaseException | None = None
        #: When the row was submitted, joined the batch and ended (``time.monotonic``, diagnostics).
        self.submitted_at = time.monotonic()
        self.joined_at: float | None = None
        self.finished_at: float | None = None
        #: ``(steps done, steps in all)`` after the row's latest step (read from any thread).
        self.progress: tuple[int, int] = (0, 0)
        #: The guided logits of each of the row's steps, when the loop records them.
        self.logits: list[torch.Tensor] = []
        self._row: _Row | None = None  # set by the loop; read by codes_so_far

    @property
    def steps_taken(self) -> int:
        """Sequence steps the row has filled, prompt included: a cheap upper bound of the
        frames :meth:`codes_so_far` returns."""
        row = self._row
        return 0 if row is None else row.offset

    def codes_so_far(self) -> torch.Tensor:
        """The row's frames whose every codebook is sampled, prompt included: ``[K, n]``.

        Safe from any thread while the loop runs: a sequence step is written before the
        row's offset passes it and is never written again, so the steps before the offset
        read here are final. With MusicGen's delay pattern ``n`` trails the steps taken by
        the number of codebooks. Streamed decoding (:mod:`g4l.engine.streaming`) reads it.
        """
        row = self._row
        if row is None:
            return torch.empty((0, 0), dtype=torch.long)
        offset = row.offset
        seq = torch.full_like(row.seq, UNKNOWN)
        seq[:, :offset] = row.seq[:, :offset]
        codes, _, _ = row.pattern.revert_pattern_sequence(seq[None], special_token=UNKNOWN)
        codes = codes[0, :, :self.request.max_gen_len]
        sampled = (codes != UNKNOWN).all(dim=0)
        n = int(sampled.shape[0]) if bool(sampled.all()) else int(torch.argmin(sampled.int()))
        return codes[:, :n]

    def cancel(self) -> None:
        """Ask the loop to drop the row before its next step (or before it joins)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        """Whether the row has ended (codes, cancel or error)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the row to end; whether it has."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> torch.Tensor:
        """The row's ``[K, max_gen_len]`` codes, prompt included.

        :raises Cancelled: when the row was cancelled.
        :raises TimeoutError: when it has not ended within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError("the row has not finished")
        if self._error is not None:
            raise self._error
        assert self._codes is not None
        return self._codes

    def _finish(self, codes: torch.Tensor | None, error: BaseException | None) -> None:
        self._codes, self._error = codes, error
        self.finished_at = time.monotonic()
        self._done.set()


@dataclass
class _Row:
    """A row inside the loop: its pattern sequence and where it stands in it.

    The codes live on the host whatever the model's device: a step reads one column per
    row and writes one back, which as numpy views costs about a microsecond a row where
    torch indexing cost tens (per-row Python work is what grows with the batch); one copy
    each way per step carries them to and from the device.
    """

    handle: RowHandle
    order: int
    seq: torch.Tensor  # [K, S] pattern sequence on the CPU, UNKNOWN where not generated yet
    valid: torch.Tensor  # [K, S] the pattern's mask: False where a code is the special token
    pattern: Any
    first: int  # first sequence step to sample (after the prompt)
    offset: int  # next sequence step to sample
    generator: torch.Generator
    params: SamplingParams  # the request's, top_k clamped to the vocabulary (as stock's topk needs)
    condition: RowCondition | None = None

    def __post_init__(self) -> None:
        self.seq_np = self.seq.numpy()  # views: writes go to the tensors
        self.valid_np = self.valid.numpy()

    @property
    def length(self) -> int:
        return int(self.seq.shape[1])

    @property
    def finished(self) -> bool:
        return self.offset >= self.length


class DecodeLoop:
    """Continuous batching over one AudioCraft ``LMModel``.

    :param lm: the model (``MusicGen.lm``), in eval mode.
    :param max_batch: most rows decoding at once.
    :param kv_budget_bytes: most bytes of KV cache (``None``: no limit).
    :param row_multiple: with two rows or more, the lines of a forward pass are padded to a
        multiple of this (see the module docstring; 1: no padding).
    :param pad_lone_row: pad a lone row's 2 lines as well (bit-exact alone vs batched).
        (see the module docstring; 1 disables the padding).
    :param attention: ``'math'`` or ``'sdpa'`` (:class:`~g4l.engine.batch_lm.BatchedLM`).
    :param prefill_chunk: positions per prefill forward pass (``None``: all at once).
    :param autocast: a context manager factory wrapped around each forward pass (MusicGen's
        own ``model.autocast`` on CUDA); ``None``: none.
    :param cache_dtype: dtype of the KV cache (default: the weights').
    :param record_logits: keep each row's guided logits on its handle (tests, diagnostics).
    """

    def __init__(self, lm: LMModel, max_batch: int = 8, kv_budget_bytes: int | None = None,
                 row_multiple: int = 4, pad_lone_row: bool = False, attention: str = "math",
                 prefill_chunk: int | None = None,
                 autocast: Callable[[], AbstractContextManager[Any]] | None = None,
                 cache_dtype: torch.dtype | None = None, record_logits: bool = False) -> None:
        if max_batch < 1 or row_multiple < 1:
            raise ValueError("max_batch and row_multiple must be >= 1")
        self.model = BatchedLM(lm, attention=attention)
        self.max_batch = max_batch
        self.row_multiple = row_multiple
        self.pad_lone_row = pad_lone_row
        self.prefill_chunk = prefill_chunk
        self._prefill_chunk_configured = prefill_chunk  # restored once a row failed for memory alone
        self.record_logits = record_logits
        self._autocast = autocast or nullcontext
        m = self.model
        # Batch-invariant mode: text conditions are read in whole key blocks too (a T5
        # description's length varies per row; see docs/engine-batching.md, "The text path").
        cross_step = KEY_BLOCK if pad_lone_row and attention == "math" else 1
        self.cache = KVCache(len(m.layers), m.num_heads, m.head_dim, m.has_cross, m.device,
                             cache_dtype or m.dtype, budget_bytes=kv_budget_bytes, cross_step=cross_step)
        self.rows: list[_Row] = []  # active rows; row i holds half-row slots 2i, 2i+1
        self._pending: list[_Row] = []
        self._lock = threading.Condition()
        self._order = itertools.count()
        self._batch_limit = max_batch  # lowered by out-of-memory errors until the batch empties
        #: Forward passes run (prefills and steps), for diagnostics and tests.
        self.steps = 0
        self.prefills = 0
        #: The most rows that decoded together so far (diagnostics and tests).
        self.most_active = 0
        #: Out-of-memory errors met (a batch split, a prefill retried smaller, a row failed).
        self.out_of_memory = 0

    # ------------------------------------------------------------ submit
    def submit(self, request: RowRequest) -> RowHandle:
        """Queue a row; it joins at a coming iteration. Thread-safe.

        :raises ValueError: for a prompt that does not fit the output length.
        """
        handle = RowHandle(request)
        row = self._new_row(handle)
        with self._lock:
            self._pending.append(row)
            self._lock.notify_all()
        return handle

    def _new_row(self, handle: RowHandle) -> _Row:
        request = handle.request
        model = self.model
        k = model.num_codebooks
        prompt = request.prompt
        prompt_len = 0 if prompt is None else int(prompt.shape[-1])
        if prompt is not None and (prompt.dim() != 2 or prompt.shape[0] != k):
            raise ValueError(f"prompt codes must be [{k}, frames], got {tuple(prompt.shape)}")
        if prompt_len >= request.max_gen_len:
            raise ValueError(f"prompt ({prompt_len} frames) must be shorter than the output "
                             f"({request.max_gen_len} frames)")
        # The pattern sequence exactly as LMModel.generate builds it for one sample.
        pattern = self.model.lm.pattern_provider.get_pattern(request.max_gen_len)
        codes = torch.full((1, k, request.max_gen_len), UNKNOWN, dtype=torch.long)
        if prompt is not None:
            codes[0, :, :prompt_len] = prompt.cpu()
        seq, _, valid = pattern.build_pattern_sequence(codes, self.model.lm.special_token_id)
        first = pattern.get_first_step_with_timesteps(prompt_len)
        assert first is not None
        params = request.params
        if params.top_k > model.card:
            params = SamplingParams(model.card, params.top_p, params.temperature, params.cfg_coef)
        row = _Row(handle=handle, order=next(self._order), seq=seq[0], valid=valid.bool(), pattern=pattern,
                   first=first, offset=first, generator=new_generator(request.seed, model.device), params=params)
        handle._row = row
        return row

    # ------------------------------------------------------------ the loop
    @property
    def active(self) -> int:
        """Rows decoding now."""
        return len(self.rows)

    @property
    def waiting(self) -> int:
        """Rows queued to join."""
        with self._lock:
            return len(self._pending)

    def idle(self) -> bool:
        """No row decoding or waiting."""
        return not self.rows and self.waiting == 0

    def step(self) -> bool:
        """One iteration: drop cancelled rows, admit waiting ones (prefill), one decoding step
        for every active row, retire finished ones. Returns whether any row was active."""
        self._drop_cancelled()
        self._admit()
        if not self.rows:
            return False
        self._decode()
        self._retire()
        return True

    def run_until_idle(self) -> None:
        """Iterate until no row is active or waiting (rows submitted meanwhile included)."""
        while not self.idle():
            self.step()

    def serve(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Iterate until ``stop`` is set, sleeping while there is nothing to do (a worker's
        loop thread)."""
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception as exc:
                # An unexpected error in a shared step: end the rows it touched with it
                # rather than leave their callers waiting on a dead thread.
                self._fail_active(exc)
                continue
            if not busy:
                with self._lock:
                    if not self._pending:
                        self._lock.wait(poll_s)

    # ------------------------------------------------------------ join
    def _drop_cancelled(self) -> None:
        with self._lock:
            kept = []
            for row in self._pending:
                if row.handle.cancelled:
                    row.handle._finish(None, Cancelled())
                else:
                    kept.append(row)
            self._pending = kept
        for row in [r for r in self.rows if r.handle.cancelled]:
            self._leave(row, None, Cancelled())

    def _next_pending(self) -> _Row | None:
        with self._lock:
            if not self._pending:
                return None
            # Highest priority first, then first come (order also keeps a resumed row's place).
            self._pending.sort(key=lambda r: (-r.handle.request.priority, r.order))
            return self._pending[0]

    def _admit(self) -> None:
        while len(self.rows) < self._batch_limit:
            row = self._next_pending()
            if row is None:
                return
            index = len(self.rows)
            try:
                if row.condition is None:
                    with torch.inference_mode(), self._autocast():
                        row.condition = self.model.condition(row.handle.request.attributes)
                wanted = CacheShape(self._lines(index + 1), row.length, row.condition.length)
                # A lone row always gets its cache: a job never fails for the budget alone.
                self.cache.reserve(wanted, enforce_budget=bool(self.rows))
            except KVBudgetExceeded:
                return  # waits for a row to leave
            except memory.OutOfMemory:
                # Its conditions or a cache grown for it do not fit (the cache is left as it
                # was): it waits for the batch to empty; alone, nothing smaller can be tried.
                self.out_of_memory += 1
                memory.release()
                if self.rows:
                    self._batch_limit = len(self.rows)
                    return
                with self._lock:
                    self._pending.remove(row)
                row.handle._finish(None, memory.too_big())
                continue
            with self._lock:
                self._pending.remove(row)
            try:
                self._prefill(row, index)
            except memory.OutOfMemory:
                self.out_of_memory += 1
                # The joining row waits (the rows already decoding keep their places) until
                # the batch empties; alone, it retries in smaller prefill chunks.
                self._batch_limit = max(1, len(self.rows))
                memory.release()
                with self._lock:
                    self._pending.append(row)
                if not self.rows:
                    self._shrink_prefill(row)
                return
            except Exception as exc:  # a broken row fails alone
                row.handle._finish(None, exc)
                continue
            self.rows.append(row)
            self.most_active = max(self.most_active, len(self.rows))
            row.handle.joined_at = row.handle.joined_at or time.monotonic()
            self._after_sample(row)
            if row in self.rows and row.finished:
                self._leave(row, self._codes(row), None)

    def _shrink_prefill(self, row: _Row) -> None:
        """A row ran out of memory prefilling alone: smaller chunks, then give up."""
        chunk = self.prefill_chunk or row.offset
        if chunk <= 1:
            with self._lock:
                self._pending.remove(row)
            self.prefill_chunk = self._prefill_chunk_configured  # the next row may well fit
            self._batch_limit = self.max_batch
            row.handle._finish(None, memory.too_big())
            return
        self.prefill_chunk = max(1, chunk // 2)

    def _prefill(self, row: _Row, index: int) -> None:
        """Write the row's conditions and everything before ``row.offset`` into its slots and
        sample ``row.offset`` (what the first iteration of ``LMModel.generate`` does)."""
        slot = 2 * index
        assert row.condition is not None
        self.cache.set_row(slot, row.condition.keys, row.condition.values)
        upto = row.offset
        chunk = self.prefill_chunk or upto
        logits = None
        with torch.inference_mode(), self._autocast():
            memory.apply_test_only_fault(1)
            for begin in range(0, upto, chunk):
                stop = min(upto, begin + chunk)
                tokens = row.seq[:, begin:stop].to(self.model.device).unsqueeze(0).expand(2, -1, -1)  # both halves
                logits = self.model.forward(tokens, [begin, begin], self.cache, slot)
            assert logits is not None
            self._sample([row], logits)
        self.prefills += 1

    # ------------------------------------------------------------ step
    def _decode(self) -> None:
        while True:
            try:
                self._forward_all()
                return
            except memory.OutOfMemory:
                self.out_of_memory += 1
                if len(self.rows) <= 1:
                    memory.release()
                    self._leave(self.rows[0], None, memory.too_big())
                    return
                self._out_of_memory()

    def _forward_all(self) -> None:
        rows = self.rows
        lines = self._lines(len(rows))
        k = self.model.num_codebooks
        special = self.model.lm.special_token_id
        host = np.full((lines, k, 1), special, dtype=np.int64)
        start = [0] * lines
        for i, row in enumerate(rows):
            # The input of a step is the row's previous sequence step, at that position.
            host[2 * i:2 * i + 2, :, 0] = row.seq_np[:, row.offset - 1]
            start[2 * i] = start[2 * i + 1] = row.offset - 1
        tokens = torch.from_numpy(host).to(self.model.device)
        with torch.inference_mode(), self._autocast():
            memory.apply_test_only_fault(len(rows))
            logits = self.model.forward(tokens, start, self.cache, 0)
            self._sample(rows, logits)
        self.steps += 1
        for row in list(rows):
            self._after_sample(row)

    def _lines(self, rows: int) -> int:
        """Lines of a forward pass over ``rows`` rows (two halves each, padded)."""
        if rows == 1 and not self.pad_lone_row:
            return 2
        return round_up(2 * rows, self.row_multiple)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Guide, sample and write step ``row.offset`` of each row, as ``LMModel.generate``
        does; rows with equal sampling parameters in one vectorised pass
        (:func:`~g4l.engine.sampling.sample_rows`: each row's draw is its own).

        :param logits: ``[2 * len(rows) (+ padding), K, card]``: row ``i``'s halves at ``2i, 2i+1``.
        """
        n = len(rows)
        groups: dict[SamplingParams, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.params, []).append(i)
        cond_all, uncond_all = logits[0:2 * n:2], logits[1:2 * n:2]
        special = self.model.lm.special_token_id
        drawn: list[tuple[list[int], np.ndarray]] = []
        for params, members in groups.items():
            if len(members) == n:
                cond, uncond = cond_all, uncond_all
            else:
                index = torch.tensor(members, device=logits.device)
                cond, uncond = cond_all.index_select(0, index), uncond_all.index_select(0, index)
            guided_logits = guided(cond.float(), uncond.float(), params.cfg_coef)
            if self.record_logits:
                for j, i in enumerate(members):
                    rows[i].handle.logits.append(guided_logits[j].clone())
            drawn.append((members, sample_rows(guided_logits, params, [rows[i].generator for i in members])
                           .cpu().numpy()))
        # Written only once every group has drawn: an error above (out of memory) leaves
        # every row's tokens where they were, so the step can be retried whole (the usual
        # place of that error, the forward pass, is before any generator draws).
        for members, picked in drawn:
            for j, i in enumerate(members):
                row = rows[i]
                at = row.offset
                # Codes the pattern leaves empty are the special token; prompt codes are kept.
                nxt = np.where(row.valid_np[:, at], picked[j], special)
                current = row.seq_np[:, at]
                np.copyto(current, nxt, where=current == UNKNOWN)
                row.offset += 1

    def _after_sample(self, row: _Row) -> None:
        """Report the row's progress; a failing callback ends that row only."""
        row.handle.progress = (row.offset - row.first, row.length - row.first)
        callback = row.handle.request.on_progress
        if callback is None:
            return
        try:
            callback(*row.handle.progress)
        except Cancelled as exc:
            self._leave(row, None, exc)
        except Exception as exc:
            self._leave(row, None, exc)

    # ------------------------------------------------------------ leave
    def _retire(self) -> None:
        for row in [r for r in self.rows if r.finished]:
            self._leave(row, self._codes(row), None)

    def _codes(self, row: _Row) -> torch.Tensor:
        """The row's ``[K, max_gen_len]`` codes, read back from its pattern sequence."""
        codes, _, _ = row.pattern.revert_pattern_sequence(row.seq[None], special_token=UNKNOWN)
        out = codes[0, :, :row.handle.request.max_gen_len]
        if (out == UNKNOWN).any():
            raise RuntimeError("the pattern sequence was not filled")
        return out

    def _remove(self, row: _Row) -> None:
        """Take ``row`` out of the batch, keeping it dense: the last row moves into the
        leaving row's cache slots (two per row: conditional and unconditional)."""
        index = self.rows.index(row)
        last = len(self.rows) - 1
        if index != last:
            self.cache.move(2 * last, 2 * index, 2)
            self.rows[index] = self.rows[last]
        self.rows.pop()

    def _leave(self, row: _Row, codes: torch.Tensor | None, error: BaseException | None) -> None:
        if row not in self.rows:
            return
        self._remove(row)
        row.handle._finish(codes, error)
        if not self.rows:
            self._batch_limit = self.max_batch
            if self.cache.budget_bytes is not None or self.cache.device.type == "cuda":
                self.cache.clear()  # give the memory back while idle

    def _fail_active(self, exc: BaseException) -> None:
        """End every active row with ``exc`` and free the cache (the loop goes on)."""
        for row in list(self.rows):
            self._leave(row, None, exc)
        self.cache.clear()

    def evict_latest(self) -> None:
        """Put the most recently joined row back in the queue, keeping its codes and
        generator; it resumes later with a prefill of all it has (how an out-of-memory
        error shrinks the batch)."""
        row = max(self.rows, key=lambda r: r.order)
        self._remove(row)
        with self._lock:
            self._pending.append(row)

    def _out_of_memory(self) -> None:
        if len(self.rows) > 1:
            self.evict_latest()
        self._batch_limit = max(1, len(self.rows))
        memory.release()

