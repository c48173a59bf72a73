"""Probes: a visual question, its constraints, and where each constraint sits in the prompt.

A constraint is a phrase of the question. A *visual* constraint refers to the image ("this
country", "the place in this photo"); a *textual* one is stated in words ("won a Golden
Globe"). Tracing corrupts constraints, so each must be located as a token span of the model's
prompt: :meth:`Probe.encode` applies the prompt template, runs the model's processor, and maps
the phrase's characters onto tokens through the tokenizer's offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """A phrase of the question, marked visual or textual.

    ``occurrence`` (0-based) picks one occurrence of a phrase that the question holds more than
    once; without it such a phrase is refused, with its positions named.
    """

    text: str
    kind: Kind = "visual"
    occurrence: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ProbeError(f"a constraint phrase must be a non-empty string, got {self.text!r}")
        if self.kind not in ("visual", "textual"):
            raise ProbeError(f"constraint kind must be 'visual' or 'textual', got {self.kind!r}")
        if self.occurrence is not None and (
            isinstance(self.occurrence, bool) or not isinstance(self.occurrence, int) or self.occurrence < 0
        ):
            raise ProbeError(
                f"occurrence of constraint {self.text!r} must be None or an int >= 0 (0 = the first), "
                f"got {self.occurrence!r}"
            )


def visual(text: str, occurrence: int | None = None) -> Constraint:
    """A constraint that refers to the image, such as ``"this country"``."""
    return Constraint(text, "visual", occurrence)


def textual(text: str, occurrence: int | None = None) -> Constraint:
    """A constraint stated in words, such as ``"Golden Globe"``."""
    return Constraint(text, "textual", occurrence)


ConstraintLike = Constraint | str | tuple[str, str]


def _as_constraint(item: ConstraintLike) -> Constraint:
    if isinstance(item, Constraint):
        return item
    if isinstance(item, str):
        return Constraint(item, "visual")
    if isinstance(item, tuple) and len(item) == 2:
        text, kind = item
        return Constraint(text, kind)  # type: ignore[arg-type]  # kind is checked by Constraint
    raise ProbeError(
        f"a constraint must be a Constraint (ml.visual/ml.textual), a phrase or a (phrase, kind) pair, got {item!r}"
    )


@dataclass(init=False)
class Probe:
    """A visual question with its constraints and (optionally) the answer to trace.

    ``constraints`` may be given as :class:`Constraint` objects, phrases (visual) or
    ``(phrase, kind)`` pairs; they are kept as :class:`Constraint` objects. ``template``
    overrides the model's prompt template; it must contain ``{question}`` and the processor's
    image token (``<image>``). Without ``answer`` the traced target is the clean run's top-1
    next token.
    """

    image: Image.Image
    question: str
    constraints: list[Constraint]
    answer: str | None
    template: str | None

    def __init__(
        self,
        image: Image.Image,
        question: str,
        constraints: Sequence[ConstraintLike] = (),
        answer: str | None = None,
        template: str | None = None,
    ) -> None:
        if not isinstance(image, Image.Image):
            raise ProbeError(f"image must be a PIL.Image, got {type(image).__name__}")
        if not isinstance(question, str):
            raise ProbeError(f"the question must be a string, got {type(question).__name__} {question!r}")
        if not question.strip():
            raise ProbeError("the question is empty")
        if isinstance(constraints, (str, Constraint)):
            constraints = [constraints]
        self.image, self.question, self.answer, self.template = image, question, answer, template
        self.constraints = [_as_constraint(c) for c in constraints]
        texts = [c.text for c in self.constraints]
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise ProbeError(
                f"constraint {repeated[0]!r} is given {texts.count(repeated[0])} times; a phrase can be only one "
                "constraint of a probe (results are keyed by the phrase)"
            )
        if answer is not None and not isinstance(answer, str):
            raise ProbeError(f"the answer must be a string or None, got {type(answer).__name__} {answer!r}")
        if answer is not None and not answer.strip():
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


def phrase_offsets(phrase: str, question: str) -> list[int]:
    """Character offsets of every (non-overlapping) occurrence of ``phrase`` in ``question``:
    the exact matches, else the case-insensitive ones."""
    for haystack, needle in ((question, phrase), (question.lower(), phrase.lower())):
        offsets, at = [], haystack.find(needle)
        while at >= 0:
            offsets.append(at)
            at = haystack.find(needle, at + len(needle))
        if offsets:
            return offsets
    return []


def find_phrase(phrase: str, question: str, occurrence: int | None = None) -> int:
    """Character offset of ``phrase`` in ``question`` (see :func:`phrase_offsets`): its
    ``occurrence`` (0-based), or without one its first exact match, else its case-insensitive
    match if unique; -1 if there is none."""
    offsets = phrase_offsets(phrase, question)
    if occurrence is not None:
        return offsets[occurrence] if occurrence < len(offsets) else -1
    if not offsets or (len(offsets) > 1 and question.find(phrase) < 0):
        return -1
    return offsets[0]


def locate_constraint(constraint: Constraint, question: str, where: Callable[[int], str] | None = None) -> int:
    """Character offset of ``constraint`` in ``question``; a :class:`ProbeError` if it is absent,
    occurs more than once without an ``occurrence``, or has no such occurrence. ``where(offset)``
    may describe an occurrence further (its token positions) in that error."""
    offsets = phrase_offsets(constraint.text, question)
    name = f"constraint {constraint.text!r} ({constraint.kind})"
    if not offsets:
        raise ProbeError(f"{name} is not in the question {question!r}")
    if constraint.occurrence is None:
        if len(offsets) > 1:
            found = " and ".join(_occurrence(question, at, len(constraint.text), where) for at in offsets)
            raise ProbeError(
                f"{name} occurs {len(offsets)} times in the question {question!r}, at {found}; pick one with "
                f"occurrence=0..{len(offsets) - 1}, e.g. ml.{constraint.kind}({constraint.text!r}, occurrence=1)"
            )
        return offsets[0]
    if constraint.occurrence >= len(offsets):
        raise ProbeError(
            f"{name} has occurrence={constraint.occurrence}, but the question {question!r} holds it "
            f"{len(offsets)} time(s): use occurrence=0..{len(offsets) - 1}"
        )
    return offsets[constraint.occurrence]


def _occurrence(text: str, at: int, length: int, where: Callable[[int], str] | None, margin: int = 8) -> str:
    """``character 12 (…before[phrase]after…, tokens 40..41)``: where one occurrence sits."""
    head = ("…" if at > margin else "") + text[max(0, at - margin) : at]
    tail = text[at + length : at + length + margin] + ("…" if at + length + margin < len(text) else "")
    extra = "" if where is None else f", {where(at)}"
    return f"character {at} ({head}[{text[at : at + length]}]{tail}{extra})"


def _tokenized_view(tokens: list[str], image_span: tuple[int, int] | None = None) -> str:
    """``i:'token'`` for each token, the image's run of tokens collapsed to one ``<image>×n`` item."""
    start, end = image_span if image_span is not None else (0, 0)
    items = []
    for i, token in enumerate(tokens):
        if start <= i < end:
            if i == start:
                items.append(f"{start}-{end - 1}:{token}×{end - start}")
            continue
        items.append(f"{i}:{token!r}")
    return " ".join(items)


