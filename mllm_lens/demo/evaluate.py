"""Re-measure the demo model: ``python -m mllm_lens.demo.evaluate``.

Exact-match accuracy (greedy first answer token; every answer is one token) on held-out
renderings of the training countries, for every template and paraphrase; then whether the
model routes facts through the visual constraint, with the library's defaults
(:mod:`mllm_lens.demo.mechanism`): noise on the constraint, replacement by another country's
name, the MLP trace per token role, MultEdit with the paper's key on requests held out from
tuning (single edits, batches of 10 and 50), top-k vs random patch knock-out (k = 8, and a curve
over larger k), and constraint
flow vs confidence as an error signal, and whether the default corruptions open the route gate
(image reads of non-reader text positions in the corrupted runs). Ends with one JSON line (``accuracy``, ``size_mb``,
``constraint_noise_ratio``, ``replace_switch_rate``, ``edit_efficacy``, ``edit_generalisation``,
``edit_specificity_drop``, ``batch50_specificity_drop``, ``topk_knockout_drop``,
``random_knockout_drop``, ... ). ``--accuracy-only`` stops after the accuracy.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mllm_lens.data import world
from mllm_lens.demo import mechanism
from mllm_lens.demo.build import MODEL_DIR, image_token_count
from mllm_lens.demo.train import make_batch, question_forms, render_pool
from mllm_lens.io import rounded
from mllm_lens.models.lens_model import LensModel
from mllm_lens.models.loading import load

HELD_OUT_SEED = 1234  # renderings and question draws never used in training (seed 0)


def evaluate(
    model: LensModel, *, countries: list[str] | None = None, renderings: int = 2, seed: int = HELD_OUT_SEED
) -> dict:
    """Accuracy overall, by template and by ``template/paraphrase`` on fresh renderings."""
    countries = countries or world.training_countries()
    hf, tokenizer = model.hf_model, model.tokenizer
    n_image = image_token_count(hf.config)
    pool = render_pool(model.processor, countries, renderings, seed).to(model.device, model.dtype)
    rng = random.Random(seed)
    hits: dict[str, list[bool]] = defaultdict(list)
    for template, paraphrase in question_forms():
        for r in range(renderings):
            ids, answers, _, _ = make_batch(tokenizer, n_image, countries, (template, paraphrase), rng, False)
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


def mechanism_report(model: LensModel, *, n: int = 140, traced: int = 42, knocked: int = 42) -> dict:
    """The routing measures of the model card (see :mod:`mllm_lens.demo.mechanism`)."""
    from mllm_lens.tracing.flow import flow_auroc

    report: dict = {}
    records = mechanism.mechanism_records(n)
    report.update(mechanism.constraint_noise_ratio(model, records))
    report.update(mechanism.replace_switch_rate(model, records))
    report.update(mechanism.gate_leak(model, records[:traced]))
    roles = mechanism.role_profile(model, records[:traced])
    report.update(mlp_trace_by_role=roles["profile"], trace_peak_layer=roles["peak_layer"])
    report["trace_peak_role"] = roles["peak_role"]
    knock = mechanism.knockout_figures(model, records[:knocked])
    report.update(knock, knockout_curve=mechanism.knockout_curve(model, records[:knocked]))
    _, held_out = mechanism.split_countries()
    report.update(mechanism.edit_figures(model, mechanism.flipped_requests(held_out, seed=100)))
    known = world.generate(renderings=1, seed=7)
    unknown = world.generate(list(world.HELD_OUT), renderings=1, seed=8)
    flows = random.Random(0).sample(known, 300) + random.Random(1).sample(unknown, 100)
    flow = flow_auroc(model, flows)
    report["flow_auroc_best_layer"] = float(np.max(flow.layer_auroc))
    report["confidence_auroc"] = float(flow.confidence_auroc)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: the shipped demo)")
    parser.add_argument("--renderings", type=int, default=2, help="renderings per question for the accuracy")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the routing and editing measures")
    args = parser.parse_args(argv)
    start = time.time()
    model = load(args.model)
    report = evaluate(model, renderings=args.renderings)
    for name, acc in report["accuracy_by_template"].items():
        print(f"{name:>14}: {acc:.3f}")
    report["size_mb"] = round(model_size_mb(args.model), 2)
    if not args.accuracy_only:
        report.update(mechanism_report(model))
        for key in mechanism.REPORTED:
            print(f"{key:>28}: {report[key]:.4f}")
    report["seconds"] = round(time.time() - start, 1)
    print(json.dumps(rounded(report)))


if __name__ == "__main__":
    main()
