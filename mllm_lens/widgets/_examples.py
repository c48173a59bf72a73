"""What the Explorer works on: examples, uploaded images, and constraints marked on question tokens.

A question is shown as token chips (:func:`question_tokens`: each chip is the question's text
under one token, with its character offsets). The browser marks contiguous runs of chips as
visual or textual constraints; :func:`marks_to_constraints` turns those token spans back into
the phrases a :class:`~mllm_lens.Probe` takes, and :func:`constraint_marks` goes the other way
for an example's own constraints.
"""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeGuard

from PIL import Image

from mllm_lens.data.records import VQARecord
from mllm_lens.probe import Constraint, Probe, find_phrase, phrase_offsets
from mllm_lens.widgets._base import MessageError
from mllm_lens.widgets._errors import scrub

KINDS = ("visual", "textual")
MAX_UPLOAD_PIXELS = 40_000_000  # refuse decompression bombs before decoding
#: (country, template) pairs of the default examples: one question of each kind on the demo world.
DEFAULT_EXAMPLES = (
    ("Brazil", "capital"),
    ("Japan", "in_continent"),
    ("France", "currency"),
    ("Egypt", "country"),
    ("Canada", "language"),
    ("Thailand", "continent"),
    ("Germany", "uses_currency"),
)


@dataclass
class Example:
    """One pickable question: image, question, constraints, and the expected answer if known."""

    label: str
    image: Image.Image | None
    question: str
    constraints: list[Constraint]
    expected: str | None = None
    template: str | None = None
    record: VQARecord | None = None

    def load_image(self) -> Image.Image:
        if self.image is None and self.record is not None:
            self.image = self.record.load_image()
        if self.image is None:
            raise MessageError(f"example {self.label!r} has no image")
        return self.image


def as_example(item: VQARecord | Probe) -> Example:
    """An :class:`Example` from a dataset record (image loaded lazily) or a probe."""
    if isinstance(item, VQARecord):
        label = f"{item.subject}: {item.question}" if item.subject else item.question
        return Example(label, item.image, item.question, item.constraints, item.answer, record=item)
    if isinstance(item, Probe):
        constraints = list(item.constraints)  # normalised to Constraint by the Probe
        return Example(item.question, item.image, item.question, constraints, item.answer, item.template)
    raise TypeError(f"an example must be a VQARecord or a Probe, got {type(item).__name__}")


def default_examples(seed: int = 0) -> list[Example]:
    """A handful of demo-world questions (one per template), rendered deterministically."""
    from mllm_lens.data import world

    rng = random.Random(seed)
    return [as_example(world.make_record(c, world.template(t), 0, rng)) for c, t in DEFAULT_EXAMPLES]


def decode_image(data: bytes) -> Image.Image:
    """An uploaded file's bytes as an RGB image; a clear :class:`MessageError` if they are not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                size = f"{image.width} × {image.height} pixels, at most {MAX_UPLOAD_PIXELS:,} in all"
                raise MessageError(f"the image is too large ({size})")
            image.load()
    except MessageError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad bytes
        details = scrub(f"PIL {type(err).__name__}: {err}")
        raise MessageError("cannot read the uploaded file as an image (PNG, JPEG, GIF, WebP, ...)", details) from None
    return image.convert("RGB")


def question_tokens(tokenizer, question: str) -> list[dict]:
    """``[{"text", "start", "end"}]``: the question's text under each token (character offsets)."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    chips: list[dict] = []
    for start, end in enc["offset_mapping"]:
        while start < end and question[start].isspace():  # some tokenizers count the leading space
            start += 1
        if end <= start or (chips and start < chips[-1]["end"]):  # empty, or bytes of the previous chip
            continue
        chips.append({"text": question[start:end], "start": int(start), "end": int(end)})
    return chips


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_marks(raw: object, n_tokens: int) -> list[dict]:
    """Validate ``[{"start", "end", "kind"}]`` token spans from the browser (end exclusive, disjoint)."""
    if not isinstance(raw, list) or len(raw) > n_tokens:
        raise MessageError(f"spans must be a list of at most {n_tokens} {{start, end, kind}} objects")
    marks: list[dict] = []
    taken: set[int] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise MessageError(f"a span must be an object {{start, end, kind}}, got {item!r}")
        start, end, kind = item.get("start"), item.get("end"), item.get("kind")
        if not (_is_int(start) and _is_int(end)):
            raise MessageError(f"span start and end must be integers, got {start!r}, {end!r}")
        if not 0 <= start < end <= n_tokens:
            raise MessageError(f"span [{start}, {end}) out of range for {n_tokens} tokens")
        if kind not in KINDS:
            raise MessageError(f"span kind must be one of {KINDS}, got {kind!r}")
        if taken & set(range(start, end)):
            raise MessageError(f"span [{start}, {end}) overlaps another span")
        taken |= set(range(start, end))
        marks.append({"start": start, "end": end, "kind": kind})
    return sorted(marks, key=lambda m: m["start"])


def marks_to_constraints(question: str, tokens: Sequence[dict], marks: Sequence[dict]) -> list[Constraint]:
    """The phrase under each marked token span, as a constraint of its kind.

    A phrase the question holds more than once gets the ``occurrence`` of the marked span, so
    the probe corrupts and traces the marked one.
    """
    constraints = []
    for mark in marks:
        start, end = tokens[mark["start"]]["start"], tokens[mark["end"] - 1]["end"]
        phrase = question[start:end]
        offsets = phrase_offsets(phrase, question)
        if start not in offsets:
            raise MessageError(f"{phrase!r} cannot be located at character {start} of the question")
        occurrence = offsets.index(start) if len(offsets) > 1 else None
        constraints.append(Constraint(phrase, mark["kind"], occurrence))
    return constraints


def constraint_marks(question: str, tokens: Sequence[dict], constraints: Sequence[Constraint]) -> list[dict]:
    """Token spans of ``constraints`` in ``question`` (phrases not found, or overlapping, are left out)."""
    marks: list[dict] = []
    taken: set[int] = set()
    for constraint in constraints:
        at = find_phrase(constraint.text, question, constraint.occurrence)
        if at < 0:
            continue
        stop = at + len(constraint.text)
        hit = [i for i, tok in enumerate(tokens) if tok["start"] < stop and tok["end"] > at]
        if hit and not taken & set(hit):
            taken |= set(hit)
            marks.append({"start": hit[0], "end": hit[-1] + 1, "kind": constraint.kind})
    return sorted(marks, key=lambda m: m["start"])
