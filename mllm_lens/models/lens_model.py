"""LensModel: a transformers model, its processor and its adapter, with the few calls the
tracer needs (decoder inputs and positions, decoder logits on a cached prefix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from mllm_lens.errors import UnsupportedModelError
from mllm_lens.models.adapters import Adapter, model_dtype, resolve_adapter


class _Captured(Exception):
    """Raised inside a pre-hook to stop a forward once the decoder inputs are known."""


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

    def decoder_call(self, model_inputs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The decoder's ``inputs_embeds`` ``[1, T, d]`` (text embeddings with image features
        scattered in) and, for an M-RoPE decoder, the position ids ``[3, 1, T]`` (temporal, height,
        width) the wrapper computed from the image grid (None for 1-D positions), exactly as the
        model builds them; the vision tower runs, the decoder does not."""
        captured: dict[str, torch.Tensor | None] = {}

        def grab(_module, _args, kwargs):
            captured["embeds"] = kwargs["inputs_embeds"].detach().clone()
            positions = kwargs.get("position_ids")
            captured["positions"] = None if positions is None else positions.detach().clone()
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
        if not self.adapter.mrope:
            return embeds, None
        positions = captured["positions"]
        if positions is None or positions.shape != (3, 1, embeds.shape[1]):
            shape = None if positions is None else tuple(positions.shape)
            raise UnsupportedModelError(
                f"{self.adapter.architecture}: the wrapper handed its M-RoPE decoder position ids of shape {shape}, "
                f"not (3, 1, {embeds.shape[1]}) (temporal, height, width); the fast paths cannot replay them"
            )
        return embeds, positions

    def decoder_inputs(self, model_inputs: dict) -> torch.Tensor:
        """The decoder's ``inputs_embeds`` ``[1, T, d]`` (see :meth:`decoder_call`)."""
        return self.decoder_call(model_inputs)[0]

    def decoder_positions(self, model_inputs: dict) -> torch.Tensor | None:
        """M-RoPE position ids ``[3, 1, T]`` of a prompt, None for a 1-D decoder (no forward then)."""
        return self.decoder_call(model_inputs)[1] if self.adapter.mrope else None

    def decoder(
        self, embeds: torch.Tensor, cache: DynamicCache | None = None, positions: torch.Tensor | None = None
    ) -> Any:
        """The decoder stack's output on ``embeds [B, S, d]`` after ``cache``.

        ``positions`` (``[3, 1 or B, S]``, the slice of :meth:`decoder_call`'s ids that ``embeds``
        covers) is required by an M-RoPE decoder, whose default ids (``0..S-1`` after the cache in
        all three axes) would silently misplace the image; a 1-D decoder takes none."""
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
        return self.adapter.language_model(
            inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=cache is not None
        )

    def decoder_logits(
        self, embeds: torch.Tensor, cache: DynamicCache | None = None, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position of ``embeds`` (after ``cache``)."""
        out = self.decoder(embeds, cache, positions)
        return self.adapter.lm_head(out.last_hidden_state[:, -1]).float()

    def prefix_cache(self, embeds: torch.Tensor, positions: torch.Tensor | None = None) -> DynamicCache:
        """The KV cache of ``embeds`` ``[1, p0, d]``, shared by every restoration run."""
        cache = DynamicCache(config=self.adapter.decoder_config)
        self.decoder(embeds, cache, positions)
        return cache
