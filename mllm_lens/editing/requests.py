"""Edit requests: which question, which new answer, and where the edit's key is read.

A request names a probe (image + question with a visual constraint) and the new answer. As in
MultEdit (Basu et al., NeurIPS 2024) the key is read at the *last token of the visual
constraint* ("this country" -> "country"), the position where causal traces show early MLPs
storing what the image contributes. Encoding a request checks everything that can be checked
before any weight is touched, and raises :class:`~mllm_lens.errors.EditError` naming the fault.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from mllm_lens.errors import EditError, ProbeError
from mllm_lens.models.attention_pattern import AttentionPattern
from mllm_lens.models.deepstack import DeepStack
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import EncodedProbe, Probe, answer_token_id

KEY_TOKENS = ("constraint", "last")


@dataclass
class EditRequest:
    """Make ``probe``'s question answered by ``new_answer``.

    ``constraint`` picks the constraint whose last token gives the key (default: the first
    visual one). ``key_token="last"`` reads the key at the prompt's last token instead (where
    a model that reads the image straight from the answer position keeps the fact; see
    benchmarks/RESULTS.md). ``subject``/``template``/``paraphrase`` are optional demo-world metadata that
    :func:`~mllm_lens.editing.evaluate_edit` uses to build paraphrases and other renderings.
    """

    probe: Probe
    new_answer: str
    constraint: str | None = None
    key_token: str = "constraint"
    subject: str | None = None
    template: str | None = None
    paraphrase: int = 0
    meta: dict = field(default_factory=dict)

    def describe(self) -> str:
        who = f"{self.subject}: " if self.subject else ""
        return f"{who}{self.probe.question!r} -> {self.new_answer!r}"


@dataclass
class EncodedRequest:
    """A request as the model sees it: encoded probe, key position, token ids, decoder inputs."""

    request: EditRequest
    encoded: EncodedProbe
    position: int
    target_id: int
    old_id: int
    embeds: torch.Tensor  # [1, T, d] decoder inputs of the clean run
    position_ids: torch.Tensor | None = None  # [3, 1, T] an M-RoPE decoder's ids (None: 1-D)
    pattern: AttentionPattern | None = None  # a self-masking wrapper's attention pattern (None: causal)
    deepstack: DeepStack | None = None  # a DeepStack wrapper's additions after early layers (None: none)

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


def world_request(country: str, template: str, new_answer: str, *, paraphrase: int = 0, seed: int = 0) -> EditRequest:
    """A request on the demo world: ``template``'s ``paraphrase`` about ``country``'s flag."""
    from mllm_lens.data import world

    record = world.make_record(country, world.template(template), paraphrase, random.Random(seed))
    return EditRequest(
        record.probe(with_answer=False), new_answer, subject=country, template=template, paraphrase=paraphrase
    )


def as_requests(requests: EditRequest | Iterable[EditRequest]) -> list[EditRequest]:
    items = [requests] if isinstance(requests, EditRequest) else list(requests)
    if not items:
        raise EditError("no edit requests given")
    for item in items:
        if not isinstance(item, EditRequest):
            raise EditError(f"expected EditRequest, got {type(item).__name__}")
    return items


def key_position(encoded: EncodedProbe, constraint: str | None = None) -> int:
    """Last token of the chosen constraint (default: the first visual constraint)."""
    probe = encoded.probe
    if constraint is None:
        visual = [c for c in probe.constraints if c.kind == "visual"]
        if not visual:
            raise EditError(
                f"the probe {probe.question!r} has no visual constraint: MultEdit reads its key at the last token "
                "of the visual constraint (pass constraint=... to use another phrase)"
            )
        constraint = visual[0].text
    if constraint not in encoded.spans:
        known = ", ".join(repr(c) for c in encoded.spans) or "none"
        raise EditError(f"no constraint {constraint!r} in the probe {probe.question!r} (it has {known})")
    return encoded.spans[constraint][1] - 1


@torch.no_grad()
def encode_request(model: LensModel, request: EditRequest, *, allow_same: bool = False) -> EncodedRequest:
    """Encode ``request`` and check it (see the module docstring)."""
    if not request.new_answer or not request.new_answer.strip():
        raise EditError("the new answer is empty")
    if request.constraint is not None and all(c.text != request.constraint for c in request.probe.constraints):
        known = ", ".join(repr(c.text) for c in request.probe.constraints) or "none"
        raise EditError(
            f"no constraint {request.constraint!r} in the probe {request.probe.question!r} (it has {known})"
        )
    try:
        encoded = request.probe.encode(model)
        target_id = answer_token_id(model, encoded.prompt, request.new_answer)
    except ProbeError as err:
        raise EditError(f"cannot edit {request.describe()}: {err}") from err
    if request.key_token not in KEY_TOKENS:
        raise EditError(f"key_token must be one of {KEY_TOKENS}, got {request.key_token!r}")
    position = key_position(encoded, request.constraint)  # checks the constraint in both cases
    if request.key_token == "last":
        position = encoded.length - 1
    embeds, position_ids, pattern, deepstack = model.decoder_call(encoded.model_inputs)
    old_id = int(model.decoder_logits(embeds, positions=position_ids, pattern=pattern, deepstack=deepstack)[0].argmax())
    if old_id == target_id and not allow_same:
        token = model.tokenizer.convert_ids_to_tokens(target_id)
        raise EditError(
            f"the model already answers {token!r} to {request.probe.question!r}: nothing to edit "
            f"(new answer {request.new_answer!r})"
        )
    return EncodedRequest(request, encoded, position, target_id, old_id, embeds, position_ids, pattern, deepstack)


def encode_requests(model: LensModel, requests: Sequence[EditRequest]) -> list[EncodedRequest]:
    return [encode_request(model, r) for r in requests]


def batch_inputs(
    items: Sequence[EncodedRequest], rows: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor | None, AttentionPattern | None, DeepStack | None]:
    """Decoder inputs ``[B, T, d]`` of requests of one :func:`length_groups` group, their M-RoPE ids
    ``[3, B, T]`` (None for a 1-D decoder: requests of one length may still hold images of other
    grids), their shared attention pattern (None: causal) and their DeepStack additions, one per row
    (None: none)."""
    embeds = torch.cat([items[i].embeds for i in rows])
    ids = [items[i].position_ids for i in rows]
    stacks = [items[i].deepstack for i in rows]
    return (
        embeds,
        None if ids[0] is None else torch.cat([i for i in ids if i is not None], dim=1),
        items[rows[0]].pattern,
        None if stacks[0] is None else DeepStack.stack([s for s in stacks if s is not None]),
    )


def length_groups(items: Sequence[EncodedRequest]) -> list[list[int]]:
    """Indices of ``items`` grouped by prompt length, attention pattern and DeepStack positions (one
    batch per group, no padding, one mask and one set of added positions for all its rows)."""
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        key = (
            item.length,
            None if item.pattern is None else item.pattern.signature(),
            None if item.deepstack is None else item.deepstack.signature(),
        )
        groups.setdefault(key, []).append(i)
    return list(groups.values())
