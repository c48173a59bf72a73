"""Probes: a visual question, its constraints, and where each constraint sits in the prompt.

A constraint is a phrase of the question. A *visual* constraint refers to the image ("this
country", "the place in this photo"); a *textual* one is stated in words ("won a Golden
Globe"). Tracing corrupts constraints, so each must be located as a token span of the model's
prompt: :meth:`Probe.encode` applies the prompt template, runs the model's processor, and maps
the phrase's characters onto tokens through the tokenizer's offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image

from mllm_lens.errors import ProbeError

if TYPE_CHECKING:
    from mllm_lens.models.lens_model import LensModel

Kind = Literal["visual", "textual"]

#: The prompt of the paper's released code for LLaVA-1.5 (see shared PAPER.md).
PAPER_TEMPLATE = "<image>\nUSER: {question}? Answer in a few words.\nASSISTANT:"
#: Used when neither the adapter nor the processor provides a template.
GENERIC_TEMPLATE = "<image>\nUSER: {question}\nASSISTANT:"


@dataclass(frozen=True)
class Constraint:
    """A phrase of the question, marked visual or textual."""

    text: str
    kind: Kind = "visual"

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ProbeError("a constraint phrase cannot be empty")
        if self.kind not in ("visual", "textual"):
            raise ProbeError(f"constraint kind must be 'visual' or 'textual', got {self.kind!r}")


def visual(text: str) -> Constraint:
    """A constraint that refers to the image, such as ``"this country"``."""
    return Constraint(text, "visual")


def textual(text: str) -> Constraint:
    """A constraint stated in words, such as ``"Golden Globe"``."""
    return Constraint(text, "textual")


def _as_constraint(item: Constraint | str | tuple[str, str]) -> Constraint:
    if isinstance(item, Constraint):
        return item
    if isinstance(item, str):
        return Constraint(item, "visual")
    text, kind = item
    return Constraint(text, kind)  # type: ignore[arg-type]


@dataclass
class Probe:
    """A visual question with its constraints and (optionally) the answer to trace.

    ``template`` overrides the model's prompt template; it must contain ``{question}`` and the
    processor's image token (``<image>``). Without ``answer`` the traced target is the clean
    run's top-1 next token.
    """

    image: Image.Image
    question: str
    constraints: Sequence[Constraint | str | tuple[str, str]] = ()
    answer: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image.Image):
            raise ProbeError(f"image must be a PIL.Image, got {type(self.image).__name__}")
        if not self.question.strip():
            raise ProbeError("the question is empty")
        self.constraints = [_as_constraint(c) for c in self.constraints]
        if self.answer is not None and not self.answer.strip():
            raise ProbeError("the answer is empty: pass answer=None to trace the model's own top-1 token")

    def constraint(self, text: str | None = None) -> Constraint:
        """The constraint with this text (default: the first visual, else the first)."""
        if not self.constraints:
            raise ProbeError(f"the probe {self.question!r} has no constraints")
        if text is None:
            return next((c for c in self.constraints if c.kind == "visual"), self.constraints[0])
        for c in self.constraints:
            if c.text == text:
                return c
        known = ", ".join(repr(c.text) for c in self.constraints)
        raise ProbeError(f"no constraint {text!r} in this probe (it has {known})")

    def encode(self, model: LensModel) -> EncodedProbe:
        """Apply the template, run the processor, and locate constraints as token spans."""
        return encode_probe(self, model)


@dataclass
class EncodedProbe:
    """A probe as the model sees it. Spans are ``(start, end)`` token positions, end exclusive."""

    probe: Probe
    prompt: str
    model_inputs: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    tokens: list[str]
    labels: list[str]
    spans: dict[str, tuple[int, int]]
    image_span: tuple[int, int]
    patch_layout: Any
    target_id: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    def span(self, constraint: str) -> tuple[int, int]:
        return self.spans[constraint]


def _default_template(model: LensModel) -> str:
    if model.adapter.paper_template:
        return PAPER_TEMPLATE
    processor = model.processor
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{question}"}]}]
        rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return rendered.replace("{", "{{").replace("}", "}}").replace("{{question}}", "{question}")
    return GENERIC_TEMPLATE


def _format_prompt(template: str, question: str, image_token: str) -> tuple[str, int, str]:
    """Return (prompt, offset of the question in it, question as inserted)."""
    if "{question}" not in template:
        raise ProbeError(f"template {template!r} has no '{{question}}' field")
    if image_token not in template:
        raise ProbeError(f"template {template!r} has no image token {image_token!r}")
    q = question.strip()
    if "{question}?" in template:
        q = q.rstrip("?").rstrip()
    head = template.split("{question}")[0].format()
    return template.format(question=q), len(head), q


def find_phrase(phrase: str, question: str) -> int:
    """Character offset of ``phrase`` in ``question``: exact, else case-insensitive if unique; -1 if absent."""
    at = question.find(phrase)
    if at >= 0:
        return at
    lowered = question.lower()
    at = lowered.find(phrase.lower())
    if at >= 0 and lowered.count(phrase.lower()) == 1:
        return at
    return -1


def _tokenized_view(tokens: list[str]) -> str:
    return " ".join(f"{i}:{t!r}" for i, t in enumerate(tokens))


def encode_probe(probe: Probe, model: LensModel) -> EncodedProbe:
    processor = model.processor
    tokenizer = model.tokenizer
    image_token = getattr(processor, "image_token", "<image>")
    template = probe.template or _default_template(model)
    if image_token in probe.question:
        raise ProbeError(
            f"the question {probe.question!r} contains the image token {image_token!r}; the template places the image"
        )
    for constraint in probe.constraints:
        if image_token in constraint.text:
            raise ProbeError(f"constraint {constraint.text!r} spans the image placeholder {image_token!r}")
    prompt, q_offset, question = _format_prompt(template, probe.question, image_token)
    image = probe.image if probe.image.mode == "RGB" else probe.image.convert("RGB")
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    ids = inputs["input_ids"][0]
    image_id = model.adapter.image_token_id
    image_positions = (ids == image_id).nonzero().flatten()
    if image_positions.numel() == 0:
        raise ProbeError(f"the processor put no image token (id {image_id}) into the prompt {prompt!r}")
    start, end = int(image_positions[0]), int(image_positions[-1]) + 1
    if end - start != image_positions.numel():
        raise ProbeError("the prompt holds more than one image; mllm_lens traces one image per probe")

    # Tokenize the unexpanded prompt with offsets; it must equal the processor's ids with the
    # image run collapsed to one token.
    plain = tokenizer(prompt, return_offsets_mapping=True)
    plain_ids = plain["input_ids"]
    collapsed = ids[:start].tolist() + [image_id] + ids[end:].tolist()
    if plain_ids != collapsed:
        raise ProbeError(
            "the tokenizer and the processor disagree on the prompt's tokens, so constraint spans "
            f"cannot be located: processor {collapsed}, tokenizer {plain_ids}"
        )
    n_img = end - start

    def expanded(i: int) -> int:
        return i if i <= start else i + n_img - 1

    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    spans: dict[str, tuple[int, int]] = {}
    for constraint in probe.constraints:
        at = find_phrase(constraint.text, question)
        if at < 0:
            raise ProbeError(
                f"constraint {constraint.text!r} ({constraint.kind}) is not in the question {question!r}. "
                f"Tokenized prompt: {_tokenized_view(tokens)}"
            )
        a, b = q_offset + at, q_offset + at + len(constraint.text)
        hit = [i for i, (s, e) in enumerate(plain["offset_mapping"]) if e > s and s < b and e > a]
        if not hit:
            raise ProbeError(
                f"constraint {constraint.text!r} maps to no token of the prompt. "
                f"Tokenized prompt: {_tokenized_view(tokens)}"
            )
        if any(plain_ids[i] == image_id for i in hit):
            raise ProbeError(f"constraint {constraint.text!r} spans the image placeholder {image_token!r}")
        spans[constraint.text] = (expanded(hit[0]), expanded(hit[-1]) + 1)

    layout = model.adapter.patch_layout(model.hf_model, inputs, n_img)
    labels = list(tokens)
    labels[start:end] = layout.labels
    model_inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    if "pixel_values" in model_inputs and model_inputs["pixel_values"].is_floating_point():
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(model.dtype)
    encoded = EncodedProbe(
        probe=probe,
        prompt=prompt,
        model_inputs=model_inputs,
        input_ids=ids,
        tokens=tokens,
        labels=labels,
        spans=spans,
        image_span=(start, end),
        patch_layout=layout,
    )
    if probe.answer is not None:
        encoded.target_id = answer_token_id(model, prompt, probe.answer)
    return encoded


def answer_token_id(model: LensModel, prompt: str, answer: str) -> int:
    """The first token of ``answer`` as it would follow the prompt."""
    tokenizer = model.tokenizer
    base = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + " " + answer.strip())["input_ids"]
    if full[: len(base)] == base and len(full) > len(base):
        token = full[len(base)]
    else:
        alone = tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
        if not alone:
            raise ProbeError(f"the answer {answer!r} tokenizes to nothing")
        token = alone[0]
    if token == tokenizer.unk_token_id:
        raise ProbeError(
            f"the answer {answer!r} starts with a token unknown to the tokenizer ({tokenizer.unk_token!r})"
        )
    return int(token)
