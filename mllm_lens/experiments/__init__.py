"""Dataset-scale experiments: :func:`run` over a dataset into a crash-safe store,
:func:`open_run` to read it, aggregates and an HTML report (``mllm-lens run`` / ``summarize``)."""

from mllm_lens.experiments.datasets import Dataset, Example, demo_world, from_probes, vqa_constraints
from mllm_lens.experiments.results import Run, open_run
from mllm_lens.experiments.runner import run, shutdown_ray
from mllm_lens.experiments.settings import RunSettings

__all__ = [
    "Dataset",
    "Example",
    "Run",
    "RunSettings",
    "demo_world",
    "from_probes",
    "open_run",
    "run",
    "shutdown_ray",
    "vqa_constraints",
]
