"""mllm_lens: where a multimodal LLM keeps a fact, and how the image gets there.

Causal tracing of multimodal LLMs after Basu et al., "Understanding Information Storage and
Transfer in Multi-modal Large Language Models" (NeurIPS 2024).
"""

from mllm_lens.errors import (
    CorruptionError,
    MllmLensError,
    NotMultimodalError,
    ProbeError,
    TraceConfigError,
    UnsupportedModelError,
)
from mllm_lens.models import LensModel, load
from mllm_lens.probe import Constraint, Probe, textual, visual
from mllm_lens.results import TraceResult
from mllm_lens.tracing import image_noise, noise, replace, trace, trace_sites

__version__ = "0.1.0"

__all__ = [
    "Constraint",
    "CorruptionError",
    "LensModel",
    "MllmLensError",
    "NotMultimodalError",
    "Probe",
    "ProbeError",
    "TraceConfigError",
    "TraceResult",
    "UnsupportedModelError",
    "image_noise",
    "load",
    "noise",
    "replace",
    "textual",
    "trace",
    "trace_sites",
    "visual",
]
