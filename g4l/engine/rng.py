"""Each stock-engine generation draws from its own ``torch.Generator``, not torch's global one.

AudioCraft samples every token through ``audiocraft.utils.utils.multinomial`` with no
generator, so a stock generation used torch's global generator, seeded per job with
``torch.manual_seed``. Two generations at once in one process (two models in a batching
worker, each past its window on the stock engine: AudioCraft's windowed extension) then
drew from the same stream and reseeded it under each other: "same seed, same audio" did
not hold. :func:`own_generator` gives the calling thread its own generator for the length
of one generation, and :func:`install` routes AudioCraft's draws through the calling
thread's generator (torch's global one where a thread has none, as stock).

A fresh generator seeded with ``n`` gives the stream the global one gives after
``torch.manual_seed(n)`` (on CPU and CUDA), so a seeded generation's audio is what it was.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from g4l.engine.sampling import new_generator

_local = threading.local()
_install_lock = threading.Lock()


def install() -> None:
    """Make AudioCraft's ``multinomial`` draw from the calling thread's generator, when
    :func:`own_generator` set one (idempotent, process-wide)."""
    from audiocraft.utils import utils

    with _install_lock:
        if getattr(utils.multinomial, "g4l_thread_generator", False):
            return
        stock = utils.multinomial

        def multinomial(input: torch.Tensor, num_samples: int, replacement: bool = False, *,
                        generator: torch.Generator | None = None) -> Any:
            if generator is None:
                generator = getattr(_local, "generator", None)
            return stock(input, num_samples, replacement, generator=generator)

        multinomial.g4l_thread_generator = True  # type: ignore[attr-defined]
        utils.multinomial = multinomial


@contextmanager
def own_generator(seed: int | None, device: torch.device | str) -> Iterator[torch.Generator]:
    """The calling thread's AudioCraft draws use a generator of their own until the block
    ends: seeded with ``seed``, or from fresh OS entropy when ``seed`` is None."""
    install()
    generator = new_generator(seed, torch.device(device))
    previous = getattr(_local, "generator", None)
    _local.generator = generator
    try:
        yield generator
    finally:
        _local.generator = previous
