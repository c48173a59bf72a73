"""Corruptions: how a constraint (or the image) is taken away from the model.

Every corruption maps the clean decoder inputs ``[1, T, d]`` to corrupted ones of the same
shape, so the clean and corrupted runs share every position before the first changed one.

* :class:`Replace` -- the paper's: the constraint phrase replaced by another phrase
  (``"this place"`` -> ``"Paris city"``). The token count must stay the same, else positions
  would shift between the runs; a differing count is refused with the counts named.
* :class:`ConstraintNoise` -- ROME's: Gaussian noise of scale ``nu * sigma`` added to the
  constraint's token embeddings, ``sigma`` = std of the model's token-embedding matrix,
  ``nu = 3`` by default.
* :class:`ImageNoise` -- Gaussian noise of scale ``nu * sigma`` on the image's visual-token
  embeddings (all patches or a given set), ``sigma`` = std of the clean visual tokens.

Noise is drawn once from a seeded generator, so a trace is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mllm_lens.errors import CorruptionError
from mllm_lens.probe import EncodedProbe, Probe, encode_probe, find_phrase

if TYPE_CHECKING:
    from mllm_lens.models.lens_model import LensModel


def _gaussian(n: int, d: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen).to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class ConstraintNoise:
    """Gaussian noise (``scale`` x embedding std) on a constraint's token embeddings."""

    constraint: str | None = None
    scale: float = 3.0
    seed: int = 0

    def positions(self, encoded: EncodedProbe) -> list[int]:
        text = encoded.probe.constraint(self.constraint).text
        start, end = encoded.spans[text]
        return list(range(start, end))

    def apply(self, model: LensModel, encoded: EncodedProbe, clean: torch.Tensor) -> torch.Tensor:
        pos = self.positions(encoded)
        sigma = model.adapter.embed_tokens.weight.detach().float().std().item()
        out = clean.clone()
        out[0, pos] += self.scale * sigma * _gaussian(len(pos), clean.shape[-1], self.seed, clean)
        return out

    def describe(self, encoded: EncodedProbe) -> dict:
        return {
            "kind": "constraint_noise",
            "constraint": encoded.probe.constraint(self.constraint).text,
            "scale": self.scale,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class ImageNoise:
    """Gaussian noise on visual-token embeddings: all of them, or ``patches``.

    ``patches`` are indices among the image tokens, or ``(row, col)`` pairs of the base grid.
    """

    patches: Sequence[int | tuple[int, int]] | None = None
    scale: float = 3.0
    seed: int = 0

    def positions(self, encoded: EncodedProbe) -> list[int]:
        start, end = encoded.image_span
        if self.patches is None:
            return list(range(start, end))
        out = []
        for patch in self.patches:
            if isinstance(patch, tuple):
                index = encoded.patch_layout.token_of_patch(*patch)
            else:
                index = int(patch)
                if not 0 <= index < end - start:
                    raise CorruptionError(f"patch index {index} outside the {end - start} image tokens")
            out.append(start + index)
        if not out:
            raise CorruptionError("ImageNoise got an empty patch list")
        return sorted(set(out))

    def apply(self, model: LensModel, encoded: EncodedProbe, clean: torch.Tensor) -> torch.Tensor:
        pos = self.positions(encoded)
        start, end = encoded.image_span
        sigma = clean[0, start:end].float().std().item()
        out = clean.clone()
        out[0, pos] += self.scale * sigma * _gaussian(len(pos), clean.shape[-1], self.seed, clean)
        return out

    def describe(self, encoded: EncodedProbe) -> dict:
        patches = None if self.patches is None else [list(p) if isinstance(p, tuple) else p for p in self.patches]
        return {"kind": "image_noise", "patches": patches, "scale": self.scale, "seed": self.seed}


@dataclass(frozen=True)
class Replace:
    """Replace a constraint phrase by another phrase of the same token count (the paper's)."""

    constraint: str | None = None
    by: str = ""

    def corrupted_ids(self, model: LensModel, encoded: EncodedProbe) -> torch.Tensor:
        probe = encoded.probe
        original = probe.constraint(self.constraint)
        if not self.by.strip():
            raise CorruptionError("Replace needs a non-empty replacement phrase (by=...)")
        if self.by.strip() == original.text.strip():
            raise CorruptionError(f"the replacement {self.by!r} is identical to the constraint {original.text!r}")
        at = find_phrase(original.text, probe.question)
        new_question = probe.question[:at] + self.by + probe.question[at + len(original.text) :]
        replaced = encode_probe(Probe(probe.image, new_question, [], template=probe.template), model)
        old_ids, new_ids = encoded.input_ids, replaced.input_ids
        start, end = encoded.spans[original.text]
        if new_ids.shape[0] != old_ids.shape[0]:
            n_new = new_ids.shape[0] - old_ids.shape[0] + (end - start)
            raise CorruptionError(
                f"replacing {original.text!r} ({end - start} tokens) by {self.by!r} ({n_new} tokens) changes the "
                f"prompt length ({old_ids.shape[0]} -> {new_ids.shape[0]} tokens), which would shift positions "
                "between the clean and corrupted runs. Use a replacement with the same token count, or noise()."
            )
        changed = (new_ids != old_ids).nonzero().flatten().tolist()
        if not changed:
            raise CorruptionError(f"replacing {original.text!r} by {self.by!r} leaves the prompt's tokens unchanged")
        if changed[0] < start or changed[-1] >= end:
            raise CorruptionError(
                f"replacing {original.text!r} by {self.by!r} changes tokens outside the constraint span "
                f"{start}..{end - 1} (positions {changed}) in prompt {encoded.prompt!r}"
            )
        return new_ids

    def apply(self, model: LensModel, encoded: EncodedProbe, clean: torch.Tensor) -> torch.Tensor:
        new_ids = self.corrupted_ids(model, encoded)
        changed = (new_ids != encoded.input_ids).nonzero().flatten()
        out = clean.clone()
        with torch.no_grad():
            out[0, changed] = model.adapter.embed_tokens(new_ids[changed].to(clean.device)).to(clean.dtype)
        return out

    def describe(self, encoded: EncodedProbe) -> dict:
        return {"kind": "replace", "constraint": encoded.probe.constraint(self.constraint).text, "by": self.by}


Corruption = ConstraintNoise | ImageNoise | Replace


def noise(constraint: str | None = None, scale: float = 3.0, seed: int = 0) -> ConstraintNoise:
    """Gaussian noise on a constraint's embeddings (default: the probe's visual constraint)."""
    return ConstraintNoise(constraint, scale, seed)


def image_noise(
    patches: Sequence[int | tuple[int, int]] | None = None, scale: float = 3.0, seed: int = 0
) -> ImageNoise:
    """Gaussian noise on the image's visual tokens (all, or the given patches)."""
    return ImageNoise(patches, scale, seed)


def replace(constraint: str | None = None, by: str = "") -> Replace:
    """Replace a constraint phrase by another phrase of the same token count."""
    return Replace(constraint, by)


def as_corruption(corrupt: Corruption | str | None) -> Corruption:
    """``None`` -> noise on the visual constraint; ``"image"`` -> image noise; a phrase -> its noise."""
    if corrupt is None:
        return ConstraintNoise()
    if corrupt == "image":
        return ImageNoise()
    if isinstance(corrupt, str):
        return ConstraintNoise(corrupt)
    if isinstance(corrupt, (ConstraintNoise, ImageNoise, Replace)):
        return corrupt
    raise CorruptionError(f"unknown corruption {corrupt!r}; use noise(), image_noise() or replace()")
