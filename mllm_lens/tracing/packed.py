"""Restoration rows of different lengths packed end to end into one sequence.

A partial restart of row ``r`` recomputes positions ``[s_r, T)``, where ``s_r`` is where that row's
restoration can first change the run. A rectangular batch recomputes ``[min s_r, T)`` for every row:
for the paper's cells (every text position of a ~24-token question, one per row) that is twice the
tokens the rows need. Packed, the batch is one sequence of ``sum (T - s_r)`` tokens: token ``i`` is
row ``rows[i]`` at position ``positions[i]``, so the projections, MLP, norms and rotary (all per
token) run on exactly the tokens that change, and attention alone sees the rows apart, through a
mask over ``T + N`` keys: the base run's keys/values of every position (a row reads those before
``s_r``, which its restoration leaves unchanged) followed by the ``N`` packed tokens' own (a row reads
its own from ``s_r`` on). Both parts keep the decoder's own pattern (causal, or a wrapper's mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True)
class Packing:
    """Rows ``r`` spanning ``[starts[r], length)``, laid end to end (token ``i``: row ``rows[i]``,
    position ``positions[i]``); ``lasts[r]``: the index of row ``r``'s last token."""

    starts: torch.Tensor  # [R]
    length: int
    rows: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    offsets: torch.Tensor  # [R]: index of each row's first token
    lasts: torch.Tensor  # [R]

    @classmethod
    def of(cls, starts: Sequence[int], length: int, device: torch.device) -> Packing:
        """The packing of rows starting at ``starts`` in a ``length``-token run."""
        begin = torch.tensor(list(starts), dtype=torch.long, device=device)
        spans = length - begin
        if bool((spans <= 0).any()):
            raise ValueError(f"row starts {list(starts)} must lie before the run's end ({length})")
        ends = torch.cumsum(spans, 0)
        offsets = ends - spans
        rows = torch.repeat_interleave(torch.arange(len(begin), device=device), spans)
        positions = torch.arange(int(ends[-1]), device=device) - offsets[rows] + begin[rows]
        return cls(begin, length, rows, positions, offsets, ends - 1)

    @property
    def tokens(self) -> int:
        return int(self.rows.shape[0])

    def index(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Packed indices of ``(row, position)`` pairs (each position inside its row's span)."""
        return self.offsets[rows] + positions - self.starts[rows]

    def mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``[1, 1, N, T + N]`` over the base run's ``T`` keys then the packed tokens' own,
        from ``allowed [T, T]`` (query position reads key position)."""
        allowed = allowed.to(self.positions.device)
        keys = torch.arange(self.length, device=self.positions.device)
        reads = allowed[self.positions]  # [N, T]
        base = reads & (keys[None] < self.starts[self.rows][:, None])
        own = (self.rows[:, None] == self.rows[None]) & reads[:, self.positions]
        read = torch.cat([base, own], dim=1)
        mask = torch.zeros(read.shape, dtype=dtype, device=read.device).masked_fill_(~read, torch.finfo(dtype).min)
        return mask[None, None]


@dataclass(frozen=True)
class Tokens:
    """Distinct ``(row, position)`` tokens, sorted by row then position (token ``i``: row ``rows[i]`` at
    ``positions[i]``): the few tokens a restoration changes in the layer a packed run starts from."""

    rows: torch.Tensor  # [n]
    positions: torch.Tensor  # [n]
    _keys: torch.Tensor  # [n]: rows * _stride + positions, ascending
    _stride: int

    @classmethod
    def of(cls, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device | None = None) -> Tokens:
        """The distinct tokens of ``(rows, positions)`` index pairs."""
        rows = torch.cat([r for r, _ in pairs]) if pairs else torch.empty(0, dtype=torch.long, device=device)
        positions = torch.cat([p for _, p in pairs]) if pairs else torch.empty_like(rows)
        stride = int(positions.max()) + 1 if positions.numel() else 1
        keys = torch.unique(rows * stride + positions)  # sorted
        return cls(keys // stride, keys % stride, keys, stride)

    @property
    def tokens(self) -> int:
        return int(self._keys.shape[0])

    def index(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Indices of ``(row, position)`` pairs among these tokens (each pair one of them)."""
        return torch.searchsorted(self._keys, rows * self._stride + positions)

    def check_inside(self, packing: Packing) -> None:
        """Refuse a token outside its row's packed span ``[starts[row], length)``."""
        if not self.tokens:
            return
        if int(self.rows.max()) >= len(packing.starts):
            raise ValueError(f"a restoration names row {int(self.rows.max())} of a {len(packing.starts)}-row batch")
        outside = (self.positions < packing.starts[self.rows]) | (self.positions >= packing.length)
        if bool(outside.any()):
            i = int(outside.nonzero()[0])
            raise ValueError(
                f"row {int(self.rows[i])} restores position {int(self.positions[i])} outside its run "
                f"[{int(packing.starts[self.rows[i]])}, {packing.length})"
            )


class PackedLayer(DynamicLayer):
    """Keys/values ``[1, kv, T + N, hd]``: the base run's ``T``, then the packed tokens' own.

    A call stores the packed tokens' keys/values; while ``frozen`` (the last layer's call on each
    row's last token, whose keys/values a key-only call already stored) a call returns them as they
    are. With ``keys_only`` set, a call stores them and raises ``stop`` (see
    :class:`~mllm_lens.tracing.partial.PartialDecoder`)."""

    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, stop: type[Exception]) -> None:
        super().__init__()
        self.base_keys, self.base_values, self.stop = keys, values, stop
        self.keys, self.values = keys, values
        self.keys_only = self.frozen = False
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.frozen:
            self.keys = torch.cat([self.base_keys, key_states], dim=-2)
            self.values = torch.cat([self.base_values, value_states], dim=-2)
        if self.keys_only:
            raise self.stop
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return int(self.base_keys.shape[-2])