def image_expansion(
    ids: list[int], plain_ids: list[int], image_id: int, placeholder_id: int | None = None
) -> tuple[int, int]:
    """``(start, end)`` of the tokens that the processor put in place of the image placeholder.

    ``plain_ids`` is the unexpanded prompt, holding the placeholder once (the image token, or
    ``placeholder_id`` where the processor's placeholder is another token, as Gemma 3's
    ``<start_of_image>``); ``ids`` is the processor's. The run may hold marker tokens beside the
    image tokens (LLaVA-NeXT's newlines, Pixtral's row breaks, Idefics3's tile markers, Gemma 3's
    image begin and end): the whole run is the image's span.
    """
    holders = [i for i, t in enumerate(plain_ids) if t in (image_id, placeholder_id)]
    if len(holders) > 1:
        raise ProbeError("the prompt holds more than one image; mllm_lens traces one image per probe")
    start = holders[0] if holders else -1
    end = start + len(ids) - len(plain_ids) + 1
    if start < 0 or end <= start or ids[:start] != plain_ids[:start] or ids[end:] != plain_ids[start + 1 :]:
        raise ProbeError(
            "the tokenizer and the processor disagree on the prompt's tokens, so constraint spans "
            f"cannot be located: processor {ids}, tokenizer {plain_ids}"
        )
    return start, end


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
    if not bool((ids == image_id).any()):
        raise ProbeError(f"the processor put no image token (id {image_id}) into the prompt {prompt!r}")
    # Tokenize the unexpanded prompt with offsets: the processor's ids are these with the one
    # image placeholder expanded into the image's run of tokens, marker tokens included.
    plain = tokenizer(prompt, return_offsets_mapping=True)
    plain_ids = plain["input_ids"]
    placeholder = tokenizer.convert_tokens_to_ids(image_token)  # Gemma 3's <start_of_image>, not its image token
    placeholder = None if placeholder == tokenizer.unk_token_id else placeholder
    start, end = image_expansion(ids.tolist(), plain_ids, image_id, placeholder)
    n_img = end - start

    def expanded(i: int) -> int:
        return i if i <= start else i + n_img - 1

    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    view = _tokenized_view(tokens, (start, end))

    def token_span(at: int, length: int) -> list[int]:
        a, b = q_offset + at, q_offset + at + length
        return [i for i, (s, e) in enumerate(plain["offset_mapping"]) if e > s and s < b and e > a]

    def describe(length: int) -> Callable[[int], str]:
        def where(at: int) -> str:
            hit = token_span(at, length)
            return f"tokens {expanded(hit[0])}..{expanded(hit[-1])}" if hit else "no token"

        return where

    spans: dict[str, tuple[int, int]] = {}
    for constraint in probe.constraints:
        try:
            at = locate_constraint(constraint, question, describe(len(constraint.text)))
        except ProbeError as err:
            raise ProbeError(f"{err}. Tokenized prompt: {view}") from None
        hit = token_span(at, len(constraint.text))
        if not hit:
            raise ProbeError(f"constraint {constraint.text!r} maps to no token of the prompt. Tokenized prompt: {view}")
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
        answer_ids = answer_token_ids(model, prompt, probe.answer)
        encoded.target_id = answer_ids[0]
        if len(answer_ids) > 1:
            pieces = tokenizer.convert_ids_to_tokens(answer_ids)
            encoded.meta["notes"] = [
                f"the answer {probe.answer!r} is {len(answer_ids)} tokens {pieces}; the trace follows its first "
                f"token {pieces[0]!r} only"
            ]
    return encoded


def answer_token_ids(model: LensModel, prompt: str, answer: str) -> list[int]:
    """The tokens of ``answer`` as it would follow the prompt (at least one)."""
    tokenizer = model.tokenizer
    if not isinstance(answer, str) or not answer.strip():
        raise ProbeError(f"the answer must be a non-empty string, got {answer!r}")
    base = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + " " + answer.strip())["input_ids"]
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    tokens = [t for t in full[len(base) :] if t not in special]
    if full[: len(base)] != base or not tokens:
        tokens = tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ProbeError(f"the answer {answer!r} tokenizes to nothing")
    if tokens[0] == tokenizer.unk_token_id:
        raise ProbeError(
            f"the answer {answer!r} starts with a token unknown to the tokenizer ({tokenizer.unk_token!r})"
        )
    return [int(t) for t in tokens]


def answer_token_id(model: LensModel, prompt: str, answer: str) -> int:
    """The first token of ``answer`` as it would follow the prompt."""
    return answer_token_ids(model, prompt, answer)[0]
