"""Tiny random multimodal models of each supported architecture, built offline.

Like transformers' own tests: small configs (hidden 32, a few layers), a word-level
tokenizer trained from a fixed word list with the ``tokenizers`` library, and the real
processor classes. Each builder saves the model and processor with ``save_pretrained`` so
tests load them back through :func:`mllm_lens.load`, the same path as a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PhiConfig,
    PixtralVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
    VipLlavaConfig,
    VipLlavaForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from mllm_lens.models.word_tokenizer import word_level_tokenizer
from mllm_lens.testing.pixtral_processor import PixtralProcessorStandIn

WORDS = (
    "USER ASSISTANT : ? . , ! Answer in a few words what which who where is are the this that of "
    "country city place building director movie film capital continent language currency flag "
    "won Golden Globe Oscar famous located on coast river Paris London Rome Tokyo Berlin Madrid "
    "Europe Asia Africa America Oceania yes no red green blue white black yellow photo image "
    "picture person named made by color colour how many people lives there"
).split()


def tiny_siglip(image_size: int, patch_size: int) -> SiglipVisionConfig:
    """The one-layer SigLIP tower the tiny SigLIP-based families share (LLaVA-OneVision, Gemma 3, PaliGemma)."""
    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )


def build_tokenizer(
    extra_words: tuple[str, ...] = (), n_filler: int = 64, named: dict[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` (+ ``extra_words`` + filler words ``w0..``), with
    ``named`` special tokens besides ``<image>`` (see :func:`word_level_tokenizer`)."""
    words = list(dict.fromkeys([*WORDS, *extra_words, *(f"w{i}" for i in range(n_filler))]))
    return word_level_tokenizer(words, named)


def _vision_config(image_size: int, patch_size: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )


