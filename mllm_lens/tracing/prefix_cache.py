"""A KV cache that holds one shared prefix for a whole batch, written once per trace.

Restoration runs all start from the same prefix. Repeating a ``DynamicCache`` for every
batch would copy the prefix's keys and values twice per batch row (``repeat`` and the
``cat`` inside ``update``). Here the prefix is copied into a ``[max_batch, heads, p0 + S, d]``
buffer once; each forward only writes its suffix keys and values into the slots after
``p0`` and attends over a view of the buffer. One forward per cache use: the suffix slots are
overwritten by the next one. Rows are allocated only when a forward needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from mllm_lens.errors import UnsupportedModelError

if TYPE_CHECKING:
    from transformers.cache_utils import DummyLayer, LinearAttentionCacheLayerMixin


def layer_kv(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[B, kv, T, hd]`` of one cache layer, refused if it holds none."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise UnsupportedModelError(
            f"the decoder's cache layer {type(layer).__name__} holds no key/value tensors; "
            "prefix caching needs a key/value cache"
        )
    return keys, values


def cache_of(layers: Sequence[CacheLayerMixin]) -> Cache:
    """A transformers :class:`Cache` over ``layers``."""
    stack: list[CacheLayerMixin | LinearAttentionCacheLayerMixin | DummyLayer] = list(layers)
    return Cache(layers=stack)


class _SharedPrefixLayer(DynamicLayer):
    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, prefix_length: int) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.prefix_length = prefix_length
        self.batch = keys.shape[0]
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows, new = key_states.shape[0], key_states.shape[-2]
        end = self.prefix_length + new
        self.keys[:rows, :, self.prefix_length : end] = key_states
        self.values[:rows, :, self.prefix_length : end] = value_states
        return self.keys[:rows, :, :end], self.values[:rows, :, :end]

    def get_seq_length(self) -> int:
        return self.prefix_length


class SharedPrefixCache:
    """Buffers for up to ``max_batch`` rows of ``prefix`` plus ``suffix_length`` new tokens.

    Rows are allocated as forwards need them, doubling up to ``max_batch``: a trace whose cells
    run on the partial plan only ever uses one row here (its clean and corrupted runs), so the
    ``max_batch``-row copy of the prefix is never paid for.
    """

    def __init__(self, prefix: DynamicCache, max_batch: int, suffix_length: int) -> None:
        self.prefix_length = prefix.get_seq_length()
        self.suffix_length = suffix_length
        self.prefix = [layer_kv(layer) for layer in prefix.layers]
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows = 0
        self.max_batch = max_batch

    def _grow(self, rows: int) -> None:
        """Reallocate every layer's buffers for ``rows`` rows with the prefix copied in."""
        self.buffers = []
        for prefix_keys, prefix_values in self.prefix:
            length = self.prefix_length + self.suffix_length
            keys = prefix_keys.new_empty((rows, *prefix_keys.shape[1:-2], length, prefix_keys.shape[-1]))
            values = prefix_values.new_empty((rows, *prefix_values.shape[1:-2], length, prefix_values.shape[-1]))
            keys[:, :, : self.prefix_length] = prefix_keys
            values[:, :, : self.prefix_length] = prefix_values
            self.buffers.append((keys, values))
        self.rows = rows

    def for_batch(self, rows: int) -> Cache:
        """A cache object for one forward of ``rows <= max_batch`` rows."""
        if rows > self.max_batch:
            raise ValueError(f"batch of {rows} rows exceeds the cache's {self.max_batch}")
        if rows > self.rows:
            self._grow(min(self.max_batch, max(rows, 2 * self.rows)))
        return cache_of([_SharedPrefixLayer(k, v, self.prefix_length) for k, v in self.buffers])
