"""Corruptions: how a constraint (or the image) is taken away from the model.

Every corruption maps the clean decoder inputs ``[1, T, d]`` to corrupted ones; the clean and
corrupted runs share every position before the first changed one. Noise keeps the shape; a
replacement of another token count gives ``[1, T', d]``, and :func:`position_map` says which
corrupted position each clean position is restored onto.

* :class:`Replace` -- the paper's: the constraint phrase replaced by another phrase
  (``"this place"`` -> ``"Paris city"``, ``"this country"`` -> ``"Germany"``). The replacement
  may have another token count; the corrupted run then has its own length (see
  :meth:`Replace.position_map` for how its positions line up with the clean run's).
* :class:`ConstraintNoise` -- ROME's: Gaussian noise of scale ``nu * sigma`` added to the
  constraint's token embeddings, ``sigma`` = std of the model's token-embedding matrix times
  the embedding layer's ``embed_scale`` where it scales its output (Gemma: sqrt(hidden)), so
  sigma is the spread of the embeddings the decoder reads; ``nu = 3`` by default.
* :class:`ImageNoise` -- Gaussian noise of scale ``nu * sigma`` on the image's visual-token
  embeddings (all patches or a given set), ``sigma`` = std of the clean visual tokens. Where the
  wrapper also adds the image into early layers (Qwen3-VL's DeepStack,
  :mod:`mllm_lens.models.deepstack`), each added feature set is noised too, at the same image
  positions, with its own ``sigma`` (std of that clean set over the image's tokens) and its own
  draws; otherwise the clean image would leak in through those layers.

Noise is drawn once from a seeded generator, so a trace is reproducible: the input embeddings' draw
first, then (DeepStack) one draw per feature set in layer order, all from the generator seeded with
``seed``. Text corruptions leave DeepStack additions as they are (a replacement moves them with the
image when it changes the prompt's length before it).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mllm_lens.errors import CorruptionError
from mllm_lens.models.lens_model import DecoderCall
from mllm_lens.probe import EncodedProbe, Probe, encode_probe, locate_constraint

if TYPE_CHECKING:
    from mllm_lens.models.deepstack import DeepStack
    from mllm_lens.models.lens_model import LensModel


def _check_noise(kind: str, scale: float, seed: int) -> None:
    """Refuse a noise scale that is not a finite number > 0, or a seed that is not an int."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise CorruptionError(
            f"{kind} scale must be a finite number > 0 (times the embeddings' std; 3 is ROME's), got {scale!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise CorruptionError(f"{kind} seed must be an int, got {seed!r}")


def _gaussians(n: int, d: int, seed: int, count: int, like: torch.Tensor) -> list[torch.Tensor]:
    """``count`` draws ``[n, d]`` in turn from one generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen).to(device=like.device, dtype=like.dtype) for _ in range(count)]


def _gaussian(n: int, d: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    return _gaussians(n, d, seed, 1, like)[0]


@dataclass(frozen=True)
class ConstraintNoise:
    """Gaussian noise (``scale`` x embedding std) on a constraint's token embeddings."""

    constraint: str | None = None
    scale: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_noise("noise()", self.scale, self.seed)

    def positions(self, encoded: EncodedProbe) -> list[int]:
        text = encoded.probe.constraint(self.constraint).text
        start, end = encoded.spans[text]
        return list(range(start, end))

    def apply(self, model: LensModel, encoded: EncodedProbe, clean: torch.Tensor) -> torch.Tensor:
        pos = self.positions(encoded)
        embed = model.adapter.embed_tokens
        sigma = embed.weight.detach().float().std().item() * float(getattr(embed, "embed_scale", 1.0))
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

    def __post_init__(self) -> None:
        _check_noise("image_noise()", self.scale, self.seed)

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

    def apply_deepstack(self, encoded: EncodedProbe, deepstack: DeepStack) -> DeepStack:
        """The DeepStack additions with each set noised at the noised image positions (see the module
        docstring: that set's own sigma, the draws after the input embeddings')."""
        pos = self.positions(encoded)
        rows, image = deepstack.rows(pos), deepstack.rows(range(*encoded.image_span))
        if not deepstack.layers:
            return deepstack
        like = deepstack.features[0]
        draws = _gaussians(len(pos), like.shape[-1], self.seed, 1 + deepstack.layers, like)[1:]
        noised = []
        for features, draw in zip(deepstack.features, draws, strict=True):
            sigma = features[0, image].float().std().item()
            out = features.clone()
            out[:, rows] += self.scale * sigma * draw
            noised.append(out)
        return deepstack.with_features(noised)

    def describe(self, encoded: EncodedProbe) -> dict:
        patches = None if self.patches is None else [list(p) if isinstance(p, tuple) else p for p in self.patches]
        return {"kind": "image_noise", "patches": patches, "scale": self.scale, "seed": self.seed}


