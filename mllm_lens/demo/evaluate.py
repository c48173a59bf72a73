"""Re-measure the demo model: ``python -m mllm_lens.demo.evaluate``.

Exact-match accuracy (greedy first answer token; every answer is one token) on held-out
renderings of the training countries, for every template and paraphrase. Ends with one JSON
line: ``accuracy``, ``accuracy_by_template``, ``accuracy_by_paraphrase``, ``n``, ``size_mb``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import torch

from mllm_lens.data import world
from mllm_lens.demo.build import MODEL_DIR
from mllm_lens.demo.train import make_batch, question_forms, render_pool
from mllm_lens.models.lens_model import LensModel
from mllm_lens.models.loading import load

HELD_OUT_SEED = 1234  # renderings and question draws never used in training (seed 0)


def evaluate(
    model: LensModel, *, countries: list[str] | None = None, renderings: int = 2, seed: int = HELD_OUT_SEED
) -> dict:
    """Accuracy overall, by template and by ``template/paraphrase`` on fresh renderings."""
    countries = countries or world.training_countries()
    hf, tokenizer = model.hf_model, model.tokenizer
    vision = hf.config.vision_config
    n_image = (vision.image_size // vision.patch_size) ** 2
    pool = render_pool(model.processor, countries, renderings, seed).to(model.device, model.dtype)
    rng = random.Random(seed)
    hits: dict[str, list[bool]] = defaultdict(list)
    for template, paraphrase in question_forms():
        for r in range(renderings):
            ids, answers = make_batch(tokenizer, n_image, countries, (template, paraphrase), rng, False)
            with torch.no_grad():
                logits = hf(input_ids=ids.to(model.device), pixel_values=pool[:, r]).logits[:, -1]
            predicted = tokenizer.convert_ids_to_tokens(logits.argmax(-1).tolist())
            for guess, answer in zip(predicted, answers, strict=True):
                hits[f"{template.name}/{paraphrase}"].append(guess == answer)
    by_form = {k: sum(v) / len(v) for k, v in hits.items()}
    by_template: dict[str, list[bool]] = defaultdict(list)
    for key, values in hits.items():
        by_template[key.split("/")[0]].extend(values)
    everything = [h for values in hits.values() for h in values]
    return {
        "accuracy": sum(everything) / len(everything),
        "accuracy_by_template": {k: round(sum(v) / len(v), 4) for k, v in by_template.items()},
        "accuracy_by_paraphrase": {k: round(v, 4) for k, v in by_form.items()},
        "n": len(everything),
    }


def model_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--renderings", type=int, default=2)
    args = parser.parse_args(argv)
    model = load(args.model)
    report = evaluate(model, renderings=args.renderings)
    for name, acc in report["accuracy_by_template"].items():
        print(f"{name:>14}: {acc:.3f}")
    report["accuracy"] = round(report["accuracy"], 4)
    report["size_mb"] = round(model_size_mb(args.model), 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
