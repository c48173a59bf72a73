"""A tiny random PaliGemma (PaliGemmaForConditionalGeneration): SigLIP tower, Gemma decoder that
reads the image and the prompt as one bidirectional prefix (a prefix-LM).

The vision tower sees a 32 x 32 px image as 4 x 4 patches of 8 px, one image token each, row-major.
The processor is transformers' ``PaliGemmaProcessor`` with ``SiglipImageProcessorPil``: the prompt
is the image tokens, then ``<s>`` and the question (the processor inserts the ``<s>`` and a newline
after the last image token). A small chat template puts the image first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from mllm_lens.testing.tiny import build_tokenizer, tiny_siglip

#: PaliGemma takes no chat turns: the image, then the task prompt.
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
)
IMAGE_SIZE, PATCH_SIZE = 32, 8


def tiny_paligemma(path: str | Path | None = None, *, seed: int = 0) -> tuple[Any, Any]:
    """A random PaliGemma and its processor; ``path`` saves both (they reload with ``ml.load``)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(("answer", "en"))
    tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    image_processor: Any = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = tokens  # PaliGemmaProcessor reads it off the image processor
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=PALIGEMMA_CHAT_TEMPLATE
    )
    text = GemmaConfig(
        vocab_size=len(processor.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.5,  # the decoder's own init: peaked distributions, sharp oracle comparisons
    )
    vision = tiny_siglip(IMAGE_SIZE, PATCH_SIZE)
    options: dict[str, Any] = dict(initializer_range=0.5)  # the head's and projector's init
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        projection_dim=64,
        hidden_size=64,
        tie_word_embeddings=False,  # tied, a random model's answer is its last input token (p = 1)
        **options,
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    if path is not None:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return model, processor
