"""LensModel: a transformers model, its processor and its adapter, with the few calls the
tracer needs (the decoder call's inputs, positions, attention pattern and DeepStack additions;
decoder logits on a cached prefix)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache, PreTrainedModel

from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.adapters import Adapter, model_dtype, resolve_adapter
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack


class _Captured(Exception):
    """Raised inside a pre-hook to stop a forward once the decoder inputs are known."""


class DecoderCall(NamedTuple):
    """What the wrapper hands its decoder stack for one prompt: ``embeds [1, T, d]``, an M-RoPE
    decoder's position ids ``[3, 1, T]`` (None: 1-D), the attention pattern of a wrapper that
    masks its decoder itself (None: causal) and the DeepStack additions of a wrapper that adds
    visual features after early layers (None: the image enters through ``embeds`` only)."""

    embeds: torch.Tensor
    positions: torch.Tensor | None
    pattern: AttentionPattern | None
    deepstack: DeepStack | None = None


@dataclass
class LensModel:
    """What mllm_lens works on: ``hf_model`` (a transformers image-text-to-text model),
    ``processor`` and the resolved :class:`~mllm_lens.models.adapters.Adapter`."""

    hf_model: PreTrainedModel
    processor: Any  # a transformers ProcessorMixin: tokenizer + image processor
    adapter: Adapter
    name: str = ""

    @classmethod
    def wrap(cls, hf_model: PreTrainedModel, processor: Any, name: str = "") -> LensModel:
        """Wrap an in-memory model (the adapter raises if it cannot map it)."""
        hf_model.eval()
        return cls(hf_model=hf_model, processor=processor, adapter=resolve_adapter(hf_model), name=name)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return model_dtype(self.hf_model)

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def decoder_call(self, model_inputs: dict) -> DecoderCall:
        """The decoder's ``inputs_embeds`` ``[1, T, d]`` (text embeddings with image features
        scattered in), for an M-RoPE decoder the position ids ``[3, 1, T]`` (temporal, height, width)
        the wrapper computed from the image grid, and for a wrapper that masks its decoder itself the
        :class:`~mllm_lens.models.attention_pattern.AttentionPattern`, for a DeepStack wrapper the
        :class:`~mllm_lens.models.deepstack.DeepStack` additions, exactly as the model builds them;
        the vision tower runs, the decoder does not."""
        captured: dict[str, Any] = {}

        def grab(_module, _args, kwargs):
            captured["embeds"] = kwargs["inputs_embeds"].detach().clone()
            positions = kwargs.get("position_ids")
            captured["positions"] = None if positions is None else positions.detach().clone()
            captured["mask"] = kwargs.get("attention_mask")
            captured["deepstack"] = (kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds"))
            raise _Captured

        handle = self.adapter.language_model.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                self.hf_model(**model_inputs)
        except _Captured:
            pass
        finally:
            handle.remove()
        embeds = captured.get("embeds")
        if embeds is None:
            raise RuntimeError("the model never called its decoder with inputs_embeds")
        return DecoderCall(
            embeds,
            self._positions(captured["positions"], embeds),
            self._pattern(captured["mask"], embeds),
            self._deepstack(captured["deepstack"][0], captured["deepstack"][1], embeds),
        )

    def _deepstack(self, mask: torch.Tensor | None, features: list | None, embeds: torch.Tensor) -> DeepStack | None:
        """The DeepStack additions as the wrapper handed them (none: an image-less prompt); refused for
        a wrapper whose additions the fast paths do not replay."""
        if not self.adapter.deepstack:
            if features:
                raise UnsupportedModelError(
                    f"{self.adapter.architecture}: the wrapper hands its decoder DeepStack features, which the "
                    "fast paths do not replay for this type"
                )
            return None
        if mask is None or not features:
            return DeepStack(torch.empty(0, dtype=torch.long), ())
        if mask.shape != (1, embeds.shape[1]) or any(f.shape != (int(mask.sum()), embeds.shape[2]) for f in features):
            raise UnsupportedModelError(
                f"{self.adapter.architecture}: DeepStack features of shapes {[tuple(f.shape) for f in features]} at "
                f"a mask of shape {tuple(mask.shape)} do not match the decoder inputs {tuple(embeds.shape)}"
            )
        return DeepStack.from_wrapper(mask, features)

    def _positions(self, positions: torch.Tensor | None, embeds: torch.Tensor) -> torch.Tensor | None:
        """M-RoPE ids as the wrapper handed them; None for a 1-D decoder, once the ids the wrapper handed
        it (if any) are checked to be the ones every decoder call replays (``offset .. offset + T - 1``)."""
        if not self.adapter.mrope:
            expected = self._default_positions(0, embeds.shape[1], embeds.device)[0]
            if positions is not None and not torch.equal(positions.reshape(-1), expected):
                raise UnsupportedModelError(
                    f"{self.adapter.architecture}: the wrapper handed its decoder 1-D position ids "
                    f"{positions.flatten()[:4].tolist()}..., not {self.adapter.position_offset}.."
                    f"{self.adapter.position_offset + embeds.shape[1] - 1}; the fast paths cannot replay them"
                )
            return None
        if positions is None or positions.shape != (3, 1, embeds.shape[1]):
            shape = None if positions is None else tuple(positions.shape)
            raise UnsupportedModelError(
                f"{self.adapter.architecture}: the wrapper handed its M-RoPE decoder position ids of shape {shape}, "
                f"not (3, 1, {embeds.shape[1]}) (temporal, height, width); the fast paths cannot replay them"
            )
        return positions

    def _pattern(self, mask: object, embeds: torch.Tensor) -> AttentionPattern | None:
        if self.adapter.pattern is None:
            return None
        config = self.adapter.decoder_config
        layer_types = getattr(config, "layer_types", None)
        kind = self.adapter.pattern
        if layer_types and "sliding_attention" in layer_types:
            kind += f", sliding window {config.sliding_window}"
        return AttentionPattern.from_wrapper_mask(kind, mask, embeds.shape[1], layer_types, self.num_layers)

    def decoder_inputs(self, model_inputs: dict) -> torch.Tensor:
        """The decoder's ``inputs_embeds`` ``[1, T, d]`` (see :meth:`decoder_call`)."""
        return self.decoder_call(model_inputs)[0]

    def decoder_positions(self, model_inputs: dict) -> torch.Tensor | None:
        """M-RoPE position ids ``[3, 1, T]`` of a prompt, None for a 1-D decoder (no forward then)."""
        return self.decoder_call(model_inputs)[1] if self.adapter.mrope else None

    def decoder(
        self,
        embeds: torch.Tensor,
        cache: DynamicCache | None = None,
        positions: torch.Tensor | None = None,
        pattern: AttentionPattern | None = None,
        deepstack: DeepStack | None = None,
    ) -> Any:
        """The decoder stack's output on ``embeds [B, S, d]`` after ``cache``.

        ``positions`` (``[3, 1 or B, S]``, the slice of :meth:`decoder_call`'s ids that ``embeds``
        covers) is required by an M-RoPE decoder, whose default ids (``0..S-1`` after the cache in
        all three axes) would silently misplace the image; a 1-D decoder takes none. ``pattern`` (the
        whole run's, from :meth:`decoder_call`) is required by a decoder its wrapper masks itself,
        whose own default mask (causal) would silently drop the image block; ``embeds`` are its
        positions ``[cache length, cache length + S)``. ``deepstack`` (the whole run's, from
        :meth:`decoder_call`) is required by a DeepStack decoder, whose image would otherwise enter
        through ``embeds`` only; its additions at the positions ``embeds`` cover are replayed after
        their layers (see :mod:`mllm_lens.models.deepstack`)."""
        if self.adapter.mrope:
            if positions is None:
                raise UnsupportedModelError(
                    f"{self.adapter.architecture}'s decoder takes M-RoPE position ids: pass the slice of "
                    "LensModel.decoder_call's positions that the embeddings cover"
                )
            if positions.shape[-1] != embeds.shape[1] or positions.shape[1] not in (1, embeds.shape[0]):
                raise ValueError(f"positions {tuple(positions.shape)} do not cover embeddings {tuple(embeds.shape)}")
            positions = positions.expand(-1, embeds.shape[0], -1)
        elif positions is not None:
            raise ValueError("a 1-D decoder takes its default positions; pass positions=None")
        start = 0 if cache is None else cache.get_seq_length()
        if not self.adapter.mrope and self.adapter.position_offset:
            positions = self._default_positions(start, embeds.shape[1], embeds.device)
        mask = None
        if self.adapter.pattern is not None:
            if pattern is None:
                raise UnsupportedModelError(
                    f"{self.adapter.architecture}'s decoder is masked by its wrapper ({self.adapter.pattern}): pass "
                    "LensModel.decoder_call's attention pattern (this analysis does not replay it yet)"
                )
            mask = pattern.decoder_mask(start, start + embeds.shape[1], embeds.dtype, embeds.device)
        elif pattern is not None:
            raise ValueError(f"{self.adapter.architecture}'s decoder is causal; pass pattern=None")
        with self.replaying(deepstack, start):
            return self.adapter.language_model(
                inputs_embeds=embeds,
                position_ids=positions,
                attention_mask=mask,
                cache=cache,
                use_cache=cache is not None,
            )

    def replaying(self, deepstack: DeepStack | None, start: int) -> AbstractContextManager:
        """Replay ``deepstack``'s additions on decoder-layer calls whose queries start at ``start``;
        refuses a missing one for a DeepStack decoder and a stray one for any other."""
        if not self.adapter.deepstack:
            if deepstack is not None:
                raise ValueError(
                    f"{self.adapter.architecture}'s decoder adds no DeepStack features; pass deepstack=None"
                )
            return nullcontext()
        if deepstack is None:
            raise UnsupportedModelError(
                f"{self.adapter.architecture}'s decoder adds DeepStack features after its first layers: pass "
                "LensModel.decoder_call's deepstack (this analysis does not replay it yet)"
            )
        return deepstack.replayed(self.adapter.layers, start)

    def _default_positions(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        """1-D ids ``[1, length]`` of positions ``[start, start + length)`` as the wrapper numbers them."""
        return torch.arange(start, start + length, device=device)[None] + self.adapter.position_offset

    def decoder_logits(
        self,
        embeds: torch.Tensor,
        cache: DynamicCache | None = None,
        positions: torch.Tensor | None = None,
        pattern: AttentionPattern | None = None,
        deepstack: DeepStack | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position of ``embeds`` (after ``cache``)."""
        out = self.decoder(embeds, cache, positions, pattern, deepstack)
        return self.adapter.lm_head(out.last_hidden_state[:, -1]).float()

    def new_cache(self) -> DynamicCache:
        """An empty KV cache that keeps every position's keys: a sliding-window layer's own cache
        would drop keys that the explicit masks of restarted runs still index."""
        return DynamicCache()

    def prefix_cache(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor | None = None,
        pattern: AttentionPattern | None = None,
        deepstack: DeepStack | None = None,
    ) -> DynamicCache:
        """The KV cache of ``embeds`` ``[1, p0, d]``, shared by every restoration run."""
        cache = self.new_cache()
        self.decoder(embeds, cache, positions, pattern, deepstack)
        return cache
