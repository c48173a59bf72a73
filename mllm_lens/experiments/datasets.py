"""Datasets a run walks: the demo world, VQA-Constraints CSVs, or any iterable of probes.

Each yields :class:`Example` items with a stable ``example_id`` (resuming a run skips the ids
already stored) and a ``load()`` that builds the :class:`~mllm_lens.Probe` only when the example
is computed. Rows that cannot become a probe (no image file, a constraint not in the question)
are listed in :attr:`Dataset.skipped` and end up in the run's report, never silently dropped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm_lens.data.records import VQARecord
from mllm_lens.errors import OptionError
from mllm_lens.probe import Probe

SPLITS = ("train", "held-out")


@dataclass
class Example:
    example_id: str
    load: Callable[[], Probe]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """Examples plus a description (which dataset: compared when a run resumes), the
    ``selection`` made from it (size, limit, shuffle: recorded, but a run may grow), and the
    rows left out."""

    description: dict[str, Any]
    examples: list[Example]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)

    def select(self, limit: int | None = None, shuffle: bool = False, seed: int = 0) -> Dataset:
        """The first ``limit`` examples, after a seeded shuffle if asked (a new Dataset)."""
        examples = list(self.examples)
        if shuffle:
            random.Random(seed).shuffle(examples)
        if limit is not None:
            examples = examples[:limit]
        selection = {**self.selection, "limit": limit, "shuffle": shuffle, "shuffle_seed": seed if shuffle else None}
        return Dataset(self.description, examples, self.skipped, selection)


def _record_example(example_id: str, record: VQARecord, with_answer: bool) -> Example:
    meta = {"question": record.question, "answer": record.answer, "subject": record.subject, **record.meta}
    meta = {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool) or v is None}
    return Example(example_id, lambda: record.probe(with_answer=with_answer), meta)


def demo_world(size: int | None = None, *, seed: int = 0, split: str = "train", with_answer: bool = True) -> Dataset:
    """Demo-world questions (every country x template x paraphrase, repeated with new renderings
    until ``size``), seeded; ``split``: the training countries or the held-out ones."""
    from mllm_lens.data import world

    if split not in SPLITS:
        raise OptionError(f"split must be one of {SPLITS}, got {split!r}")
    countries = world.training_countries() if split == "train" else list(world.HELD_OUT)
    per_round = len(world.generate(countries, render=False))
    rounds = 1 if size is None else max(1, -(-size // per_round))
    records = world.generate(countries, renderings=rounds, seed=seed, render=False)[:size]
    examples = [_record_example(f"world-{split}-{seed}-{i}", r, with_answer) for i, r in enumerate(records)]
    return Dataset({"name": "demo-world", "seed": seed, "split": split}, examples, selection={"size": size})


def vqa_constraints(csv_path: str | Path, image_dir: str | Path, *, with_answer: bool = True) -> Dataset:
    """A VQA-Constraints CSV with its images; rows without an image or with an unlocatable
    constraint go to ``skipped`` with the reason."""
    import warnings

    from mllm_lens.data.vqa_constraints import MissingImagesWarning, load_vqa_constraints

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingImagesWarning)  # reported in `skipped` instead
        data = load_vqa_constraints(csv_path, image_dir)
    skipped: list[dict[str, Any]] = [
        {"example_id": f"row-{index}", "reason": f"no image file for {url!r} under {image_dir}"}
        for index, url in data.missing_images
    ]
    examples = []
    for record in data.records:
        example_id = f"row-{record.index}"
        if not record.meta.get("locatable"):
            skipped.append(
                {
                    "example_id": example_id,
                    "reason": f"constraint {record.main_entity!r} not found in {record.question!r}",
                }
            )
        else:
            examples.append(_record_example(example_id, record, with_answer))
    description = {
        "name": Path(csv_path).name,
        "csv": str(Path(csv_path).resolve()),
        "images": str(Path(image_dir).resolve()),
    }
    return Dataset(description, examples, sorted(skipped, key=lambda s: int(s["example_id"].split("-")[1])))


def _constant(probe: Probe) -> Callable[[], Probe]:
    return lambda: probe


def from_probes(probes: Iterable[Probe], name: str = "probes") -> Dataset:
    """Any iterable of probes, numbered in order (``probe-0``, ``probe-1``, ...)."""
    examples = [
        Example(f"probe-{i}", _constant(probe), {"question": probe.question, "answer": probe.answer})
        for i, probe in enumerate(probes)
    ]
    return Dataset({"name": name}, examples, selection={"size": len(examples)})
