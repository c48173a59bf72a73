"""Which decoder calls the fast tracing paths are exact for, and why a model's are not.

Every fast path (shared prefix cache, partial restart, suffix batching) assumes what LLaVA's
decoder does: 1-D positions ``0..T-1``, a plain causal mask over the whole prompt, and
embeddings as the only input. A model whose decoder call differs (bidirectional image block,
prefix-LM, sliding windows, M-RoPE's 3-D positions, images through cross-attention) would get
numbers that may be silently wrong, so it is refused with the reason named, whichever adapter
tables might otherwise map its modules. See DESIGN.md, "The decoder-call contract".
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

#: Families whose non-causal attention or image path cannot be read off the text config.
KNOWN_REFUSALS: dict[str, str] = {
    "gemma3": (
        "attention pattern not causal: Gemma 3 lets an image's tokens attend to each other bidirectionally "
        "(a block mask from token_type_ids) and has sliding-window layers, so a restored position also changes "
        "earlier ones and the fast paths cannot prove a trace exact"
    ),
    "paligemma": (
        "attention pattern not causal: PaliGemma is a prefix-LM (image and prompt attend to each other "
        "bidirectionally), so a restored position also changes earlier ones and the fast paths cannot prove "
        "a trace exact"
    ),
    "mllama": (
        "image not in the decoder's token sequence: Mllama reads the image through cross-attention layers, "
        "so there are no image-token positions to restore or noise"
    ),
}
KNOWN_REFUSALS["shieldgemma2"] = KNOWN_REFUSALS["gemma3"]


def _text_config(model: PreTrainedModel) -> Any:
    return getattr(model.config, "text_config", None) or model.config


def _has_mrope(model: PreTrainedModel) -> bool:
    text = _text_config(model)
    for name in ("rope_parameters", "rope_scaling"):
        rope = getattr(text, name, None)
        if isinstance(rope, dict) and "mrope_section" in rope:
            return True
    inner = getattr(model, "model", None)
    return callable(getattr(model, "get_rope_index", None)) or callable(getattr(inner, "get_rope_index", None))


def decoder_call_refusal(model: PreTrainedModel) -> str | None:
    """Why the fast paths cannot be proven exact for ``model``'s decoder call, or None if they can."""
    architecture = getattr(model.config, "model_type", "?")
    if architecture in KNOWN_REFUSALS:
        return KNOWN_REFUSALS[architecture]
    text = _text_config(model)
    if _has_mrope(model):
        return (
            "M-RoPE position ids: the decoder takes 3-D (temporal, height, width) positions built by "
            "get_rope_index from the image grid; the fast paths replay 1-D positions only"
        )
    if getattr(text, "use_bidirectional_attention", False):
        return (
            "attention pattern not causal: the text config sets use_bidirectional_attention, so a restored "
            "position also changes earlier ones and the fast paths cannot prove a trace exact"
        )
    layer_types = getattr(text, "layer_types", None) or []
    if "sliding_attention" in layer_types or (
        getattr(text, "use_sliding_window", False) and getattr(text, "sliding_window", None)
    ):
        window = getattr(text, "sliding_window", "?")
        return (
            f"attention pattern not plain causal: sliding-window layers (window {window}), "
            "which the prefix cache and partial restarts are not proven exact for"
        )
    return None
