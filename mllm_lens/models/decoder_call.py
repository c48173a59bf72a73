"""Which decoder calls the fast tracing paths are exact for, and why a model's are not.

Every fast path (shared prefix cache, partial restart, suffix batching) assumes what LLaVA's
decoder does: a plain causal mask over the whole prompt, embeddings as the only input, and
position ids that are either 1-D ``0..T-1`` (the decoder's default) or, for the M-RoPE wrappers
in :data:`MROPE_REPLAYED`, the 3-D (temporal, height, width) ids the wrapper computes from the
image grid, which :meth:`~mllm_lens.models.lens_model.LensModel.decoder_call` captures and every
fast path slices and hands back. A model whose decoder call differs (bidirectional image block,
prefix-LM, sliding windows, an unchecked M-RoPE wrapper, images through cross-attention or added
into later layers) would get numbers that may be silently wrong, so it is refused with the reason
named, whichever adapter tables might otherwise map its modules.
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
KNOWN_REFUSALS["qwen3_vl"] = KNOWN_REFUSALS["qwen3_vl_moe"] = (
    "DeepStack: Qwen3-VL adds visual features from several vision-tower layers into the residual stream of "
    "its early decoder layers at the image positions, so the image enters the decoder at more than one place; "
    "the fast paths and the corruptions feed it through the decoder's input embeddings only"
)

#: M-RoPE wrappers whose 3-D position ids the fast paths replay (checked against the oracle in tests).
MROPE_REPLAYED = frozenset({"qwen2_vl", "qwen2_5_vl"})


def _text_config(model: PreTrainedModel) -> Any:
    return getattr(model.config, "text_config", None) or model.config


def uses_mrope(model: PreTrainedModel) -> bool:
    """Whether the decoder takes M-RoPE's 3-D position ids (a ``mrope_section`` or a ``get_rope_index``)."""
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
    if uses_mrope(model) and architecture not in MROPE_REPLAYED:
        return (
            "M-RoPE position ids: the decoder takes 3-D (temporal, height, width) positions built by "
            "get_rope_index from the image grid; the fast paths replay them only for the wrappers checked "
            f"against the oracle ({', '.join(sorted(MROPE_REPLAYED))})"
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
