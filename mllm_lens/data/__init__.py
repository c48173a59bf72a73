"""Datasets of annotated visual questions, as :class:`VQARecord` objects."""

# One import per line (easy to extend without merge conflicts), hence the isort exemption.
from mllm_lens.data.records import VQARecord  # noqa: I001
from mllm_lens.data.vqa_constraints import MissingImagesWarning
from mllm_lens.data.vqa_constraints import VQAConstraintsDataset
from mllm_lens.data.vqa_constraints import load_vqa_constraints

__all__ = ["MissingImagesWarning", "VQAConstraintsDataset", "VQARecord", "load_vqa_constraints"]
