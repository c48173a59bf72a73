"""Tune MultEdit's batch defaults on a demo model's *tuning* requests: ``python benchmarks/edit_tuning.py``.

The model card reports edits on the report countries of :func:`mechanism.split_countries`; the
defaults are chosen here, on the 12 tuning countries only, so the report stays held out:

* ``capitals``: the 12 tuning countries' capital questions, each given the next one's capital,
  edited as one batch;
* ``relations``: 36 requests, the 12 tuning countries x capital, language and currency, each given
  the next tuning country's different fact, edited as one batch (the largest batch the tuning
  countries allow; the report's batch of 50 spans 50 countries).

For every batch weight ``w`` (ΔW = R Kᵀ (w·C + K Kᵀ)⁻¹) and clamp (‖δ‖ ≤ clamp·‖v0‖) on the grid:
efficacy / generalisation / specificity drop in points (the other 56 training countries x every
template). First, the geometry of the edit keys (layer 0's MLP input at the visual constraint's last
token of every training country's capital question): effective rank of the centred keys
(exp of the entropy of their normalised squared singular values) and the mean share of a left-out
key's energy inside the span of ``--span`` others (5 random draws), the overlap that makes a batch
edit spill. Ends with one JSON line.

    python benchmarks/edit_tuning.py --model DIR --weights 100 300 1000 --clamps 1.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mllm_lens as ml  # noqa: E402
from mllm_lens.data import world  # noqa: E402
from mllm_lens.demo import mechanism  # noqa: E402
from mllm_lens.demo.build import MODEL_DIR  # noqa: E402
from mllm_lens.editing import EditIneffectiveWarning, EditRequest, evaluate_edit, world_request  # noqa: E402
from mllm_lens.editing.keys import capture  # noqa: E402
from mllm_lens.editing.metrics import specificity_set  # noqa: E402
from mllm_lens.editing.requests import encode_requests  # noqa: E402
from mllm_lens.io import rounded  # noqa: E402

RELATIONS = ("capital", "language", "currency")


def relation_requests(countries: list[str], relations=RELATIONS, seed: int = 0) -> list[EditRequest]:
    """Each country's question about each relation, given the next country's (cyclically) different fact."""
    requests = []
    n = len(countries)
    for r, relation in enumerate(relations):
        for i, country in enumerate(countries):
            own = world.fact(country, relation)
            other = next(
                world.fact(countries[(i + j) % n], relation)
                for j in range(1, n)
                if world.fact(countries[(i + j) % n], relation) != own
            )
            requests.append(world_request(country, relation, other, seed=seed + r * n + i))
    return requests


def key_geometry(model: ml.LensModel, layer: int = 0, span: int = 50, draws: int = 5) -> dict:
    """Effective rank of the centred edit keys and the others' energy share in the span of ``span`` keys."""
    countries = world.training_countries()
    requests = mechanism.flipped_requests(countries)  # the keys do not depend on the new answer
    keys, _, _ = capture(model, encode_requests(model, requests), layer, "mlp")
    keys = keys.double()
    centred = keys - keys.mean(0)
    s2 = torch.linalg.svdvals(centred) ** 2
    p = s2 / s2.sum()
    rank = float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(draws):
        picked = rng.choice(len(countries), size=min(span, len(countries) - 1), replace=False)
        basis, _ = torch.linalg.qr(keys[picked].T)
        rest = keys[[i for i in range(len(countries)) if i not in set(picked.tolist())]]
        inside = (rest @ basis).pow(2).sum(1) / rest.pow(2).sum(1)
        shares.append(float(inside.mean()))
    return {"key_effective_rank": rank, "key_energy_in_span": float(np.mean(shares)), "span": span}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR, help="model folder (default: the shipped demo)")
    parser.add_argument("--weights", type=float, nargs="+", default=[100.0, 300.0, 1000.0], help="batch w values")
    parser.add_argument("--clamps", type=float, nargs="+", default=[1.5], help="clamp values")
    parser.add_argument("--span", type=int, default=50, help="keys whose span the geometry measures")
    args = parser.parse_args(argv)
    start = time.time()
    model = ml.load(args.model)
    out: dict = {"model": str(args.model), **key_geometry(model, span=args.span)}
    print(
        f"keys: effective rank {out['key_effective_rank']:.1f}, others' energy in the span of {args.span}: "
        f"{out['key_energy_in_span']:.2f}"
    )
    tune, _ = mechanism.split_countries()
    sets = {"capitals": mechanism.flipped_requests(tune, seed=0), "relations": relation_requests(tune)}
    specificity = specificity_set(tune)
    before = float(specificity.run(model)[1].mean())
    rows = []
    print(
        f"{'w':>7} {'clamp':>6} | "
        + " | ".join(f"{name} ({len(reqs)}): eff / gen / drop" for name, reqs in sets.items())
    )
    for weight in args.weights:
        for clamp in args.clamps:
            row: dict = {"cov_weight": weight, "clamp": clamp}
            for name, requests in sets.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", EditIneffectiveWarning)
                    report = evaluate_edit(
                        model,
                        requests,
                        specificity=specificity,
                        specificity_before=before,
                        trace=False,
                        cov_weight=weight,
                        clamp=clamp,
                    )
                row[name] = {
                    "efficacy": report.efficacy,
                    "generalisation": report.generalisation,
                    "specificity_drop": report.specificity_drop,
                }
            rows.append(row)
            cells = " | ".join(
                f"{row[n]['efficacy']:.3f} / {row[n]['generalisation']:.3f} / {row[n]['specificity_drop']:.2f}"
                for n in sets
            )
            print(f"{weight:>7g} {clamp:>6g} | {cells}", flush=True)
    out.update(rows=rows, n_specificity=len(specificity), seconds=round(time.time() - start, 1))
    print(json.dumps(rounded(out)))


if __name__ == "__main__":
    main()
