"""``mllm_lens.load``: the real ``from_pretrained`` path for a local folder or cache, offline."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from mllm_lens.errors import NotMultimodalError, UnsupportedModelError
from mllm_lens.models.lens_model import LensModel

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None:
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def _demo_path() -> Path:
    from mllm_lens.demo.build import MODEL_DIR

    if not (MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(
            f"the demo model is missing from {MODEL_DIR}; rebuild it with `python -m mllm_lens.demo.train`"
        )
    return MODEL_DIR


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    local_files_only: bool = True,
) -> LensModel:
    """Load an image-text-to-text checkpoint (local folder or hub cache) as a :class:`LensModel`.

    ``"demo"`` loads the small flag-and-facts LLaVA shipped with the package (see
    :mod:`mllm_lens.demo`).

    Uses transformers' ``AutoConfig``/``AutoModelForImageTextToText``/``AutoProcessor``, so any
    checkpoint in the llava-hf layout loads as it would in transformers. ``local_files_only``
    defaults to True: nothing is downloaded unless asked.
    """
    source = str(name_or_path)
    if source == "demo":
        source = str(_demo_path())
    config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    if getattr(config, "vision_config", None) is None:
        raise NotMultimodalError(
            f"{source} is a text-only model (model_type={config.model_type!r}, no vision_config); "
            "mllm_lens needs an image-text-to-text model such as LLaVA-1.5"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=_resolve_dtype(dtype), local_files_only=local_files_only
        )
    except ValueError as err:
        raise UnsupportedModelError(
            f"transformers has no image-text-to-text class for {source} (model_type={config.model_type!r}): {err}"
        ) from err
    processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
    if device is not None:
        model.to(device)
    return LensModel.wrap(model, processor, name=source)
