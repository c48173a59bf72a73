"""``mllm_lens.load``: the real ``from_pretrained`` path for a local folder or cache, offline.

Every argument is checked before a weight is read: the dtype and device first, then the folder
(it must exist and hold a config, weights and the processor's files), so a typo fails at once
with a message that names the path and what is accepted instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from mllm_lens.errors import (
    ModelLoadError,
    ModelNotFoundError,
    NotMultimodalError,
    OptionError,
    UnsupportedModelError,
)
from mllm_lens.models.lens_model import LensModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: A model folder needs one of each group (weights, tokenizer, image processor) besides config.json.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
OFFLINE_HINT = "mllm_lens loads local folders or the hub cache offline; pass local_files_only=False to download"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``None`` -> ``"auto"`` (the checkpoint's dtype); a name of :data:`DTYPES` or a torch dtype."""
    if dtype is None:
        return "auto"
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise OptionError(f"dtype {dtype} is not supported; use one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise OptionError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")
    return DTYPES[dtype]


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The device as a ``torch.device``, refused if this machine does not have it."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise OptionError(
                f"device {device!r} needs CUDA, but torch {torch.__version__} ({build}) finds no CUDA GPU "
                "on this machine; use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"device {device!r}: the MPS backend is not available on this machine; use device='cpu'")
    return dev


def _demo_path() -> Path:
    from mllm_lens.demo.build import MODEL_DIR

    if not (MODEL_DIR / "config.json").exists():
        raise ModelNotFoundError(
            f"the demo model is missing from {MODEL_DIR}; rebuild it with `python -m mllm_lens.demo.train`"
        )
    return MODEL_DIR


def _cached_snapshot(name: str) -> Path | None:
    """The hub-cache folder of repo ``name`` if it is cached (never downloads), else None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a repo id, not cached, no cache: all mean "not here"
        return None


def check_model_folder(folder: Path) -> None:
    """Refuse an empty folder, or one without ``config.json`` (what it holds is named)."""
    present = sorted(p.name for p in folder.iterdir())
    if not present:
        raise ModelLoadError(f"the model folder {folder} is empty; it needs config.json, weights and processor files")
    if "config.json" not in present:
        raise ModelLoadError(
            f"no config.json in {folder}: not a transformers model folder (it holds {', '.join(present[:8])})"
        )


def check_model_files(folder: Path) -> None:
    """Refuse a model folder without weights, a tokenizer or an image processor (the files are named)."""
    present = {p.name for p in folder.iterdir()}
    missing = [
        f"{what} ({' or '.join(names)})"
        for what, names in (
            ("weights", WEIGHT_FILES),
            ("a tokenizer", TOKENIZER_FILES),
            ("an image processor", IMAGE_PROCESSOR_FILES),
        )
        if not present.intersection(names)
    ]
    if missing:
        raise ModelLoadError(
            f"the model folder {folder} lacks {'; '.join(missing)}; save the model and its processor with "
            "save_pretrained() into the same folder"
        )


def model_folder(name_or_path: str | Path, *, local_files_only: bool = True) -> str:
    """Where ``name_or_path`` loads from: a checked local or cached folder, or (downloads allowed)
    a hub repo id. Raises before any weight is read."""
    name = str(name_or_path)
    if name == "demo":
        return str(_demo_path())
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelLoadError(f"{name} is a file; pass the folder that holds config.json, the weights and the processor")
    if path.is_dir():
        check_model_folder(path)
        return str(path)
    cached = _cached_snapshot(name)
    if cached is not None:
        check_model_folder(cached)
        return str(cached)
    if local_files_only:
        raise ModelNotFoundError(f"no model folder at {name} ({OFFLINE_HINT})")
    return name


def _config(source: str, local_files_only: bool):
    try:
        return AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"the config.json of {source} is not valid JSON ({err})") from err
    except ValueError as err:
        raise UnsupportedModelError(f"transformers cannot read the config of {source}: {err}") from err
    except OSError as err:
        raise ModelLoadError(f"cannot load the config of {source}: {err}") from err


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    local_files_only: bool = True,
) -> LensModel:
    """Load an image-text-to-text checkpoint (local folder or hub cache) as a :class:`LensModel`.

    ``"demo"`` loads the small flag-and-facts LLaVA shipped with the package (see
    :mod:`mllm_lens.demo`). ``dtype``: ``"float32"``, ``"float16"``, ``"bfloat16"`` or None
    (the checkpoint's). ``device``: e.g. ``"cpu"``, ``"cuda"`` (checked before loading).

    Uses transformers' ``AutoConfig``/``AutoModelForImageTextToText``/``AutoProcessor``, so any
    checkpoint in the llava-hf layout loads as it would in transformers. ``local_files_only``
    defaults to True: nothing is downloaded unless asked.
    """
    torch_dtype = resolve_dtype(dtype)
    check_device(device)
    source = model_folder(name_or_path, local_files_only=local_files_only)
    config = _config(source, local_files_only)
    if getattr(config, "vision_config", None) is None:
        raise NotMultimodalError(
            f"{source} is a text-only model (model_type={config.model_type!r}, no vision_config); "
            "mllm_lens needs an image-text-to-text model such as LLaVA-1.5"
        )
    if Path(source).is_dir():
        check_model_files(Path(source))
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the processor of {source}: {err}") from err
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype, local_files_only=local_files_only
        )
    except ValueError as err:
        raise UnsupportedModelError(
            f"transformers has no image-text-to-text class for {source} (model_type={config.model_type!r}): {err}"
        ) from err
    except OSError as err:
        raise ModelLoadError(f"cannot load the weights of {source}: {err}") from err
    if device is not None:
        nn.Module.to(model, device)
    return LensModel.wrap(model, processor, name=source if str(name_or_path) == "demo" else str(name_or_path))
