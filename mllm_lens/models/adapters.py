"""Architecture adapters: where each part of a multimodal model lives.

Architecture knowledge is data (one :class:`BackboneSpec` per text backbone, one
:class:`WrapperSpec` per multimodal wrapper), resolved against a model instance into an
:class:`Adapter`. Code elsewhere speaks only of sites (``"hidden"``, ``"mlp"``, ``"attn"``)
and asks the adapter for modules. When a backbone is not in the table, introspection looks
for the same parts by shape; anything still missing raises :class:`UnsupportedModelError`
naming the part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from mllm_lens.errors import NotMultimodalError, UnsupportedModelError
from mllm_lens.models.decoder_call import (
    PATTERN_REPLAYED,
    POSITION_OFFSETS,
    decoder_call_refusal,
    uses_deepstack,
    uses_mrope,
)
from mllm_lens.models.layouts import (
    PatchLayout,
    gemma3_layout,
    idefics3_layout,
    internvl_layout,
    llava_next_layout,
    llava_onevision_layout,
    paligemma_layout,
    pixtral_layout,
    qwen2_vl_layout,
    square_grid_layout,
)
from mllm_lens.models.moe import experts_of, moe_refusal

SITES = ("hidden", "mlp", "attn")


@dataclass(frozen=True)
class BackboneSpec:
    """Attribute names inside one decoder layer of a text backbone."""

    attention: str
    mlp: str
    mlp_out: str | None  # the MLP's dense output projection (MultEdit's weight); None: an introspected MoE block
    attn_out: str
    embed: str = "embed_tokens"
    layers: str = "layers"
    value: str = "v_proj"  # value projection inside the attention module (attention contributions)
    final_norm: str = "norm"  # the decoder stack's last norm, before the LM head (partial decoder)
    experts: str = "experts"  # a mixture-of-experts MLP block's experts (traced, never edited; see models.moe)


@dataclass(frozen=True)
class WrapperSpec:
    """Where a multimodal wrapper keeps its decoder, head and image layout."""

    language_model: str
    lm_head: str
    patch_layout: Callable[[PreTrainedModel, dict, int], PatchLayout]
    paper_template: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    "llama": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "mistral": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "qwen2": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "qwen2_vl_text": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "qwen2_5_vl_text": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "qwen3_vl_text": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    # routed-expert layers have no down_proj (see models.moe); dense ones (mlp_only_layers) do
    "qwen3_vl_moe_text": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "gemma": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "gemma3_text": BackboneSpec(attention="self_attn", mlp="mlp", mlp_out="down_proj", attn_out="o_proj"),
    "phi": BackboneSpec(
        attention="self_attn", mlp="mlp", mlp_out="fc2", attn_out="dense", final_norm="final_layernorm"
    ),
}

WRAPPERS: dict[str, WrapperSpec] = {
    "llava": WrapperSpec("model.language_model", "lm_head", square_grid_layout, paper_template=True),
    "llava_next": WrapperSpec("model.language_model", "lm_head", llava_next_layout),
    "vipllava": WrapperSpec("model.language_model", "lm_head", square_grid_layout),
    "llava_onevision": WrapperSpec("model.language_model", "lm_head", llava_onevision_layout),
    "mistral3": WrapperSpec("model.language_model", "lm_head", pixtral_layout),
    "idefics3": WrapperSpec("model.text_model", "lm_head", idefics3_layout),
    "smolvlm": WrapperSpec("model.text_model", "lm_head", idefics3_layout),
    "internvl": WrapperSpec("model.language_model", "lm_head", internvl_layout),
    "qwen2_vl": WrapperSpec("model.language_model", "lm_head", qwen2_vl_layout),
    "qwen2_5_vl": WrapperSpec("model.language_model", "lm_head", qwen2_vl_layout),
    "qwen3_vl": WrapperSpec("model.language_model", "lm_head", qwen2_vl_layout),
    "qwen3_vl_moe": WrapperSpec("model.language_model", "lm_head", qwen2_vl_layout),
    "gemma3": WrapperSpec("model.language_model", "lm_head", gemma3_layout),
    "paligemma": WrapperSpec("model.language_model", "lm_head", paligemma_layout),
}

MISSING_LAYOUT = "missing the wrapper layout (LM head, image-token layout: which prompt token is which patch)"
#: Wrappers whose image tokens are not patches, so no layout can map them onto the picture.
NO_LAYOUT: dict[str, str] = {
    "idefics2": (
        "no patch layout: Idefics2's image tokens are a perceiver resampler's latents (learned queries that "
        "each attend over all of a tile's patches), so no image token is a patch of the picture"
    ),
}

_ATTENTION_NAMES = ("self_attn", "attention", "attn", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "mlp_block")
_OUT_PROJ_NAMES = ("down_proj", "fc2", "o_proj", "dense", "out_proj", "c_proj", "w2")


def _get(root: nn.Module, path: str) -> nn.Module | None:
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def _find_child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    return None


def _find_out_projection(module: nn.Module, hidden: int) -> str | None:
    """The last Linear directly under ``module`` that writes the residual width."""
    found = None
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.out_features == hidden:
            found = name
    return found


def _introspect_backbone(layer: nn.Module, hidden: int) -> tuple[BackboneSpec | None, list[str]]:
    missing: list[str] = []
    attention = _find_child(layer, _ATTENTION_NAMES)
    mlp = _find_child(layer, _MLP_NAMES)
    if attention is None:
        missing.append(f"attention module (looked for {', '.join(_ATTENTION_NAMES)})")
    if mlp is None:
        missing.append(f"MLP module (looked for {', '.join(_MLP_NAMES)})")
    attn_out = _find_out_projection(getattr(layer, attention), hidden) if attention else None
    mlp_out = _find_out_projection(getattr(layer, mlp), hidden) if mlp else None
    moe = mlp is not None and experts_of(getattr(layer, mlp), BackboneSpec.experts) is not None
    if attention and attn_out is None:
        missing.append(f"attention output projection (a Linear to width {hidden} inside '{attention}')")
    if mlp and mlp_out is None and not moe:
        missing.append(f"MLP output projection (a Linear to width {hidden} inside '{mlp}', or its experts)")
    if missing or attention is None or mlp is None or attn_out is None:
        return None, missing
    return BackboneSpec(attention=attention, mlp=mlp, mlp_out=mlp_out, attn_out=attn_out), []


@dataclass
class Adapter:
    """A model's parts, resolved once: decoder stack, layers, head, sites, image layout."""

    architecture: str
    backbone: str
    language_model: nn.Module
    layers: nn.ModuleList
    lm_head: nn.Module
    embed_tokens: nn.Embedding
    spec: BackboneSpec
    image_token_id: int
    patch_layout_fn: Callable[[PreTrainedModel, dict, int], PatchLayout]
    hidden_size: int
    paper_template: bool
    mrope: bool = False  # the decoder takes 3-D M-RoPE position ids (see LensModel.decoder_call)
    pattern: str | None = None  # the wrapper masks its decoder itself (see attention_pattern); None: causal
    position_offset: int = 0  # a 1-D decoder's first position id as the wrapper hands it (PaliGemma: 1)
    deepstack: bool = False  # the wrapper adds visual features after early layers (see models.deepstack)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def decoder_config(self) -> PretrainedConfig:
        """The decoder stack's config (the wrapper's ``text_config``)."""
        return cast(PretrainedConfig, self.language_model.config)

    def attention(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.spec.attention)

    def mlp(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.spec.mlp)

    def mlp_out(self, layer: int) -> nn.Linear:
        """The MLP output projection (``down_proj`` / ``fc2``): MultEdit's edited weight. Raises
        :class:`UnsupportedModelError` with :meth:`mlp_out_refusal`'s reason for a layer without one."""
        refusal = self.mlp_out_refusal(layer)
        if refusal is not None:
            raise UnsupportedModelError(refusal)
        return getattr(self.mlp(layer), cast(str, self.spec.mlp_out))

    def mlp_out_refusal(self, layer: int) -> str | None:
        """Why ``layer``'s MLP has no dense output projection to edit (a mixture-of-experts block, see
        :mod:`mllm_lens.models.moe`), None if it has one. The ``mlp`` site is traced either way."""
        mlp = self.mlp(layer)
        if self.spec.mlp_out is not None and isinstance(getattr(mlp, self.spec.mlp_out, None), nn.Linear):
            return None
        return moe_refusal(mlp, layer, self.spec.experts) or (
            f"decoder layer {layer} has no MLP output projection '{self.spec.mlp}.{self.spec.mlp_out}' "
            "(an nn.Linear) to edit"
        )

    def attn_out(self, layer: int) -> nn.Linear:
        return getattr(self.attention(layer), self.spec.attn_out)

    def value_proj(self, layer: int) -> nn.Linear:
        """The attention's value projection (``v_proj``): ``[*, d] -> [*, kv_heads * head_dim]``."""
        module = getattr(self.attention(layer), self.spec.value, None)
        if not isinstance(module, nn.Linear):
            raise UnsupportedModelError(
                f"{self.backbone!r} attention has no value projection '{self.spec.value}' (a Linear); "
                "attention contributions need it"
            )
        return module

    def _stack_part(self, name: str, what: str) -> nn.Module:
        module = getattr(self.language_model, name, None)
        if not isinstance(module, nn.Module):
            raise UnsupportedModelError(f"{self.backbone!r} decoder stack has no {what} '{name}'")
        return module

    def final_norm(self) -> nn.Module:
        """The norm applied to the last layer's output before the LM head."""
        return self._stack_part(self.spec.final_norm, "final norm")

    def site_module(self, site: str, layer: int) -> nn.Module:
        """The module whose output is the site: layer output, MLP output, attention output."""
        if site == "hidden":
            return self.layers[layer]
        if site == "mlp":
            return self.mlp(layer)
        if site == "attn":
            return self.attention(layer)
        raise ValueError(f"unknown site {site!r}; expected one of {SITES}")

    def patch_layout(self, model: PreTrainedModel, model_inputs: dict, n_image_tokens: int) -> PatchLayout:
        return self.patch_layout_fn(model, model_inputs, n_image_tokens)


