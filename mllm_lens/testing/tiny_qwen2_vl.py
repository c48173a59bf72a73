"""Tiny random Qwen2-VL and Qwen2.5-VL models (2 x 2 patch merging, M-RoPE decoder).

The image processor is transformers' ``Qwen2VLImageProcessorPil`` (both families use it): an image
is resized to a multiple of ``patch_size * 2`` px within a pixel budget, so the grid of merged
patches follows the image's size and shape. The processor is :class:`ImageOnlyQwen2VLProcessor`.
The text backbone has 16-dimensional heads with ``rope_theta`` 100, so all of M-RoPE's temporal,
height and width frequency sections turn noticeably over the tiny prompts: a wrong 3-D position
changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mllm_lens.testing.tiny import build_tokenizer

#: The marker tokens Qwen-VL's prompt puts around an image, and the chat tokens.
MARKERS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
#: Qwen2-VL's chat format reduced to what a probe needs (``<image>`` is the tiny tokenizer's image token).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><image><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Text backbone: 4 heads of 16 dimensions over 2 key/value heads; M-RoPE sections of the 8 frequencies.
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=5,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_parameters={"rope_type": "default", "rope_theta": 100.0, "mrope_section": [2, 3, 3]},
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    initializer_range=0.5,  # peaked next-token distributions, so oracle comparisons are sharp
)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without its video processor, which needs torchvision (absent here).

    Images go through the real class's code (``image_grid_thw``, one ``<image>`` per merged patch,
    ``mm_token_type_ids`` for M-RoPE); only the video attribute is left out, so ``AutoProcessor``
    cannot reload it.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without its (torchvision) video processor; see :class:`ImageOnlyQwen2VLProcessor`."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def tiny_qwen2_vl(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    model_type: str = "qwen2_vl",
    patch_size: int = 4,
    max_pixels: int = 32 * 32,
    text_overrides: dict[str, Any] | None = None,
):
    """A random Qwen2-VL (or, with ``model_type="qwen2_5_vl"``, Qwen2.5-VL) and its processor.

    Images are resized to multiples of ``2 * patch_size`` px holding at most ``max_pixels``; each
    merged token covers ``2 x 2`` patches. ``text_overrides`` replace entries of :data:`TEXT` (the
    benchmark's Qwen2.5-VL-shaped preset widens the decoder). ``path`` saves the model only (see
    :class:`ImageOnlyQwen2VLProcessor`).
    """
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(("user", "assistant"))
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in MARKERS}
    tokens: dict[str, Any] = dict(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = {"vocab_size": len(tokenizer), **TEXT, **(text_overrides or {})}
    vision: dict[str, Any] = dict(depth=1, num_heads=4, patch_size=patch_size, spatial_merge_size=2)
    model: Any
    processor_class: Any
    if model_type == "qwen2_vl":
        config: Any = Qwen2VLConfig(
            vision_config=Qwen2VLVisionConfig(embed_dim=32, hidden_size=text["hidden_size"], mlp_ratio=2, **vision),
            text_config=text,
            **tokens,
        )
        model, processor_class = Qwen2VLForConditionalGeneration(config), ImageOnlyQwen2VLProcessor
    elif model_type == "qwen2_5_vl":
        # window attention over 2 x 2 merged tokens in its one block (most blocks of the checkpoints are windowed)
        vision_config = Qwen2_5_VLVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=text["hidden_size"],  # the merger projects into the decoder's width
            window_size=4 * patch_size,
            fullatt_block_indexes=[],
            **vision,
        )
        config = Qwen2_5_VLConfig(vision_config=vision_config, text_config=text, **tokens)
        model, processor_class = Qwen2_5_VLForConditionalGeneration(config), ImageOnlyQwen2_5_VLProcessor
    else:
        raise ValueError(f"model_type must be 'qwen2_vl' or 'qwen2_5_vl', got {model_type!r}")
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * patch_size**2, "longest_edge": max_pixels},
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE
    )
    model.eval()
    if path is not None:
        model.save_pretrained(path)
    return model, processor


def tiny_qwen2_5_vl(path: str | Path | None = None, *, seed: int = 0, **kwargs: Any):
    """A random Qwen2.5-VL: :func:`tiny_qwen2_vl` with ``model_type="qwen2_5_vl"``."""
    return tiny_qwen2_vl(path, seed=seed, model_type="qwen2_5_vl", **kwargs)