def llama_text_config(vocab_size: int, **overrides: Any) -> LlamaConfig:
    """The tiny models' Llama backbone: 5 layers of width 32, 4 heads over 2 key/value heads."""
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
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
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _clip_processor(image_size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


def _save(model: PreTrainedModel, processor: Any, path: str | Path | None):
    model.eval()
    if path is not None:
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return model, processor


def random_llava(
    text_config,
    vision_config: CLIPVisionConfig,
    tokenizer: PreTrainedTokenizerFast,
    strategy: Literal["default", "full"] = "default",
):
    """A random ``LlavaForConditionalGeneration`` and its ``LlavaProcessor``; ``strategy`` is
    LLaVA's ``vision_feature_select_strategy``: ``"default"`` drops the vision tower's CLS token
    (LLaVA-1.5), ``"full"`` keeps it as the first image token."""
    config = LlavaConfig(  # type: ignore[call-arg]  # image_token_id: taken by the config's **kwargs
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=_clip_processor(cast(int, vision_config.image_size)),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
    )
    return model.eval(), processor


def tiny_llava(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    text_overrides: dict | None = None,
    extra_words: tuple[str, ...] = (),
):
    """A random LLaVA-1.5 (Llama backbone, CLIP tower, CLS dropped): ``(model, processor)``."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(extra_words)
    text = llama_text_config(len(tokenizer), **(text_overrides or {}))
    model, processor = random_llava(text, _vision_config(image_size, patch_size), tokenizer)
    return _save(model, processor, path)


def tiny_vipllava(path: str | Path | None = None, *, seed: int = 0, image_size: int = 32, patch_size: int = 8):
    """A random ViP-LLaVA: LLaVA whose projector reads several vision layers (CLS dropped), concatenated."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = VipLlavaConfig(  # type: ignore[call-arg]  # image_token_id: taken by the config's **kwargs
        vision_config=_vision_config(image_size, patch_size),
        text_config=llama_text_config(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layers=[-2, -1],
    )
    model = VipLlavaForConditionalGeneration(config)
    processor = LlavaProcessor(  # ViP-LLaVA checkpoints ship LLaVA's processor
        image_processor=_clip_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return _save(model, processor, path)


def tiny_llava_phi(path: str | Path | None = None, *, seed: int = 0, image_size: int = 32, patch_size: int = 8):
    """A random LLaVA with a Phi-2-style backbone (parallel attention + MLP, fc1/fc2, dense)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text = PhiConfig(  # type: ignore[call-arg]  # partial_rotary_factor: taken by the config's **kwargs
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=2048,
        partial_rotary_factor=0.5,
        initializer_range=0.5,  # peaked next-token distributions, so oracle comparisons are sharp
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model, processor = random_llava(text, _vision_config(image_size, patch_size), tokenizer)
    return _save(model, processor, path)


def tiny_llava_next(path: str | Path | None = None, *, seed: int = 0, image_size: int = 16, patch_size: int = 8):
    """A random LLaVA-NeXT (anyres tiles + image-newline tokens, Llama backbone)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaNextConfig(  # type: ignore[call-arg]  # image_token_id: taken by the config's **kwargs
        vision_config=_vision_config(image_size, patch_size),
        text_config=llama_text_config(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return _save(model, processor, path)


class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without its video processor, which needs torchvision (absent here).

    Images go through the real class's code (token counts from ``image_sizes``, anyres-max); only
    the video attribute is left out of the constructor, so it cannot be saved and reloaded through
    ``AutoProcessor`` (which would build the video processor).
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, None, **kwargs)


def tiny_llava_onevision(path: str | Path | None = None, *, seed: int = 0, image_size: int = 16, patch_size: int = 8):
    """A random LLaVA-OneVision (SigLIP tower, all patches kept, anyres-max tiles + newlines, Qwen2 backbone).

    ``path`` saves the model only: the processor cannot be reloaded without torchvision (see
    :class:`ImageOnlyOnevisionProcessor`).
    """
    torch.manual_seed(seed)
    # its own video token: the processor counts "<video>" ids in every prompt, and without one
    # in the vocabulary that id is "<unk>", so any word outside the tiny vocabulary miscounts
    tokenizer = build_tokenizer(named={"video_token": "<video>"})
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    vision = tiny_siglip(image_size, patch_size)
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
    config = LlavaOnevisionConfig(  # type: ignore[call-arg]  # image_token_id: taken by the config's **kwargs
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    processor = ImageOnlyOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
    )
    if path is not None:
        model.save_pretrained(path)
    return model, processor


#: Mistral's instruction format reduced to what a probe needs: ``[INST]`` image and text ``[/INST]``.
MISTRAL_CHAT_TEMPLATE = (
    "{%- for message in messages %}{%- if message['role'] == 'user' %}[INST]"
    "{%- for part in message['content'] %}{%- if part['type'] == 'image' %}[IMG]"
    "{%- else %}{{ part['text'] }}{%- endif %}{%- endfor %}[/INST]{%- endif %}{%- endfor %}"
)


def tiny_mistral3(path: str | Path | None = None, *, seed: int = 0, longest_edge: int = 32, patch_size: int = 4):
    """A random Mistral 3 (Pixtral tower with 2-D RoPE, 2 x 2 patch merger, Mistral backbone) and
    a processor expanding the image into rows of ``[IMG]`` closed by ``[IMG_BREAK]``, then ``[IMG_END]``.

    The processor is :class:`PixtralProcessorStandIn` (transformers' ``PixtralProcessor`` needs
    torchvision); ``path`` saves the model only, as ``AutoProcessor`` could not reload it.
    """
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"], special_tokens=True)
    vision = PixtralVisionConfig(  # type: ignore[call-arg]  # head_dim: taken by the config's **kwargs
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        head_dim=8,
        image_size=longest_edge,
        patch_size=patch_size,
    )
    text = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=2048,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.5,  # peaked next-token distributions, so oracle comparisons are sharp
    )
    config = Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=cast(int, tokenizer.convert_tokens_to_ids("[IMG]")),
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    model = Mistral3ForConditionalGeneration(config).eval()
    processor = PixtralProcessorStandIn(
        image_processor=PixtralImageProcessorPil(
            size={"longest_edge": longest_edge}, patch_size={"height": patch_size, "width": patch_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        spatial_merge_size=2,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
    if path is not None:
        model.save_pretrained(path)
    return model, processor
