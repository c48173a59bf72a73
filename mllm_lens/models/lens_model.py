"""LensModel: a transformers model, its processor and its adapter, with the few calls the
tracer needs (decoder inputs, decoder logits on a cached prefix, target probabilities)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

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

    def decoder_inputs(self, model_inputs: dict) -> torch.Tensor:
        """The decoder's ``inputs_embeds`` (text embeddings with image features scattered in),
        exactly as the model builds them; the vision tower runs, the decoder does not."""
        captured: dict[str, torch.Tensor] = {}

        def grab(_module, _args, kwargs):
            captured["embeds"] = kwargs["inputs_embeds"].detach().clone()
            raise _Captured

        handle = self.adapter.language_model.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                self.hf_model(**model_inputs)
        except _Captured:
            pass
        finally:
            handle.remove()
        if "embeds" not in captured:
            raise RuntimeError("the model never called its decoder with inputs_embeds")
        return captured["embeds"]

    def decoder_logits(self, embeds: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position of ``embeds`` (after ``cache``)."""
        out = self.adapter.language_model(inputs_embeds=embeds, cache=cache, use_cache=cache is not None)
        return self.adapter.lm_head(out.last_hidden_state[:, -1]).float()

    def prefix_cache(self, embeds: torch.Tensor) -> DynamicCache:
        """The KV cache of ``embeds`` ``[1, p0, d]``, shared by every restoration run."""
        cache = DynamicCache(config=self.adapter.decoder_config)
        self.adapter.language_model(inputs_embeds=embeds, cache=cache, use_cache=True)
        return cache
