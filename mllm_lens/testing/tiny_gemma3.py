"""A tiny random Gemma 3 (Gemma3ForConditionalGeneration): SigLIP tower, pooled square grid,
bidirectional image block and sliding-window layers in the decoder.

The vision tower sees a 32 x 32 px image as 8 x 8 patches; the projector average-pools them into a
4 x 4 grid (the checkpoints: 64 x 64 into 16 x 16), so an image is ``<start_of_image>``, 16 pooled
tokens and ``<end_of_image>``. The decoder's five layers alternate sliding-window (window 6, shorter
than the image block, so a window cuts through it) and global attention with rotary bases 10 and
100; token embeddings are scaled by sqrt(hidden) as in the model. Processor: transformers'
``Gemma3Processor`` with ``Gemma3ImageProcessorPil`` and Gemma's chat format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from mllm_lens.testing.tiny import build_tokenizer, tiny_siglip

BOI, EOI = "<start_of_image>", "<end_of_image>"
MARKERS = ["<start_of_turn>", "<end_of_turn>"]
#: Gemma's chat format (turns, ``<start_of_image>`` for an image); BOS comes from the tokenizer.
GEMMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ part['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
#: The five decoder layers: sliding, sliding, global, sliding, global.
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"]
TEXT: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=len(LAYER_TYPES),
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=6,
    layer_types=LAYER_TYPES,
    rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 100.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
    },
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    initializer_range=0.5,  # peaked next-token distributions, so oracle comparisons are sharp
)
IMAGE_SIZE, PATCH_SIZE, TOKENS_PER_IMAGE = 32, 4, 16


def tiny_gemma3(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    text_overrides: dict[str, Any] | None = None,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    tokens_per_image: int = TOKENS_PER_IMAGE,
) -> tuple[Any, Any]:
    """A random Gemma 3 and its processor; ``path`` saves both (they reload with ``ml.load``).

    ``text_overrides`` replace entries of :data:`TEXT` (the benchmark's Gemma-3-shaped preset
    widens the decoder); ``tokens_per_image`` must be a square that divides the patch grid."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(("user", "model"), named={"boi_token": BOI, "eoi_token": EOI})
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    vision = tiny_siglip(image_size, patch_size)
    text: dict[str, Any] = {"vocab_size": len(tokenizer), **TEXT, **(text_overrides or {})}
    ids: dict[str, Any] = {token: tokenizer.convert_tokens_to_ids(token) for token in (BOI, EOI, "<image>")}
    config = Gemma3Config(
        text_config=Gemma3TextConfig(**text),
        vision_config=vision,
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids["<image>"],
        tie_word_embeddings=False,  # tied, a random model's answer is its last input token (p = 1)
        initializer_range=text["initializer_range"],  # the wrapper's, not the text config's, initialises the decoder
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # the checkpoints' projector is trained; zeros (its init) would blank the image
        projector = model.model.multi_modal_projector.mm_input_projection_weight
        projector.normal_(0.0, 0.5)
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    if path is not None:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return model, processor
