"""A fingerprint of a model's weights: keys the key-statistics cache and a run's manifest."""

from __future__ import annotations

import hashlib

import torch

from mllm_lens.models.lens_model import LensModel

#: Elements sampled (evenly strided) from each parameter.
SAMPLES = 4096


@torch.no_grad()
def weights_fingerprint(model: LensModel) -> str:
    """A hash of every parameter's name, shape, dtype and the raw bytes of an evenly strided
    sample of its values: exact bytes (no float sums, whose rounding depends on the thread
    count), cheap on a 7B model, and changed by any edit or fine-tune (they move whole rows)."""
    digest = hashlib.sha256()
    for name, param in model.hf_model.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLES)].contiguous().cpu()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}:".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]
