"""Architecture, tokenizer and processor of the demo model, and its batched inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from mllm_lens.data import world
from mllm_lens.models.word_tokenizer import word_level_tokenizer
from mllm_lens.probe import PAPER_TEMPLATE
from mllm_lens.testing.tiny import random_llava

MODEL_DIR = Path(__file__).parent / "model"
IMAGE_SIZE = 64
PATCH_SIZE = 8


def build_demo_model(seed: int = 0, cls_token: bool = False):
    """A randomly initialised demo LLaVA: CLIP tower 3 x 96 on 8x8 patches of a 64 px image
    (64 visual tokens, preceded by the tower's CLS token when ``cls_token``), Llama decoder
    4 x 128. Returns ``(model, processor)``."""
    torch.manual_seed(seed)
    tokenizer = word_level_tokenizer(world.vocabulary())
    vision = CLIPVisionConfig(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=96,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    return random_llava(text, vision, tokenizer, "full" if cls_token else "default")


def image_token_count(config) -> int:
    """Image tokens per picture: the patch grid, plus the CLS token when the model keeps it."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")


def prompt_ids(tokenizer, question: str, n_image_tokens: int, answer: str | None = None) -> list[int]:
    """Token ids of the paper's prompt with the image placeholder expanded (+ answer and EOS)."""
    text = PAPER_TEMPLATE.format(question=question.rstrip("?").rstrip())
    if answer is not None:
        text = f"{text} {answer}"
    ids = tokenizer(text)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    at = ids.index(image_id)
    ids = ids[:at] + [image_id] * n_image_tokens + ids[at + 1 :]
    return ids + [tokenizer.eos_token_id] if answer is not None else ids
