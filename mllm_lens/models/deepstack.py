"""DeepStack: visual features a wrapper adds into its decoder's residual stream after early layers.

Qwen3-VL's vision tower returns, besides the image tokens' input embeddings, one feature set per
``deepstack_visual_indexes`` entry (merged hidden states of that vision block); its decoder adds set
``i`` to the residual stream at the image positions right *after* decoder layer ``i``, for the first
``len(sets)`` layers. So the image enters the decoder at several places, and every fast path must
replay those additions on whatever span of positions and layers it runs.

:meth:`~mllm_lens.models.lens_model.LensModel.decoder_call` captures them as a :class:`DeepStack`,
and every decoder call replays them with :meth:`DeepStack.replayed`: forward hooks on the layers,
registered *first* (``prepend``), that add each set to the layer's output at the image positions the
call covers. A layer's output as any other hook sees it is therefore the residual stream the next
layer reads: the "hidden state at layer ``l``" that traces record and restore includes layer ``l``'s
addition. (transformers' ``output_hidden_states`` reports the layer's output *before* it: the
addition sits outside the decoder layer module, in the decoder stack's loop.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DeepStack:
    """``features[i] [R, n, d]`` (R = 1, or one per batch row) added after decoder layer ``i`` at the
    run's image ``positions [n]`` (ascending)."""

    positions: torch.Tensor
    features: tuple[torch.Tensor, ...]

    @classmethod
    def from_wrapper(cls, mask: torch.Tensor, features: Sequence[torch.Tensor]) -> DeepStack:
        """From the wrapper's ``visual_pos_masks [1, T]`` and ``deepstack_visual_embeds`` (``[n, d]`` each)."""
        positions = mask[0].nonzero().flatten().detach().clone()
        return cls(positions, tuple(f.detach().clone()[None] for f in features))

    @property
    def layers(self) -> int:
        """How many decoder layers (the first ones) get an addition."""
        return len(self.features)

    def rows(self, positions: Sequence[int]) -> torch.Tensor:
        """Indices into the sets of the given run positions (each must be an image position)."""
        where = {int(p): i for i, p in enumerate(self.positions.tolist())}
        missing = [p for p in positions if int(p) not in where]
        if missing:
            raise ValueError(f"positions {missing} get no DeepStack addition")
        return torch.tensor([where[int(p)] for p in positions], dtype=torch.long)

    def with_features(self, features: Sequence[torch.Tensor]) -> DeepStack:
        """The same positions with other feature sets (a corruption's)."""
        return DeepStack(self.positions, tuple(features))

    def first_difference(self, other: DeepStack | None) -> int | None:
        """The first run position whose addition (at any layer) differs from ``other``'s, None if none does."""
        sets = () if other is None else other.features
        mine = {p: i for i, p in enumerate(self.positions.tolist())} if self.features else {}
        theirs = {p: i for i, p in enumerate(other.positions.tolist())} if other is not None and sets else {}
        for position in sorted(set(mine) | set(theirs)):
            if position not in mine or position not in theirs or len(sets) != self.layers:
                return position
            i, j = mine[position], theirs[position]
            if any(not torch.equal(x[:, i], y[:, j]) for x, y in zip(self.features, sets, strict=True)):
                return position
        return None

    def signature(self) -> tuple:
        """Equal for additions at the same positions (requests whose rows may share one batch)."""
        return self.layers, tuple(self.positions.tolist())

    def describe(self, noised: bool) -> dict:
        """For results' settings: which layers get an addition, at how many positions, and whether the
        corrupted run's sets were noised (image noise) or left clean (text corruptions)."""
        return {
            "added_after_layers": list(range(self.layers)),
            "image_positions": len(self.positions),
            "corrupted": "noised like the image (own sigma and draws per set)" if noised else "left clean",
            "hidden_state": "the residual stream the next layer reads (after the layer's addition)",
        }

    @staticmethod
    def stack(items: Sequence[DeepStack]) -> DeepStack:
        """One addition per batch row, from additions of equal :meth:`signature`."""
        if len({item.signature() for item in items}) != 1:
            raise ValueError("DeepStack additions at other positions cannot share one batch")
        sets = zip(*(item.features for item in items), strict=True)
        return DeepStack(items[0].positions, tuple(torch.cat(group) for group in sets))

    @contextmanager
    def replayed(self, layers: nn.ModuleList, start: int) -> Iterator[None]:
        """Add the sets to the outputs of ``layers[:self.layers]`` during calls whose queries start at
        run position ``start`` (their outputs ``[B, S, d]`` cover ``[start, start + S)``)."""
        with ExitStack() as stack:
            for index, features in enumerate(self.features):
                hook = layers[index].register_forward_hook(self._adder(features, start), prepend=True)
                stack.callback(hook.remove)
            yield

    def _adder(self, features: torch.Tensor, start: int):
        def hook(_module, _args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            inside = (self.positions >= start) & (self.positions < start + tensor.shape[1])
            if not bool(inside.any()):
                return None
            local = (self.positions[inside] - start).to(tensor.device)
            added = features[:, inside.to(features.device)].to(tensor.device, tensor.dtype)
            tensor = tensor.clone()
            tensor[:, local] = tensor[:, local] + added
            return (tensor, *output[1:]) if isinstance(output, tuple) else tensor

        return hook
