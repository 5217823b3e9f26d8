"""Running out of GPU memory: recognising it, giving memory back, the error a job gets,
and a test-only fault that raises it at the engine boundary on any device; and giving
the C heap's freed pages back to the system after a big decode (:func:`trim_heap`).

The decoding loop (:mod:`g4l.engine.batching`) splits a batch that runs out of memory and
retries it; a generation that does not fit even alone fails with
:class:`~g4l.errors.GpuOutOfMemory` (``GPU_OUT_OF_MEMORY``), and the worker goes on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from g4l.errors import GpuOutOfMemory

#: What PyTorch raises when an allocation does not fit (``torch.cuda.OutOfMemoryError`` is
#: the same class since torch 2.5; older releases have only that one).
OutOfMemory: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

#: TEST ONLY, never set in production: a forward pass of the language model over more
#: than this many rows raises :data:`OutOfMemory`, as a GPU would, so the split-and-retry
#: path can be tested on CPU. ``0``: every pass fails (a row that does not fit alone);
#: ``None``: off. Tests set it on this module (there is no setting or variable for it).
TEST_ONLY_OOM_ABOVE_ROWS: int | None = None


def apply_test_only_fault(rows: int) -> None:
    """Raise :data:`OutOfMemory` when the test-only switch says a pass over ``rows`` rows
    does not fit (see :data:`TEST_ONLY_OOM_ABOVE_ROWS`); nothing otherwise."""
    limit = TEST_ONLY_OOM_ABOVE_ROWS
    if limit is not None and rows > limit:
        raise OutOfMemory(f"test-only fault: a forward pass over {rows} row(s) (more than {limit})")


def release() -> None:
    """Give the allocator's cached blocks back after an out-of-memory error (CUDA only)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``, which
    goes through every thread's arena); nothing on another C library.

    A 30 s EnCodec decode on CPU allocates about 200 MB of activations through malloc
    and frees them at its end, and glibc keeps freed pages for reuse: without this the
    worker's RSS was its largest recent mix of decodes, prompt encodes and result files
    (1.4-1.9 GB for the tiny model, moving with the batches), not what it holds. The
    price is the next decode faulting its pages in again (about 0.05 s of 0.3 s).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def too_big(what: str = "this generation") -> GpuOutOfMemory:
    """The error of a generation that does not fit the GPU's memory even alone."""
    return GpuOutOfMemory(f"{what} does not fit the GPU's memory, even alone; a shorter output or a "
                          "smaller model may")


@contextmanager
def fails_alone(what: str = "this generation") -> Iterator[None]:
    """Around one generation's own GPU work (its encode, decode, a stock-engine run): an
    out-of-memory error there cannot be split, so it becomes :func:`too_big`."""
    try:
        yield
    except OutOfMemory:
        release()
        raise too_big(what) from None
