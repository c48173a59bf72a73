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


class EditError(MllmLensError, ValueError):
    """An edit cannot be made as asked (answer already given, no constraint, layer out of range, ...)."""


class OptionError(MllmLensError, ValueError):
    """An option's value is not accepted (an unknown dtype, a device this machine lacks, an unknown
    demo country, a layer outside the model, ...); the message names what is accepted instead."""


class MissingFileError(MllmLensError, FileNotFoundError):
    """A file or folder given as input does not exist (an image, a result file, a CSV, a model)."""


class FileFormatError(MllmLensError, ValueError):
    """A file exists but does not hold what was expected (a truncated or foreign result file, a
    binary file given as a CSV, a file that is no image); the message names the path."""


class VQAConstraintsFormatError(FileFormatError):
    """A VQA-Constraints CSV is malformed (the message names the file, the line and the fault)."""


class ModelLoadError(MllmLensError, OSError):
    """A model cannot be loaded: an empty folder, missing processor files, an unreadable config."""


class ModelNotFoundError(ModelLoadError, MissingFileError):
    """No model folder at the path given, and no such model in the hub cache."""


class MissingExtraError(MllmLensError, ImportError):
    """An optional feature needs an extra that is not installed (the message gives the pip command)."""
