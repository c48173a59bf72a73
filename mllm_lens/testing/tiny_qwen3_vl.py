"""A tiny random Qwen3-VL (2 x 2 patch merging, interleaved M-RoPE decoder, DeepStack).

Qwen3-VL is Qwen2.5-VL's recipe plus DeepStack: the vision tower merges the hidden states of some
of its blocks (``deepstack_visual_indexes``) into extra feature sets, and the decoder adds set ``i``
to the residual stream at the image positions right after its layer ``i``. Here both vision blocks
feed DeepStack, so the image enters decoder layers 0 and 1 besides the input embeddings; the
decoder has 4 layers, so restorations above the DeepStack layers are traced too. The processor is
:class:`ImageOnlyQwen3VLProcessor` over transformers' ``Qwen2VLImageProcessorPil`` (the image
processor Qwen3-VL's checkpoints use), so the merged grid follows the image's size; the text
backbone has 16-dimensional heads with ``rope_theta`` 100, so a wrong 3-D position changes the logits.

:func:`tiny_qwen3_vl_moe` is the same model with Qwen3-VL-MoE's classes: every decoder layer's MLP is a
routed mixture-of-experts block (4 experts, top-2), as in the released checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeVisionConfig

from mllm_lens.testing.tiny import build_tokenizer
from mllm_lens.testing.tiny_qwen2_vl import MARKERS, QWEN2_VL_CHAT_TEMPLATE

#: Text backbone: 4 layers, 4 heads of 16 dimensions over 2 key/value heads, interleaved M-RoPE sections.
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 100.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    },
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    initializer_range=0.5,  # peaked next-token distributions, so oracle comparisons are sharp
)
#: The MoE text backbone: :data:`TEXT` with every layer's MLP routed over 4 experts of width 32, top 2.
MOE_TEXT = dict(TEXT, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without its video processor, which needs torchvision (absent here).

    Images go through the real class's code (``image_grid_thw``, one ``<image>`` per merged patch,
    ``mm_token_type_ids`` for M-RoPE); only the video attribute is left out, so ``AutoProcessor``
    cannot reload it.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def tiny_qwen3_vl(path: str | Path | None = None, *, seed: int = 0, patch_size: int = 4, max_pixels: int = 32 * 32):
    """A random Qwen3-VL and its processor; images are resized to multiples of ``2 * patch_size`` px
    holding at most ``max_pixels``. ``path`` saves the model only (see :class:`ImageOnlyQwen3VLProcessor`)."""
    classes = (Qwen3VLConfig, Qwen3VLVisionConfig, Qwen3VLForConditionalGeneration)
    return _build(*classes, TEXT, path, seed, patch_size, max_pixels)


def tiny_qwen3_vl_moe(path: str | Path | None = None, *, seed: int = 0, patch_size: int = 4, max_pixels: int = 32 * 32):
    """A random Qwen3-VL-MoE (:data:`MOE_TEXT` backbone) and its processor, as :func:`tiny_qwen3_vl`."""
    classes = (Qwen3VLMoeConfig, Qwen3VLMoeVisionConfig, Qwen3VLMoeForConditionalGeneration)
    return _build(*classes, MOE_TEXT, path, seed, patch_size, max_pixels)


def _build(
    config_class: Callable[..., PretrainedConfig],
    vision_class: Callable[..., PretrainedConfig],
    model_class: Callable[[Any], PreTrainedModel],
    text: dict[str, Any],
    path: str | Path | None,
    seed: int,
    patch_size: int,
    max_pixels: int,
):
    """One builder for both families: they share the vision tower, processor and DeepStack set-up."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(("user", "assistant"))
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    ids: dict[str, Any] = {token: tokenizer.convert_tokens_to_ids(token) for token in [*MARKERS, "<image>"]}
    vision = vision_class(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=64,  # the text backbone's width
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
        initializer_range=0.1,  # image tokens and DeepStack features on the text embeddings' scale
    )
    config = config_class(
        vision_config=vision,
        text_config=dict(text, vocab_size=len(tokenizer)),
        image_token_id=ids["<image>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = model_class(config).eval()
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * patch_size**2, "longest_edge": max_pixels},
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = ImageOnlyQwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_VL_CHAT_TEMPLATE
    )
    if path is not None:
        model.save_pretrained(path)
    return model, processor
