"""A model whose answer lives in one known image patch, by construction.

Images are a ``grid x grid`` mosaic of flat coloured patches drawn at random from a small
palette; the question "what color is this picture" is answered by the colour of one fixed
patch, ``key`` = (row, col). Every other patch has a random colour, so it carries no
information about the answer. The vision tower's self-attention output projections are set to
zero (and frozen), so visual token ``i`` is a function of patch ``i`` alone: the key patch's
colour reaches the decoder only through the key patch's visual token. The rest of the tiny
LLaVA (vision MLPs, projector, decoder) is trained for a few seconds on fresh mosaics.

Known answers for the methods: the top patch by attention contribution and by causal effect is
``key``, and knocking ``key`` out drops the answer far more than knocking out a random patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe
from mllm_lens.testing.tiny import tiny_llava

TEMPLATE = "<image>\n{question}"
QUESTION = "what color is this picture"
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
}


@dataclass
class PlantedPatch:
    model: LensModel
    key: tuple[int, int]
    grid: int
    patch_size: int
    final_loss: float
    accuracy: float

    def image(self, colour: str, seed: int = 0) -> Image.Image:
        """A random mosaic whose key patch has ``colour``."""
        return mosaic(np.random.default_rng(seed), self.grid, self.patch_size, self.key, colour)

    def probe(self, colour: str, seed: int = 0) -> Probe:
        return Probe(self.image(colour, seed), QUESTION, [("this picture", "visual")], answer=colour, template=TEMPLATE)


def mosaic(rng: np.random.Generator, grid: int, patch: int, key: tuple[int, int], colour: str) -> Image.Image:
    names = list(PALETTE)
    cells = rng.integers(len(names), size=(grid, grid))
    cells[key] = names.index(colour)
    rgb = np.array([PALETTE[n] for n in names], dtype=np.float32)[cells]  # [grid, grid, 3]
    pixels = rgb.repeat(patch, 0).repeat(patch, 1) + rng.normal(0, 8, (grid * patch, grid * patch, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def planted_patch_model(
    key: tuple[int, int] = (2, 1),
    *,
    num_layers: int = 3,
    steps: int = 150,
    batch: int = 48,
    seed: int = 0,
    lr: float = 3e-3,
) -> PlantedPatch:
    """Train a tiny LLaVA (32 px image, 8 px patches: a 4 x 4 grid) to name the key patch's colour."""
    hf_model, processor = tiny_llava(
        seed=seed, text_overrides={"num_hidden_layers": num_layers, "initializer_range": 0.05}
    )
    lens = LensModel.wrap(hf_model, processor)
    vision = hf_model.config.vision_config
    grid, patch = vision.image_size // vision.patch_size, vision.patch_size
    planted = PlantedPatch(lens, key, grid, patch, float("nan"), float("nan"))
    frozen: set[int] = set()
    for name, module in hf_model.named_modules():
        if "vision" in name and name.endswith("self_attn.out_proj"):
            with torch.no_grad():
                module.weight.zero_()
                module.bias.zero_()
            frozen.update(id(p) for p in module.parameters())
    params = [p for p in hf_model.parameters() if id(p) not in frozen]
    for p in hf_model.parameters():
        p.requires_grad_(id(p) not in frozen)
    colours = list(PALETTE)
    template = planted.probe(colours[0]).encode(lens)
    ids = template.model_inputs["input_ids"]
    answer_ids = torch.tensor([planted.probe(c).encode(lens).target_id for c in colours])
    image_processor = processor.image_processor
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(params, lr=lr)
    hf_model.train()
    for _ in range(steps):
        labels = rng.integers(len(colours), size=batch)
        images = [mosaic(rng, grid, patch, key, colours[i]) for i in labels]
        pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
        logits = hf_model(input_ids=ids.expand(batch, -1), pixel_values=pixels).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, answer_ids[labels])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hf_model.eval()
    for p in hf_model.parameters():
        p.requires_grad_(False)
    planted.final_loss = float(loss.detach())
    planted.accuracy = float((logits.argmax(-1) == answer_ids[labels]).float().mean())
    return planted
