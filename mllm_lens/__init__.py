"""mllm_lens: where a multimodal LLM keeps a fact, and how the image gets there.

Causal tracing of multimodal LLMs after Basu et al., "Understanding Information Storage and
Transfer in Multi-modal Large Language Models" (NeurIPS 2024).
"""

from mllm_lens import editing
from mllm_lens.editing import Edit, EditReport, EditRequest, edit, edit_many, evaluate_edit
from mllm_lens.errors import (
    CorruptionError,
    EditError,
    FileFormatError,
    MissingExtraError,
    MissingFileError,
    MllmLensError,
    ModelLoadError,
    ModelNotFoundError,
    NotMultimodalError,
    OptionError,
    ProbeError,
    TraceConfigError,
    UnsupportedModelError,
)
from mllm_lens.experiments import RunSettings, open_run, run
from mllm_lens.models import LensModel, load
from mllm_lens.probe import Constraint, Probe, textual, visual
from mllm_lens.results import ContributionResult, PatchResult, TraceResult
from mllm_lens.tracing import (
    TraceSession,
    attention_contributions,
    flow_auroc,
    image_noise,
    knockout,
    knockout_test,
    noise,
    patch_sweep,
    replace,
    trace,
    trace_sites,
)

__version__ = "0.1.0"

__all__ = [
    "Edit",
    "EditError",
    "EditReport",
    "EditRequest",
    "edit",
    "edit_many",
    "editing",
    "evaluate_edit",
    "Constraint",
    "ContributionResult",
    "PatchResult",
    "attention_contributions",
    "flow_auroc",
    "knockout",
    "knockout_test",
    "patch_sweep",
    "CorruptionError",
    "FileFormatError",
    "LensModel",
    "MissingExtraError",
    "MissingFileError",
    "MllmLensError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotMultimodalError",
    "OptionError",
    "Probe",
    "ProbeError",
    "TraceConfigError",
    "TraceResult",
    "TraceSession",
    "UnsupportedModelError",
    "image_noise",
    "load",
    "noise",
    "replace",
    "run",
    "open_run",
    "RunSettings",
    "textual",
    "trace",
    "trace_sites",
    "visual",
]
