"""Causal tracing: corruptions, the batched executor, traces and the reference oracle."""

from mllm_lens.tracing.corruption import ConstraintNoise, ImageNoise, Replace, image_noise, noise, replace
from mllm_lens.tracing.executor import Cell, RestorationExecutor
from mllm_lens.tracing.trace import CorruptionIneffectiveWarning, trace, trace_sites
from mllm_lens.tracing.windows import WINDOW_MODES, window_layers

__all__ = [
    "WINDOW_MODES",
    "Cell",
    "ConstraintNoise",
    "CorruptionIneffectiveWarning",
    "ImageNoise",
    "Replace",
    "RestorationExecutor",
    "image_noise",
    "noise",
    "replace",
    "trace",
    "trace_sites",
    "window_layers",
]
