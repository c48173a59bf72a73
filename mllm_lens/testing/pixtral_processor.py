"""A stand-in for transformers' ``PixtralProcessor``, which cannot be built without torchvision.

``PixtralProcessor`` is marked as needing torchvision (its module imports the torchvision image
processor), and PyPI's torchvision does not import beside the CPU torch wheel used here. The
stand-in keeps everything else real: the image goes through ``PixtralImageProcessorPil`` (resized
to a multiple of the merged patch, ``image_sizes`` from it), the tokenizer is the model's, and the
placeholder is expanded exactly as ``PixtralProcessor.replace_image_token`` does in transformers
5.x: ``rows`` runs of ``cols`` ``[IMG]`` tokens, each closed by ``[IMG_BREAK]``, the last by
``[IMG_END]``.
"""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature, ProcessorMixin


class PixtralProcessorStandIn(ProcessorMixin):
    """Image processor + tokenizer + Pixtral's image-token expansion (see the module docstring)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token, self.image_break_token, self.image_end_token = "[IMG]", "[IMG_BREAK]", "[IMG_END]"

    def __call__(self, images: Any = None, text: str | None = None, **kwargs: Any) -> BatchFeature:
        cell = self.patch_size * self.spatial_merge_size
        pixels = self.image_processor(images, patch_size={"height": cell, "width": cell}, return_tensors="pt")
        height, width = (int(v) for v in pixels["image_sizes"][0].tolist())
        rows = [self.image_token * (width // cell) + self.image_break_token] * (height // cell)
        expansion = "".join(rows)[: -len(self.image_break_token)] + self.image_end_token
        if text is None or text.count(self.image_token) != 1:
            raise ValueError(f"the stand-in expands exactly one {self.image_token} placeholder")
        tokens = self.tokenizer(text.replace(self.image_token, expansion), return_tensors="pt")
        return BatchFeature({**tokens, **pixels})
