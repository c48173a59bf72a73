"""VQA-Constraints records: one visual question with its annotated constraints.

The fields follow the released VQA-Constraints annotations (Basu et al., NeurIPS 2024):
``question``, ``main_entity`` (the visual-constraint phrase, e.g. "this director"),
``subject`` (the hidden entity the image shows), plus ``answer`` and
``textual_constraints`` where known. Both the demo world and the CSV loader yield these, and
:meth:`VQARecord.probe` turns one into a :class:`~mllm_lens.probe.Probe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from mllm_lens.probe import Constraint, Probe


@dataclass
class VQARecord:
    """One annotated visual question. ``image`` may be None (annotations only)."""

    question: str
    main_entity: str
    subject: str
    image: Image.Image | None = None
    answer: str | None = None
    textual_constraints: list[str] = field(default_factory=list)
    source: str = ""
    index: int | None = None
    image_path: str | None = None
    meta: dict = field(default_factory=dict)
    image_loader: Callable[[], Image.Image] | None = field(default=None, repr=False)

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint(self.main_entity, "visual"), *(Constraint(t, "textual") for t in self.textual_constraints)]

    def load_image(self) -> Image.Image:
        """The record's image (rendered or read lazily on first use)."""
        if self.image is None and self.image_loader is not None:
            self.image = self.image_loader()
        if self.image is None:
            raise ValueError(f"record {self.index} ({self.question!r}) has no image")
        return self.image

    def probe(self, *, template: str | None = None, with_answer: bool = True) -> Probe:
        """A :class:`Probe` for this record (the image is loaded if it is not yet)."""
        return Probe(
            self.load_image(),
            self.question,
            self.constraints,
            answer=self.answer if with_answer else None,
            template=template,
        )
