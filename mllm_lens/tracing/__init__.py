"""Causal tracing: corruptions, the batched executor, traces and the reference oracle."""

from mllm_lens.tracing.attention import attention_contributions
from mllm_lens.tracing.corruption import ConstraintNoise, ImageNoise, Replace, image_noise, noise, replace
from mllm_lens.tracing.executor import Cell, RestorationExecutor
from mllm_lens.tracing.flow import FlowReport, auroc, flow_auroc
from mllm_lens.tracing.knockout import KnockoutResult, KnockoutTest, knockout, knockout_test
from mllm_lens.tracing.partial import PartialDecoder
from mllm_lens.tracing.patches import patch_sweep
from mllm_lens.tracing.session import CellOutcome, TraceSession
from mllm_lens.tracing.trace import CorruptionIneffectiveWarning, trace, trace_sites
from mllm_lens.tracing.windows import WINDOW_MODES, window_layers

__all__ = [
    "WINDOW_MODES",
    "Cell",
    "CellOutcome",
    "ConstraintNoise",
    "CorruptionIneffectiveWarning",
    "FlowReport",
    "ImageNoise",
    "KnockoutResult",
    "KnockoutTest",
    "PartialDecoder",
    "Replace",
    "RestorationExecutor",
    "TraceSession",
    "attention_contributions",
    "auroc",
    "flow_auroc",
    "image_noise",
    "knockout",
    "knockout_test",
    "noise",
    "patch_sweep",
    "replace",
    "trace",
    "trace_sites",
    "window_layers",
]
