"""Tiny random Idefics3 and SmolVLM models (SigLIP-style tower, pixel shuffle, Llama backbone).

Both families share the image path: the processor cuts an image into tiles plus a global view,
and each tile is ``<fake_token_around_image><row_i_col_j>`` then its image tokens. The tokenizer
keeps ``\\n`` as a token, as real BPE tokenizers do: the newlines that end each row of tiles are
how a prompt tells its rows of tiles apart (see :func:`mllm_lens.models.layouts.idefics3_layout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from tokenizers import AddedToken
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    PreTrainedTokenizerFast,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

from mllm_lens.testing.tiny import build_tokenizer, llama_text_config

#: Idefics3's chat format reduced to what a probe needs (the checkpoints' template, without system turns).
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{%- for message in messages %}{{ message['role'] | capitalize }}:"
    "{%- for part in message['content'] %}{%- if part['type'] == 'image' %}<image>"
    "{%- else %}{{ part['text'] }}{%- endif %}{%- endfor %}<end_of_utterance>\n{% endfor %}"
    "{%- if add_generation_prompt %}Assistant:{%- endif %}"
)
MARKERS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|begin_of_text|>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def idefics3_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level test tokenizer with Idefics3's marker tokens and ``\\n`` as a token."""
    tokenizer = build_tokenizer(("User", "Assistant"))
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])
    return tokenizer


def tiny_idefics3(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    model_type: str = "idefics3",
    tile: int = 16,
    longest_edge: int = 32,
    patch_size: int = 4,
):
    """A random Idefics3 (or, with ``model_type="smolvlm"``, SmolVLM) and its processor.

    Tiles are ``tile`` px (``(tile / patch_size)**2 / 4`` tokens after the 2 x 2 pixel shuffle);
    images are first resized to ``longest_edge``. The processor is transformers' ``Idefics3Processor``
    for both: ``SmolVLMProcessor`` needs ``num2words`` and a torchvision video processor (absent
    here), and expands an image into the same tokens. ``path`` saves model and processor.
    """
    torch.manual_seed(seed)
    tokenizer = idefics3_tokenizer()
    vision: dict[str, Any] = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=tile
    )
    text = llama_text_config(len(tokenizer))
    image_token_id = cast(int, tokenizer.convert_tokens_to_ids("<image>"))
    processor_size = {"size": {"longest_edge": longest_edge}, "max_image_size": {"longest_edge": tile}}
    if model_type == "smolvlm":
        smolvlm = SmolVLMConfig(
            vision_config=SmolVLMVisionConfig(patch_size=patch_size, **vision),
            text_config=text,
            image_token_id=image_token_id,
            scale_factor=2,
        )
        model: Any = SmolVLMForConditionalGeneration(smolvlm)
        image_processor: Any = SmolVLMImageProcessorPil(**processor_size)
    elif model_type == "idefics3":
        idefics3 = Idefics3Config(
            vision_config=Idefics3VisionConfig(patch_size=patch_size, **vision),
            text_config=text,
            image_token_id=image_token_id,
            scale_factor=2,
        )
        model = Idefics3ForConditionalGeneration(idefics3)
        image_processor = Idefics3ImageProcessorPil(**processor_size)
    else:
        raise ValueError(f"model_type must be 'idefics3' or 'smolvlm', got {model_type!r}")
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(tile // patch_size) ** 2 // 4,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    model.eval()
    if path is not None:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return model, processor


def tiny_smolvlm(path: str | Path | None = None, *, seed: int = 0, **kwargs: Any):
    """A random SmolVLM: :func:`tiny_idefics3` with ``model_type="smolvlm"``."""
    return tiny_idefics3(path, seed=seed, model_type="smolvlm", **kwargs)
