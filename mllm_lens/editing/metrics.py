"""Edit metrics: efficacy, generalisation, specificity, and whether the causal trace moves.

The measures of the paper's MultEdit evaluation (Basu et al., NeurIPS 2024; as in ROME and
MEMIT, Meng et al. 2022/2023), each as a mean probability of the new answer's first token and
as exact match of the greedy first token:

* **efficacy** -- the edited question itself (same image);
* **generalisation** -- the *other paraphrases* of the edited template, and *other renderings*
  of the same flag (fresh images of the same entity) -- built with the demo world's
  :func:`~mllm_lens.data.world.make_record`, so they need the request's ``subject``/``template``;
* **specificity** -- accuracy against the ground truth on unrelated questions (other entities,
  every template), before vs after, and its drop in accuracy points; plus the edited
  entities' *other* relations (``locality``);
* **trace** -- the MLP causal trace of the first request before and after the edit: its peak
  (layer, token) and the most causal layer at the key token.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mllm_lens.data import world
from mllm_lens.editing.handle import Edit
from mllm_lens.editing.multedit import edit_many
from mllm_lens.editing.requests import EditRequest, as_requests, key_position
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe, answer_token_id

EVAL_SEED = 4321  # renderings never used by the demo model's training (seed 0) or evaluation (1234)
Case = tuple[Probe, str]  # probe and the answer counted as right


class ProbeSet:
    """Probes with expected answers, encoded once and run in same-shape batches."""

    def __init__(self, cases: Iterable[Case], batch_size: int = 64) -> None:
        self.cases = list(cases)
        self.batch_size = batch_size
        self._batches: list[tuple[list[int], dict, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.cases)

    def _encode(self, model: LensModel) -> list[tuple[list[int], dict, torch.Tensor]]:
        groups: dict[tuple, list[tuple[int, dict, int]]] = {}
        for i, (probe, answer) in enumerate(self.cases):
            enc = probe.encode(model)
            inputs = {k: v for k, v in enc.model_inputs.items() if torch.is_tensor(v)}
            shape = tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items()))
            groups.setdefault(shape, []).append((i, inputs, answer_token_id(model, enc.prompt, answer)))
        batches = []
        for members in groups.values():
            for at in range(0, len(members), self.batch_size):
                chunk = members[at : at + self.batch_size]
                inputs = {k: torch.cat([m[1][k] for m in chunk]) for k in chunk[0][1]}
                batches.append(([m[0] for m in chunk], inputs, torch.tensor([m[2] for m in chunk])))
        return batches

    @torch.no_grad()
    def run(self, model: LensModel) -> tuple[np.ndarray, np.ndarray]:
        """(probability of the expected answer, greedy first token == expected) per case."""
        if self._batches is None:
            self._batches = self._encode(model)
        probs, exact = np.zeros(len(self.cases)), np.zeros(len(self.cases), dtype=bool)
        for index, inputs, answers in self._batches:
            logits = model.hf_model(**inputs).logits[:, -1].float()
            answers = answers.to(logits.device)
            p = torch.softmax(logits, -1).gather(1, answers[:, None])[:, 0]
            probs[index] = p.cpu().numpy()
            exact[index] = (logits.argmax(-1) == answers).cpu().numpy()
        return probs, exact


def specificity_set(exclude: Sequence[str] = (), *, n: int | None = None, seed: int = EVAL_SEED) -> ProbeSet:
    """Unrelated questions: training countries other than ``exclude``, every template, first
    paraphrase, ground-truth answers (``n`` picks a deterministic sample)."""
    rng = random.Random(seed)
    countries = [c for c in world.training_countries() if c not in set(exclude)]
    records = [world.make_record(c, t, 0, rng) for c in countries for t in world.TEMPLATES]
    if n is not None and n < len(records):
        records = random.Random(seed + 1).sample(records, n)
    return ProbeSet((r.probe(with_answer=False), r.answer or "") for r in records)


def _generalisation_sets(requests: Sequence[EditRequest], renderings: int, seed: int) -> tuple[ProbeSet, ProbeSet]:
    rng = random.Random(seed)
    paraphrases, images = [], []
    for req in requests:
        if req.subject is None or req.template is None:
            continue
        template = world.template(req.template)
        for p in range(len(template.paraphrases)):
            if p != req.paraphrase:
                paraphrases.append((world.make_record(req.subject, template, p, rng).probe(with_answer=False), req))
        for _ in range(renderings):
            images.append((world.make_record(req.subject, template, req.paraphrase, rng).probe(with_answer=False), req))
    return (ProbeSet((p, r.new_answer) for p, r in paraphrases), ProbeSet((p, r.new_answer) for p, r in images))


def _locality_set(requests: Sequence[EditRequest], seed: int) -> ProbeSet:
    rng = random.Random(seed + 2)
    return ProbeSet(
        (record.probe(with_answer=False), record.answer or "")
        for req in requests
        if req.subject is not None and req.subject in world.FACTS
        for t in world.TEMPLATES
        if t.name != req.template
        for record in [world.make_record(req.subject, t, 0, rng)]
    )


@dataclass
class EditReport:
    """Before/after measures of one edit (see the module docstring). Probabilities in [0, 1],
    accuracies in [0, 1], ``specificity_drop`` in accuracy points (before − after, ×100)."""

    method: str
    site: str
    layers: list[int]
    n_edits: int
    efficacy: float
    efficacy_exact: float
    efficacy_before: float
    paraphrase: float | None = None
    paraphrase_exact: float | None = None
    rendering: float | None = None
    rendering_exact: float | None = None
    specificity_before: float = float("nan")
    specificity_after: float = float("nan")
    n_specificity: int = 0
    locality_before: float | None = None
    locality_after: float | None = None
    trace: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)

    @property
    def generalisation(self) -> float | None:
        parts = [x for x in (self.paraphrase, self.rendering) if x is not None]
        return float(np.mean(parts)) if parts else None

    @property
    def generalisation_exact(self) -> float | None:
        parts = [x for x in (self.paraphrase_exact, self.rendering_exact) if x is not None]
        return float(np.mean(parts)) if parts else None

    @property
    def specificity_drop(self) -> float:
        return 100.0 * (self.specificity_before - self.specificity_after)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(
            generalisation=self.generalisation,
            generalisation_exact=self.generalisation_exact,
            specificity_drop=self.specificity_drop,
        )
        return out

    def table(self) -> str:
        def f(x) -> str:
            return "-" if x is None else f"{x:.3f}"

        lines = [
            f"{self.method} edit: {self.n_edits} request(s), site {self.site}, layers {self.layers}",
            f"{'measure':<34}{'before':>10}{'after':>10}",
            f"{'efficacy  p(new answer)':<34}{f(self.efficacy_before):>10}{f(self.efficacy):>10}",
            f"{'efficacy  exact match':<34}{'':>10}{f(self.efficacy_exact):>10}",
            f"{'paraphrases  p / exact':<34}{'':>10}{f(self.paraphrase):>10}  / {f(self.paraphrase_exact)}",
            f"{'other renderings  p / exact':<34}{'':>10}{f(self.rendering):>10}  / {f(self.rendering_exact)}",
            f"{'generalisation  p / exact':<34}{'':>10}{f(self.generalisation):>10}  / {f(self.generalisation_exact)}",
            f"{f'specificity accuracy (n={self.n_specificity})':<34}{f(self.specificity_before):>10}"
            f"{f(self.specificity_after):>10}  drop {self.specificity_drop:.2f} pts",
            f"{'other relations of the entity':<34}{f(self.locality_before):>10}{f(self.locality_after):>10}",
        ]
        if self.trace:
            b, a = self.trace["before"], self.trace["after"]
            lines.append(f"{'MLP trace peak (layer, token)':<34}  before {tuple(b['peak'])}, after {tuple(a['peak'])}")
            lines.append(f"{'most causal layer at key token':<34}{b['key_layer']:>10}{a['key_layer']:>10}")
        return "\n".join(lines)


def _trace_summary(model: LensModel, request: EditRequest) -> dict:
    from mllm_lens.tracing.session import TraceSession

    probe = Probe(
        request.probe.image, request.probe.question, request.probe.constraints, template=request.probe.template
    )
    encoded = probe.encode(model)
    position = key_position(encoded, request.constraint)
    result = TraceSession(model, encoded, sites=("mlp",), warn=False).trace("mlp", progress=False)
    layer, pos = result.peak()
    return {
        "peak": [int(layer), result.labels[int(pos)]],
        "key_layer": int(np.argmax(result.scores[:, position])),
        "target": result.target_token,
        "clean_prob": result.clean_prob,
    }


def evaluate_edit(
    model: LensModel,
    edit_or_requests: Edit | EditRequest | Iterable[EditRequest],
    *,
    layers: int | Sequence[int] | None = None,
    site: str = "mlp",
    method: str = "multedit",
    specificity: ProbeSet | None = None,
    specificity_before: float | None = None,
    n_specificity: int | None = None,
    renderings: int = 2,
    trace: bool = True,
    seed: int = EVAL_SEED,
    **hyperparameters,
) -> EditReport:
    """Measure an applied :class:`Edit`, or apply ``method`` to requests, measure, and undo.

    ``specificity``: the unrelated questions (default :func:`specificity_set` without the edited
    subjects, ``n_specificity`` of them); ``specificity_before``: its accuracy on the unedited
    model, if already known (saves a pass when many edits share one set).
    """
    owned = not isinstance(edit_or_requests, Edit)
    if isinstance(edit_or_requests, Edit):
        handle = edit_or_requests
    else:
        handle = edit_many(model, as_requests(edit_or_requests), layers, site, method=method, **hyperparameters)
    try:
        requests = handle.requests
        edited = ProbeSet((r.probe, r.new_answer) for r in requests)
        paraphrases, images = _generalisation_sets(requests, renderings, seed)
        locality = _locality_set(requests, seed)
        specificity = specificity or specificity_set([r.subject for r in requests if r.subject], n=n_specificity)
        with handle.active():
            eff_p, eff_x = edited.run(model)
            par = paraphrases.run(model) if len(paraphrases) else None
            ren = images.run(model) if len(images) else None
            _, spec_after = specificity.run(model)
            loc_after = locality.run(model)[1] if len(locality) else None
            traced_after = _trace_summary(model, requests[0]) if trace else None
        with handle.suspended():
            eff_before, _ = edited.run(model)
            spec_before = specificity.run(model)[1] if specificity_before is None else [specificity_before]
            loc_before = locality.run(model)[1] if len(locality) else None
            traced_before = _trace_summary(model, requests[0]) if trace else None
    finally:
        if owned:
            handle.undo()

    def mean(x) -> float | None:
        return None if x is None else float(np.mean(x))

    def mean_of(x) -> float:
        return float(np.mean(x))

    return EditReport(
        method=handle.method,
        site=handle.site,
        layers=list(handle.layers),
        n_edits=len(requests),
        efficacy=mean_of(eff_p),
        efficacy_exact=mean_of(eff_x),
        efficacy_before=mean_of(eff_before),
        paraphrase=mean(par[0]) if par else None,
        paraphrase_exact=mean(par[1]) if par else None,
        rendering=mean(ren[0]) if ren else None,
        rendering_exact=mean(ren[1]) if ren else None,
        specificity_before=mean_of(spec_before),
        specificity_after=mean_of(spec_after),
        n_specificity=len(specificity),
        locality_before=mean(loc_before),
        locality_after=mean(loc_after),
        trace={"before": traced_before, "after": traced_after} if trace else {},
        hyperparameters=dict(handle.hyperparameters),
    )
