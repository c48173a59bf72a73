"""The decoder's attention pattern: which keys each query reads, per layer, as the model masks them.

LLaVA-like decoders are plainly causal and need none of this. Gemma 3 lets an image's tokens read
each other both ways (a block mask built from ``token_type_ids``) and limits some layers to a
sliding window; PaliGemma is a prefix-LM (image and prompt read each other both ways). Their
wrappers build these masks and hand them to the decoder stack; :meth:`~mllm_lens.models.lens_model.
LensModel.decoder_call` captures them there as an :class:`AttentionPattern`, so every later decoder
call (a suffix on a cached prefix, a partial restart) is masked exactly as the model masks its own
full forward.

What the fast paths need from it besides the masks is :meth:`AttentionPattern.restart`: the first
position that a change at position ``p`` can reach. In a causal decoder that is ``p`` itself; when a
query may read a later key (inside an image block, in a prefix-LM's prefix), positions before ``p``
change too, and a run that recomputes only ``[p, T)`` on cached keys of ``[0, p)`` would be silently
wrong. ``restart(p)`` is the largest ``s <= p`` such that no query before ``s`` reads a key at or
after ``s`` in any layer: positions ``[0, s)`` then depend only on inputs before ``s``, at every
layer, whatever happens from ``s`` on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from mllm_lens.errors import UnsupportedModelError

#: The key under which a pattern keeps a wrapper's single (not per-layer-type) mask.
SINGLE = "all"


def _allowed(mask: torch.Tensor | None, length: int) -> torch.Tensor:
    """Bool ``[T, T]`` (True: query row may read key column) from a mask the wrapper built:
    None (the mask functions found it plainly causal), a bool mask or an additive float mask."""
    if mask is None:
        return torch.ones(length, length, dtype=torch.bool).tril()
    if mask.ndim != 4 or mask.shape[0] != 1 or tuple(mask.shape[-2:]) != (length, length):
        raise UnsupportedModelError(
            f"the wrapper's attention mask has shape {tuple(mask.shape)}, not (1, 1, {length}, {length}); "
            "the fast paths cannot replay it"
        )
    square = mask[0, 0].detach().cpu()
    return square.clone() if square.dtype == torch.bool else square == 0


@dataclass(frozen=True)
class AttentionPattern:
    """Per-layer masks of one prompt of ``length`` tokens.

    ``allowed[key]`` is a bool ``[T, T]``; decoder layer ``i`` uses ``allowed[layer_keys[i]]``. ``kind``
    names the pattern for results' settings (e.g. "bidirectional image block, sliding window 8")."""

    kind: str
    allowed: Mapping[str, torch.Tensor]
    layer_keys: tuple[str, ...]

    @classmethod
    def from_wrapper_mask(
        cls, kind: str, mask: object, length: int, layer_types: Sequence[str] | None, num_layers: int
    ) -> AttentionPattern:
        """The pattern from the ``attention_mask`` a wrapper passed its decoder stack: one mask, or a
        mapping from layer type (``config.layer_types``) to mask."""
        if isinstance(mask, Mapping):
            if layer_types is None or len(layer_types) < num_layers:
                raise UnsupportedModelError(
                    "the wrapper passed masks per layer type, but the config has no layer_types"
                )
            keys = tuple(layer_types[:num_layers])
            missing = sorted(set(keys) - set(mask))
            if missing:
                raise UnsupportedModelError(f"the wrapper passed no attention mask for layer types {missing}")
            allowed = {key: _allowed(mask[key], length) for key in set(keys)}
            return cls(kind, allowed, keys)
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise UnsupportedModelError(
                f"the wrapper passed its decoder an attention mask of type {type(mask).__name__}"
            )
        return cls(kind, {SINGLE: _allowed(mask, length)}, (SINGLE,) * num_layers)

    @property
    def length(self) -> int:
        return int(next(iter(self.allowed.values())).shape[0])

    @cached_property
    def _closed(self) -> list[int]:
        """Every ``s`` such that no query before ``s`` reads a key at or after ``s``, ascending."""
        union = torch.stack(list(self.allowed.values())).any(0)
        cols = torch.arange(self.length)
        reach = torch.where(union, cols, -1).amax(1)  # the last key each query reads
        furthest = torch.cummax(reach, 0).values.tolist()
        return [0] + [s for s in range(1, self.length + 1) if furthest[s - 1] < s]

    def restart(self, position: int) -> int:
        """The first position a change at ``position`` can reach (see the module docstring)."""
        return max(s for s in self._closed if s <= position)

    def mask(self, key: str, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive mask ``[1, 1, stop - start, stop]`` (0: read, the dtype's min: masked) of the layers
        of kind ``key`` (an entry of :attr:`layer_keys`) for queries ``[start, stop)``."""
        rows = self.allowed[key][start:stop, :stop].to(device)
        mask = torch.zeros(rows.shape, dtype=dtype, device=device).masked_fill_(~rows, torch.finfo(dtype).min)
        return mask[None, None]

    def decoder_mask(
        self, start: int, stop: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The decoder stack's ``attention_mask`` for queries ``[start, stop)`` over keys ``[0, stop)``,
        in the form the wrapper passes it (one mask, or one per layer type)."""
        if stop > self.length or not 0 <= start < stop:
            raise ValueError(f"queries [{start}, {stop}) outside the pattern's {self.length} positions")
        if tuple(self.allowed) == (SINGLE,):
            return self.mask(SINGLE, start, stop, dtype, device)
        return {key: self.mask(key, start, stop, dtype, device) for key in self.allowed}

    def signature(self) -> tuple:
        """Equal for patterns with the same masks (prompts that may share one batch)."""
        return self.layer_keys, tuple((key, self.allowed[key].numpy().tobytes()) for key in sorted(self.allowed))

    def describe(self) -> dict:
        """For results' settings: the pattern's name and, per layer type, how many layers use it."""
        return {"kind": self.kind, "layers": {key: self.layer_keys.count(key) for key in sorted(set(self.layer_keys))}}
