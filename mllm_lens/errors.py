"""Errors mllm_lens raises: each names exactly what was wrong with the input."""

from __future__ import annotations


class MllmLensError(Exception):
    """Base class of every error raised on purpose by mllm_lens."""


class UnsupportedModelError(MllmLensError):
    """The architecture adapter cannot map a part of the model (the message names the part)."""


class NotMultimodalError(UnsupportedModelError):
    """A text-only model was passed where an image-text-to-text model is needed."""


class ProbeError(MllmLensError, ValueError):
    """A probe cannot be applied: a constraint not in the question, an empty answer, ..."""


class CorruptionError(MllmLensError, ValueError):
    """A corruption cannot be applied as asked (token counts differ, identical phrase, ...)."""


class TraceConfigError(MllmLensError, ValueError):
    """Inconsistent trace settings (window larger than the model, unknown site, ...)."""


class VQAConstraintsFormatError(MllmLensError, ValueError):
    """A VQA-Constraints CSV is malformed (the message names the file, the line and the fault)."""


class EditError(MllmLensError, ValueError):
    """An edit cannot be made as asked (answer already given, no constraint, layer out of range, ...)."""
