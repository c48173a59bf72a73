"""MultEdit vs fine-tuning baselines on the shipped demo model: ``python benchmarks/edit_metrics.py``.

Requests are *flipped facts* (error correction): "What is the capital of this country?" on a
training country's flag, with another country's capital as the new answer; and *long-tail
insertion*: the capital of a held-out country the model never saw. For each method we report
efficacy (p(new answer) and exact match on the edited question), generalisation (other
paraphrases and other renderings of the flag), specificity (accuracy on other countries'
questions of every template, before/after, drop in points) for single edits (mean over
``--singles`` requests) and batches of 10 and 50 edits; then MultEdit's efficacy by edited
layer, a sweep of the ‖δ‖ clamp, and larger ridge λ on the batches. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mllm_lens as ml  # noqa: E402
from mllm_lens.data import world  # noqa: E402
from mllm_lens.editing import EditIneffectiveWarning, EditRequest, evaluate_edit, world_request  # noqa: E402
from mllm_lens.editing.metrics import specificity_set  # noqa: E402
from mllm_lens.io import rounded  # noqa: E402

KEYS = ("efficacy", "efficacy_exact", "generalisation", "generalisation_exact", "specificity_drop")


def flipped_requests(n: int, seed: int = 0) -> list[EditRequest]:
    """Capital questions of ``n`` training countries, each given the next one's capital."""
    countries = world.training_countries()
    random.Random(seed).shuffle(countries)
    picked = countries[:n]
    return [
        world_request(c, "capital", world.fact(picked[(i + 1) % n], "capital"), seed=seed + i)
        for i, c in enumerate(picked)
    ]


def long_tail_requests(seed: int = 0) -> list[EditRequest]:
    return [world_request(c, "capital", world.fact(c, "capital"), seed=seed + i) for i, c in enumerate(world.HELD_OUT)]


def preserve_probes(requests: list[EditRequest], seed: int = 99) -> list:
    """Keys to keep: every template on the held-out countries' flags, and the edited countries'
    other templates (none of them in the specificity set), fresh renderings."""
    rng = random.Random(seed)
    edited = [(r.subject, t) for r in requests for t in world.TEMPLATES if t.name != r.template]
    held = [(c, t) for c in world.HELD_OUT for t in world.TEMPLATES]
    return [world.make_record(c, t, 0, rng).probe(with_answer=False) for c, t in edited + held]


def mean_reports(reports) -> dict:
    rows = [r.as_dict() for r in reports]
    return {k: float(np.mean([row[k] for row in rows])) for k in KEYS} | {"n_requests": len(rows)}


def run_singles(model, requests, specificity, **options) -> dict:
    reports = []
    for request in requests:
        try:
            reports.append(
                evaluate_edit(
                    model,
                    request,
                    specificity=specificity,
                    specificity_before=specificity.before,
                    trace=False,
                    **options,
                )
            )
        except ml.errors.EditError as err:  # e.g. the model already gives the new answer
            print(f"  skipped {request.describe()}: {err}", file=sys.stderr)
    return mean_reports(reports)


def run_batch(model, requests, specificity, **options) -> dict:
    """The metrics of writing all ``requests`` at once."""
    report = evaluate_edit(
        model, requests, specificity=specificity, specificity_before=specificity.before, trace=False, **options
    )
    return {k: report.as_dict()[k] for k in KEYS} | {"n_requests": len(requests)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--layer", type=int, default=-1, help="edited layer (-1: most causal at the key, by trace)")
    parser.add_argument("--key-token", default="constraint", choices=["constraint", "last"], help="default: paper")
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="*", default=[10, 50])
    parser.add_argument("--clamps", type=float, nargs="*", default=[1e-4, 0.1, 0.5, 1.0, 4.0, 6.0, 10.0])
    parser.add_argument("--lams", type=float, nargs="*", default=[10.0, 100.0], help="ridge λ tried on the batches")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", EditIneffectiveWarning)  # the long-tail and weak-layer rows trigger it
    start = time.time()
    model = ml.load(args.model)
    requests = flipped_requests(max([args.singles, *args.batches]))
    singles = requests[: args.singles]
    votes = [ml.editing.causal_layer(model, r.probe, key_token=args.key_token) for r in singles]
    print(f"most causal MLP layer at the {args.key_token} token (one-position trace), by request: {votes}")
    layer = max(set(votes), key=votes.count) if args.layer < 0 else args.layer
    # one specificity set for every configuration: countries outside the largest batch
    specificity = specificity_set([r.subject for r in requests])
    specificity.before = float(specificity.run(model)[1].mean())
    results: dict[str, dict] = {}
    methods = {"multedit": {"key_token": args.key_token}, "finetune": {}, "constrained_finetune": {}}
    for method, options in methods.items():
        results[f"{method}/1"] = run_singles(model, singles, specificity, layers=layer, method=method, **options)
        for size in args.batches:
            results[f"{method}/{size}"] = run_batch(
                model, requests[:size], specificity, layers=layer, method=method, **options
            )
        print(f"{method} done ({time.time() - start:.0f} s)", file=sys.stderr)
    key = {"key_token": args.key_token}
    results["multedit_long_tail/1"] = run_singles(model, long_tail_requests(), specificity, layers=layer, **key)
    other = "last" if args.key_token == "constraint" else "constraint"
    results[f"multedit_{other}_key/1"] = run_singles(model, singles, specificity, layers=layer, key_token=other)
    results["multedit_paper_lr/1"] = run_singles(model, singles, specificity, layers=layer, lr=0.1, steps=10, **key)
    for size in args.batches:
        batch = requests[:size]
        results[f"multedit_preserve/{size}"] = run_batch(
            model, batch, specificity, layers=layer, preserve=preserve_probes(batch), **key
        )
        for lam in args.lams:
            name = f"multedit_lambda_{lam:g}/{size}"
            results[name] = run_batch(model, batch, specificity, layers=layer, lam=lam, **key)
    by_layer = {
        f"layer {lay}": run_singles(model, singles, specificity, layers=lay, **key) for lay in range(model.num_layers)
    }
    by_clamp = {
        f"clamp {c:g}": run_singles(model, singles, specificity, layers=layer, clamp=c, **key) for c in args.clamps
    }
    example = evaluate_edit(model, singles[0], layers=layer, specificity=specificity, **key)

    print(f"\nDemo model, edited layer {layer} (MLP down_proj), {len(specificity)} specificity questions\n")
    header = f"| {'method / batch':<26} | " + " | ".join(f"{k:>20}" for k in KEYS) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for name, row in {**results, **by_clamp, **by_layer}.items():
        print(f"| {name:<26} | " + " | ".join(f"{row[k]:>20.3f}" for k in KEYS) + " |")
    print("\nExample report (first request):\n" + example.table())
    print(f"\n({time.time() - start:.0f} s)")
    summary = {
        "layer": layer,
        "key_token": args.key_token,
        "methods": results,
        "efficacy_by_layer": {k: v["efficacy"] for k, v in by_layer.items()},
        "clamp_sweep": by_clamp,
    }
    print(json.dumps(rounded(summary)))


if __name__ == "__main__":
    main()
