"""Which decoder calls the fast tracing paths are exact for, and why a model's are not.

Every fast path (shared prefix cache, partial restart, suffix batching) replays the decoder call the
wrapper makes: embeddings as the only input; position ids that are either 1-D ``0..T-1`` (the
decoder's default) or, for the M-RoPE wrappers in :data:`MROPE_REPLAYED`, the 3-D (temporal, height,
width) ids the wrapper computes from the image grid (1-D ids from :data:`POSITION_OFFSETS` on, for
a wrapper that counts from there); and an attention pattern that is either plainly
causal or, for the wrappers in :data:`PATTERN_REPLAYED` (Gemma 3's bidirectional image block and
sliding windows, PaliGemma's prefix-LM), the masks the wrapper builds, captured as an
:class:`~mllm_lens.models.attention_pattern.AttentionPattern`; and, for the wrappers in
:data:`DEEPSTACK_REPLAYED` (Qwen3-VL, Qwen3-VL-MoE), the visual features added into the residual
stream after the first layers, captured as a :class:`~mllm_lens.models.deepstack.DeepStack`.
:meth:`~mllm_lens.models.lens_model.LensModel.decoder_call` captures them and every fast path slices
and hands them back. A model whose decoder call differs in a way not replayed (an unchecked M-RoPE
wrapper, non-causal pattern or DeepStack wrapper, a text config asking for bidirectional or
sliding-window attention the wrapper does not mask itself, images through cross-attention) would get numbers that may be
silently wrong, so it is refused with the reason named, whichever adapter tables might otherwise map
its modules.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

#: Families whose non-causal attention or image path cannot be read off the text config.
KNOWN_REFUSALS: dict[str, str] = {
    "mllama": (
        "image not in the decoder's token sequence: Mllama reads the image through cross-attention layers, "
        "so there are no image-token positions to restore or noise"
    ),
}
KNOWN_REFUSALS["shieldgemma2"] = (
    "attention pattern not checked: ShieldGemma 2 wraps Gemma 3 (bidirectional image block, sliding windows) "
    "as an image classifier; only Gemma3ForConditionalGeneration's masks are replayed and checked against the oracle"
)

#: M-RoPE wrappers whose 3-D position ids the fast paths replay (checked against the oracle in tests).
MROPE_REPLAYED = frozenset({"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"})
#: Wrappers whose DeepStack additions the fast paths replay and the corruptions reach (checked against
#: the oracle in tests; see :mod:`mllm_lens.models.deepstack`).
DEEPSTACK_REPLAYED = frozenset({"qwen3_vl", "qwen3_vl_moe"})
#: Wrappers that build their decoder's masks themselves, and the pattern's name: the fast paths replay
#: the captured masks and restart where :meth:`AttentionPattern.restart` says (checked against the oracle).
PATTERN_REPLAYED: dict[str, str] = {
    "gemma3": "bidirectional image block",
    "paligemma": "prefix-LM (image and prompt read each other both ways)",
}
#: Wrappers whose 1-D position ids do not start at 0 (PaliGemma counts from 1): every decoder call
#: replays the offset (rotary attention reads relative positions, but its float rounding does not).
POSITION_OFFSETS: dict[str, int] = {"paligemma": 1}


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


def uses_deepstack(model: PreTrainedModel) -> bool:
    """Whether the vision tower hands the decoder DeepStack features (``deepstack_visual_indexes``)."""
    return bool(getattr(getattr(model.config, "vision_config", None), "deepstack_visual_indexes", None))


def decoder_call_refusal(model: PreTrainedModel) -> str | None:
    """Why the fast paths cannot be proven exact for ``model``'s decoder call, or None if they can."""
    architecture = getattr(model.config, "model_type", "?")
    if architecture in KNOWN_REFUSALS:
        return KNOWN_REFUSALS[architecture]
    if uses_deepstack(model) and architecture not in DEEPSTACK_REPLAYED:
        return (
            "DeepStack: the vision tower's features are also added into the residual stream of the first decoder "
            "layers at the image positions; the fast paths replay and corrupt them only for the wrappers checked "
            f"against the oracle ({', '.join(sorted(DEEPSTACK_REPLAYED))})"
        )
    text = _text_config(model)
    if uses_mrope(model) and architecture not in MROPE_REPLAYED:
        return (
            "M-RoPE position ids: the decoder takes 3-D (temporal, height, width) positions built by "
            "get_rope_index from the image grid; the fast paths replay them only for the wrappers checked "
            f"against the oracle ({', '.join(sorted(MROPE_REPLAYED))})"
        )
    if architecture == "paligemma" and getattr(text, "model_type", None) != "gemma":
        return (
            f"attention pattern not checked: PaliGemma 2 ({getattr(text, 'model_type', '?')} backbone: sliding "
            "windows, logit soft-capping) is not checked against the oracle; only PaliGemma's Gemma backbone is "
            "replayed"
        )
    if architecture in PATTERN_REPLAYED:
        return None
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
