"""Editing facts in a multimodal LLM: MultEdit, fine-tuning baselines, metrics, reversible handles.

MultEdit is the closed-form editing method of Basu et al. (NeurIPS 2024), after ROME (Meng et
al., 2022) and MEMIT (Meng et al., 2023). See :mod:`mllm_lens.editing.multedit`.
"""

from mllm_lens.editing.handle import Edit
from mllm_lens.editing.metrics import EditReport, ProbeSet, evaluate_edit, specificity_set
from mllm_lens.editing.multedit import (
    DEFAULT_CLAMP,
    DEFAULT_LAMBDA,
    METHODS,
    EditIneffectiveWarning,
    causal_layer,
    edit,
    edit_many,
    multi_key_update,
    rank_one_update,
)
from mllm_lens.editing.requests import EditRequest, world_request

__all__ = [
    "DEFAULT_CLAMP",
    "DEFAULT_LAMBDA",
    "METHODS",
    "Edit",
    "EditIneffectiveWarning",
    "EditReport",
    "EditRequest",
    "ProbeSet",
    "causal_layer",
    "edit",
    "edit_many",
    "evaluate_edit",
    "multi_key_update",
    "rank_one_update",
    "specificity_set",
    "world_request",
]
