"""``KVCache``: preallocated attention keys and values for the rows of one decoding batch.

AudioCraft's own streaming cache concatenates each new key onto the old ones (``torch.cat``
per layer and step), which copies the whole cache every step and keeps one cache per
batch. Here every *half-row* (a job's conditional or unconditional half, for
classifier-free guidance) owns one slot of fixed tensors, and a token at position ``p`` is
written in place at index ``p`` of its slot, so rows at different positions share one
tensor and a row leaves by moving the last row into its slot.

Shapes, per transformer layer: self-attention ``[half_rows, heads, length, head_dim]``;
cross-attention (the text condition, computed once per row) ``[half_rows, heads,
cross_length, head_dim]`` with the valid length of each slot in :attr:`KVCache.cross_len`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class KVBudgetExceeded(Exception):
    """Growing the cache would pass its memory budget (the row should wait)."""


@dataclass(frozen=True)
class CacheShape:
    """How big a cache is: half-row slots, self-attention positions, condition positions."""

    half_rows: int
    length: int
    cross_length: int

    def covers(self, other: CacheShape) -> bool:
        """Whether this shape is at least ``other`` in every dimension."""
        return (self.half_rows >= other.half_rows and self.length >= other.length
                and self.cross_length >= other.cross_length)

    def union(self, other: CacheShape) -> CacheShape:
        """The smallest shape covering both."""
        return CacheShape(max(self.half_rows, other.half_rows), max(self.length, other.length),
                          max(self.cross_length, other.cross_length))


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (>= 1)."""
    return -(-value // multiple) * multiple


@dataclass(eq=False, repr=False)  # holds tensors: compared by identity, not printed
class KVCache:
    """Keys and values of every layer for up to :attr:`shape` half-rows.

    :param num_layers: transformer layers.
    :param num_heads: attention heads per layer.
    :param head_dim: channels per head.
    :param cross: whether the layers have cross-attention (a text condition).
    :param device: where the tensors live.
    :param dtype: their dtype (the model's activations' dtype).
    :param budget_bytes: most bytes the tensors may take (``None``: no limit).
    :param length_step: self-attention capacity grows in multiples of this many positions,
        so a stream of jobs of slightly different lengths does not reallocate every time.
    :param cross_step: cross-attention capacity, likewise. Above 1 (a whole key block), a
        row's text condition is read at the same padded length whether its batch mates'
        conditions are shorter or longer than its own, so its sums round the same.
    """

    num_layers: int
    num_heads: int
    head_dim: int
    cross: bool
    device: torch.device
    dtype: torch.dtype
    budget_bytes: int | None = None
    length_step: int = 256
    cross_step: int = 1
    shape: CacheShape = field(default_factory=lambda: CacheShape(0, 0, 0), init=False)
    k: list[torch.Tensor] = field(default_factory=list, init=False)
    v: list[torch.Tensor] = field(default_factory=list, init=False)
    ck: list[torch.Tensor] = field(default_factory=list, init=False)
    cv: list[torch.Tensor] = field(default_factory=list, init=False)
    #: Valid cross-attention positions of each half-row slot (plain ints: read every
    #: step without a device sync).
    cross_len: list[int] = field(default_factory=list, init=False)

    def bytes_for(self, shape: CacheShape) -> int:
        """Bytes the tensors of a cache of ``shape`` take."""
        item = torch.empty((), dtype=self.dtype).element_size()
        per_slot = shape.length + (shape.cross_length if self.cross else 0)
        return 2 * self.num_layers * shape.half_rows * self.num_heads * self.head_dim * per_slot * item

    def padded(self, shape: CacheShape) -> CacheShape:
        """``shape`` with its lengths rounded up the way :meth:`reserve` allocates them."""
        return CacheShape(shape.half_rows, round_up(max(shape.length, 1), self.length_step),
                          round_up(max(shape.cross_length, 1), self.cross_step))

    def fits(self, shape: CacheShape) -> bool:
        """Whether growing to cover ``shape`` stays within the budget."""
        if self.budget_bytes is None:
            return True
        return self.bytes_for(self.padded(shape).union(self.shape)) <= self.budget_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self.bytes_for(self.shape)

    def reserve(self, wanted: CacheShape, enforce_budget: bool = True) -> None:
        """Grow (never shrink) to cover ``wanted``, keeping the content of existing slots.

        :param enforce_budget: raise :class:`KVBudgetExceeded` rather than pass the budget
            (a lone row is let through: a job never fails for the budget alone).
        :raises KVBudgetExceeded: when growing would pass the budget.
        """
        target = self.padded(wanted).union(self.shape)
        if self.shape.covers(target) and self.k:
            return
        if enforce_budget and not self.fits(target):
            raise KVBudgetExceeded(f"{self.bytes_for(target)} bytes > budget {self.budget_bytes}")
        old = self.shape
        had = bool(self.k)
        try:
            self._grow(old, target, had)
        except Exception:
            # Out of memory part-way (layers before this one grown already): every layer
            # becomes a view of its old shape again, so the cache stays what it was.
            if had:
                self._shrink_views(old)
            else:
                self.clear()
            raise
        self.cross_len = self.cross_len[:old.half_rows] + [1] * (target.half_rows - old.half_rows)
        self.shape = target

    def _grow(self, old: CacheShape, target: CacheShape, had: bool) -> None:
        h, d = self.num_heads, self.head_dim
        for layer in range(self.num_layers):
            # zeros, not empty: padding slots are read (never used) and must not hold NaN.
            k = torch.zeros(target.half_rows, h, target.length, d, device=self.device, dtype=self.dtype)
            v = torch.zeros_like(k)
            if had:
                k[:old.half_rows, :, :old.length] = self.k[layer][:old.half_rows, :, :old.length]
                v[:old.half_rows, :, :old.length] = self.v[layer][:old.half_rows, :, :old.length]
            self._replace(self.k, layer, k)
            self._replace(self.v, layer, v)
            if self.cross:
                ck = torch.zeros(target.half_rows, h, target.cross_length, d, device=self.device, dtype=self.dtype)
                cv = torch.zeros_like(ck)
                if had:
                    ck[:old.half_rows, :, :old.cross_length] = self.ck[layer][:old.half_rows, :, :old.cross_length]
                    cv[:old.half_rows, :, :old.cross_length] = self.cv[layer][:old.half_rows, :, :old.cross_length]
                self._replace(self.ck, layer, ck)
                self._replace(self.cv, layer, cv)

    def _shrink_views(self, shape: CacheShape) -> None:
        """Every tensor as a view of ``shape`` (no allocation: memory is short)."""
        for tensors, length in ((self.k, shape.length), (self.v, shape.length),
                                (self.ck, shape.cross_length), (self.cv, shape.cross_length)):
            for layer, tensor in enumerate(tensors):
                tensors[layer] = tensor[:shape.half_rows, :, :length]

    @staticmethod
    def _replace(tensors: list[torch.Tensor], layer: int, new: torch.Tensor) -> None:
        # Drop the old tensor before the next layer allocates: peak memory is one layer
        # above the new size, not the old cache plus the new one.
        if len(tensors) > layer:
            tensors[layer] = new
        else:
            tensors.append(new)

    def move(self, src: int, dst: int, count: int) -> None:
        """Copy half-row slots ``src:src+count`` onto ``dst:dst+count`` (a row leaving)."""
        if src == dst:
            return
        for layer in range(self.num_layers):
            self.k[layer][dst:dst + count] = self.k[layer][src:src + count]
            self.v[layer][dst:dst + count] = self.v[layer][src:src + count]
            if self.cross:
                self.ck[layer][dst:dst + count] = self.ck[layer][src:src + count]
                self.cv[layer][dst:dst + count] = self.cv[layer][src:src + count]
        self.cross_len[dst:dst + count] = self.cross_len[src:src + count]

    def set_row(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Store a row pair's cross-attention keys/values (``[2, heads, length, head_dim]``
        per layer) in half-row slots ``slot, slot+1``."""
        if not self.cross:
            return
        length = int(keys[0].shape[2])
        for layer in range(self.num_layers):
            self.ck[layer][slot:slot + 2].zero_()
            self.cv[layer][slot:slot + 2].zero_()
            self.ck[layer][slot:slot + 2, :, :length] = keys[layer]
            self.cv[layer][slot:slot + 2, :, :length] = values[layer]
        self.cross_len[slot:slot + 2] = [length, length]

    def clear(self) -> None:
        """Free every tensor (the batch is empty)."""
        self.k, self.v, self.ck, self.cv = [], [], [], []
        self.cross_len = []
        self.shape = CacheShape(0, 0, 0)
