"""Loading and architecture adapters."""

from mllm_lens.models.adapters import SITES, Adapter, resolve_adapter
from mllm_lens.models.layouts import PatchLayout
from mllm_lens.models.lens_model import LensModel
from mllm_lens.models.loading import load

__all__ = ["SITES", "Adapter", "LensModel", "PatchLayout", "load", "resolve_adapter"]
