"""A model whose fact is stored in a known layer, by construction.

All weights of a tiny random LLaVA are frozen except the MLP of one decoder layer ``k``
(the frozen attention and MLP output projections are scaled down, so the random blocks
write little into the residual stream). That MLP alone is trained, in seconds, on a
key -> value task: the prompt ends with an entity word ``e{i}`` and the answer is
``a{f(i)}`` for a fixed random map ``f``. The only trainable memory of the map is layer
``k``'s MLP, so a causal trace of MLP outputs with the entity corrupted must peak at layer
``k`` on the entity token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mllm_lens.errors import OptionError
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe
from mllm_lens.testing.tiny import tiny_llava

TEMPLATE = "<image>\n{question}"
NUM_LAYERS = 5  # decoder layers of the default planted model


@dataclass
class PlantedFacts:
    model: LensModel
    layer: int
    facts: dict[str, str]  # entity word -> answer word
    final_loss: float

    def probe(self, entity: str, image: Image.Image | None = None) -> Probe:
        image = image or Image.new("RGB", (32, 32), (120, 80, 40))
        return Probe(
            image,
            f"capital of {entity}",
            [("capital", "textual"), (entity, "visual")],
            answer=self.facts[entity],
            template=TEMPLATE,
        )

    def probes(self) -> list[Probe]:
        """One probe per planted fact: a known-answer dataset (its traces must peak at ``layer``)."""
        return [self.probe(entity) for entity in self.facts]


def planted_fact_model(
    layer: int,
    *,
    n_facts: int = 12,
    n_answers: int = 6,
    num_layers: int = NUM_LAYERS,
    steps: int = 300,
    seed: int = 0,
    frozen_scale: float = 0.1,
) -> PlantedFacts:
    """Train only ``layer``'s MLP of a tiny LLaVA to store ``n_facts`` entity -> answer facts."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
        raise OptionError(
            f"the planted layer must be an int in 0..{num_layers - 1} ({num_layers} layers), got {layer!r}"
        )
    entities = [f"e{i}" for i in range(n_facts)]
    answers = [f"a{i}" for i in range(n_answers)]
    rng = np.random.default_rng(seed)
    facts = {e: answers[int(rng.integers(n_answers))] for e in entities}
    hf_model, processor = tiny_llava(
        seed=seed,
        extra_words=(*entities, *answers),
        text_overrides={"num_hidden_layers": num_layers, "initializer_range": 0.5},
    )
    lens = LensModel.wrap(hf_model, processor)
    for param in hf_model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():  # the frozen blocks write little into the residual stream
        for other in range(num_layers):
            lens.adapter.attn_out(other).weight.mul_(frozen_scale)
            if other != layer:
                lens.adapter.mlp_out(other).weight.mul_(frozen_scale)
    mlp = lens.adapter.mlp(layer)
    for param in mlp.parameters():
        param.requires_grad_(True)
    planted = PlantedFacts(lens, layer, facts, float("nan"))
    encoded = [planted.probe(e).encode(lens) for e in entities]
    inputs = {k: torch.cat([enc.model_inputs[k] for enc in encoded]) for k in ("input_ids", "pixel_values")}
    targets = torch.tensor([enc.target_id for enc in encoded])
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    hf_model.train()
    for _ in range(steps):
        logits = hf_model(**inputs).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hf_model.eval()
    for param in mlp.parameters():
        param.requires_grad_(False)
    planted.final_loss = float(loss.detach())
    return planted