_DECODER_PATHS = ("model.language_model", "language_model", "model.text_model", "text_model", "model.decoder")


def _unmapped_parts(model: PreTrainedModel, hidden: int) -> list[str]:
    """What an architecture without a wrapper spec lacks, found by looking for LLaVA's parts."""
    stacks = (getattr(_get(model, p), "layers", None) for p in _DECODER_PATHS)
    layers = next((s for s in stacks if isinstance(s, nn.ModuleList)), None)
    if layers is None:
        return [f"decoder layers (no ModuleList 'layers' under {', '.join(_DECODER_PATHS)})"]
    _, missing = _introspect_backbone(layers[0], hidden)
    return missing


def resolve_adapter(model: PreTrainedModel) -> Adapter:
    """Map a loaded transformers model onto an :class:`Adapter`, or say what is missing."""
    config = model.config
    architecture = getattr(config, "model_type", "?")
    name = type(model).__name__
    text_config = getattr(config, "text_config", None)
    if getattr(config, "vision_config", None) is None or text_config is None:
        if architecture in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise UnsupportedModelError(
                f"{name} (model_type={architecture!r}) has no vision_config/text_config pair, so its decoder stack "
                "and vision tower cannot be told apart (decoder layers, image-token layout)"
            )
        raise NotMultimodalError(
            f"{name} (model_type={architecture!r}) is a text-only model: it has no "
            "vision_config/text_config. mllm_lens traces image-text-to-text models such as "
            "LlavaForConditionalGeneration."
        )
    refusal = decoder_call_refusal(model)
    wrapper = WRAPPERS.get(architecture)
    if wrapper is None:
        problems = [] if refusal is None else [refusal]
        problems += _unmapped_parts(model, text_config.hidden_size)
        problems.append(NO_LAYOUT.get(architecture, MISSING_LAYOUT))
        raise UnsupportedModelError(
            f"no adapter for the multimodal architecture {architecture!r} ({name}): " + "; ".join(problems)
        )
    if refusal is not None:
        raise UnsupportedModelError(f"{name} (model_type={architecture!r}): {refusal}")
    language_model = _get(model, wrapper.language_model)
    lm_head = _get(model, wrapper.lm_head)
    missing = []
    if language_model is None:
        missing.append(f"decoder stack at '{wrapper.language_model}'")
    if lm_head is None:
        missing.append(f"LM head at '{wrapper.lm_head}'")
    layers = getattr(language_model, "layers", None) if language_model is not None else None
    if language_model is not None and not isinstance(layers, nn.ModuleList):
        missing.append(f"decoder layers (a ModuleList 'layers' under '{wrapper.language_model}')")
    if missing or language_model is None or lm_head is None or not isinstance(layers, nn.ModuleList):
        raise UnsupportedModelError(f"{type(model).__name__}: cannot find " + "; ".join(missing))
    hidden = text_config.hidden_size
    backbone = text_config.model_type
    spec = BACKBONES.get(backbone)
    if spec is None:
        spec, missing = _introspect_backbone(layers[0], hidden)
        if spec is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} with text backbone {backbone!r}: cannot find " + "; ".join(missing)
            )
    for part in (spec.attention, spec.mlp):
        if not isinstance(getattr(layers[0], part, None), nn.Module):
            raise UnsupportedModelError(f"{backbone!r} decoder layer has no '{part}' module")
    for index, layer in enumerate(layers):  # each MLP is dense (its projection is found) or a routed block
        mlp = getattr(layer, spec.mlp)
        if not isinstance(getattr(mlp, spec.mlp_out or "", None), nn.Linear) and experts_of(mlp, spec.experts) is None:
            raise UnsupportedModelError(
                f"{backbone!r} MLP of decoder layer {index} has no output projection '{spec.mlp_out}' "
                "(an nn.Linear) and is not a mixture-of-experts block"
            )
    embed = _get(language_model, spec.embed)
    if not isinstance(embed, nn.Embedding):
        raise UnsupportedModelError(f"{backbone!r} decoder has no token embeddings '{spec.embed}'")
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:
        image_token_id = getattr(config, "image_token_index", None)
    if image_token_id is None:
        raise UnsupportedModelError(f"{type(model).__name__}: config has no image_token_id")
    return Adapter(
        architecture=architecture,
        backbone=backbone,
        language_model=language_model,
        layers=layers,
        lm_head=lm_head,
        embed_tokens=embed,
        spec=spec,
        image_token_id=int(image_token_id),
        patch_layout_fn=wrapper.patch_layout,
        hidden_size=hidden,
        paper_template=wrapper.paper_template and backbone == "llama",
        mrope=uses_mrope(model),
        pattern=PATTERN_REPLAYED.get(architecture),
        position_offset=POSITION_OFFSETS.get(architecture, 0),
        deepstack=uses_deepstack(model),
    )


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
