"""A tiny random InternVL (InternViT-style tower with CLS, 2 x 2 pixel shuffle, Qwen2 backbone).

The image processor is transformers' ``GotOcr2ImageProcessorPil`` (InternVL's), cutting an image
into at most ``max_tiles`` tiles plus a thumbnail; the processor is :class:`ImageOnlyInternVLProcessor`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, Qwen2Config
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.configuration_internvl import InternVLVisionConfig

from mllm_lens.testing.tiny import build_tokenizer

#: The special tokens InternVL's processor reads off its tokenizer.
NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
#: InternVL's (Qwen2) chat format reduced to what a probe needs.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """``InternVLProcessor`` without its video processor, which needs torchvision (absent here).

    Images go through the real class's code (``<img>``, ``image_seq_length`` tokens per tile,
    ``</img>``); only the video attribute is left out, so ``AutoProcessor`` cannot reload it.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, **kwargs)


def tiny_internvl(
    path: str | Path | None = None, *, seed: int = 0, tile: int = 16, patch_size: int = 4, max_tiles: int = 4
):
    """A random InternVL and its processor: ``tile`` px tiles of ``(tile / patch_size)**2 / 4``
    tokens. ``path`` saves the model only (see :class:`ImageOnlyInternVLProcessor`)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(("user", "assistant"), named=NAMED_TOKENS)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    vision = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=tile,
        patch_size=patch_size,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.5,  # peaked next-token distributions, so oracle comparisons are sharp
    )
    seq = (tile // patch_size) ** 2 // 4
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=seq,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=max_tiles
    )
    processor = ImageOnlyInternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=seq,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    if path is not None:
        model.save_pretrained(path)
    return model, processor