@dataclass(frozen=True)
class Replace:
    """Replace a constraint phrase by another phrase (the paper's corruption).

    The replacement may have another token count than the phrase. Positions before the phrase
    are shared by both runs; positions after it are aligned by the length difference; inside
    the phrase, tokens are aligned from the phrase's end (the last clean token is restored
    onto the last replacement token, the one before onto the one before, ...). A clean phrase
    token with no counterpart (the replacement is shorter) has no restoration cell: its
    heatmap cells are NaN. Replacement tokens with no clean counterpart are never written.
    """

    constraint: str | None = None
    by: str = ""

    def corrupted_ids(self, model: LensModel, encoded: EncodedProbe) -> torch.Tensor:
        """Token ids ``[T']`` of the prompt with the phrase replaced."""
        return self.replaced(model, encoded).input_ids

    def replaced(self, model: LensModel, encoded: EncodedProbe) -> EncodedProbe:
        """The prompt with the phrase replaced, encoded by the processor (checked: only the
        phrase's tokens change)."""
        probe = encoded.probe
        original = probe.constraint(self.constraint)
        if not self.by.strip():
            raise CorruptionError("Replace needs a non-empty replacement phrase (by=...)")
        if self.by.strip() == original.text.strip():
            raise CorruptionError(f"the replacement {self.by!r} is identical to the constraint {original.text!r}")
        at = locate_constraint(original, probe.question)  # the occurrence encode_probe located
        new_question = probe.question[:at] + self.by + probe.question[at + len(original.text) :]
        replaced = encode_probe(Probe(probe.image, new_question, [], template=probe.template), model)
        old_ids, new_ids = encoded.input_ids, replaced.input_ids
        start, end = encoded.spans[original.text]
        shift = new_ids.shape[0] - old_ids.shape[0]
        n_new = end - start + shift
        outside_same = (
            n_new > 0
            and torch.equal(new_ids[:start], old_ids[:start])
            and torch.equal(new_ids[end + shift :], old_ids[end:])
        )
        if not outside_same:
            raise CorruptionError(
                f"replacing {original.text!r} by {self.by!r} changes tokens outside the constraint span "
                f"{start}..{end - 1} of prompt {encoded.prompt!r} (the tokenizer merges the replacement with "
                "its neighbours); choose a replacement that tokenizes on its own"
            )
        if torch.equal(new_ids, old_ids):
            raise CorruptionError(f"replacing {original.text!r} by {self.by!r} leaves the prompt's tokens unchanged")
        return replaced

    def position_map(self, model: LensModel, encoded: EncodedProbe) -> list[int | None]:
        """For each clean position, the corrupted position it is restored onto (None: none)."""
        start, end = encoded.spans[encoded.probe.constraint(self.constraint).text]
        shift = self.corrupted_ids(model, encoded).shape[0] - encoded.length
        n_new = end - start + shift
        mapped: list[int | None] = list(range(start))
        mapped += [start + n_new - (end - t) if end - t <= n_new else None for t in range(start, end)]
        mapped += [t + shift for t in range(end, encoded.length)]
        return mapped

    def apply(self, model: LensModel, encoded: EncodedProbe, clean: torch.Tensor) -> torch.Tensor:
        """Clean decoder inputs with the phrase's embeddings swapped for the replacement's."""
        new_ids = self.corrupted_ids(model, encoded)
        start, end = encoded.spans[encoded.probe.constraint(self.constraint).text]
        stop = end + new_ids.shape[0] - encoded.length
        with torch.no_grad():
            phrase = model.adapter.embed_tokens(new_ids[start:stop].to(clean.device)).to(clean.dtype)
        return torch.cat([clean[:, :start], phrase[None], clean[:, end:]], dim=1)

    def describe(self, encoded: EncodedProbe) -> dict:
        return {"kind": "replace", "constraint": encoded.probe.constraint(self.constraint).text, "by": self.by}


Corruption = ConstraintNoise | ImageNoise | Replace


def position_map(corruption: Corruption, model: LensModel, encoded: EncodedProbe) -> list[int | None] | None:
    """Clean -> corrupted positions when a replacement changes the prompt's length, else None."""
    if not isinstance(corruption, Replace):
        return None
    mapped = corruption.position_map(model, encoded)
    return None if mapped == list(range(encoded.length)) else mapped


def corrupted_call(corruption: Corruption, model: LensModel, encoded: EncodedProbe, clean: DecoderCall) -> DecoderCall:
    """The corrupted run's decoder call: its inputs ``[1, T', d]``; its M-RoPE position ids, attention
    pattern and DeepStack additions the clean run's, since noise changes no token and no image grid,
    unless a replacement changed the prompt (then the replaced prompt's own, as the model computes
    them: a phrase of another length shifts every later position and the image after it); image noise
    also noises the DeepStack additions (:meth:`ImageNoise.apply_deepstack`)."""
    embeds = corruption.apply(model, encoded, clean.embeds)
    if isinstance(corruption, Replace) and any(
        x is not None for x in (clean.positions, clean.pattern, clean.deepstack)
    ):
        replaced = model.decoder_call(corruption.replaced(model, encoded).model_inputs)
        return DecoderCall(embeds, replaced.positions, replaced.pattern, replaced.deepstack)
    deepstack = clean.deepstack
    if isinstance(corruption, ImageNoise) and deepstack is not None:
        deepstack = corruption.apply_deepstack(encoded, deepstack)
    return DecoderCall(embeds, clean.positions, clean.pattern, deepstack)


def noise(constraint: str | None = None, scale: float = 3.0, seed: int = 0) -> ConstraintNoise:
    """Gaussian noise on a constraint's embeddings (default: the probe's visual constraint)."""
    return ConstraintNoise(constraint, scale, seed)


def image_noise(
    patches: Sequence[int | tuple[int, int]] | None = None, scale: float = 3.0, seed: int = 0
) -> ImageNoise:
    """Gaussian noise on the image's visual tokens (all, or the given patches)."""
    return ImageNoise(patches, scale, seed)


def replace(constraint: str | None = None, by: str = "") -> Replace:
    """Replace a constraint phrase by another phrase (any token count; see :class:`Replace`)."""
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
