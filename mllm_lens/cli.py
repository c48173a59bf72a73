"""The ``mllm-lens`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

import mllm_lens as ml
from mllm_lens.text_view import heatmap_text


def _demo(args: argparse.Namespace) -> int:
    if args.planted:
        return _planted_demo(args)
    import random

    from mllm_lens.data import world

    model = ml.load("demo")
    record = world.make_record(args.country, world.template("capital"), 0, random.Random(0))
    probe = record.probe()
    print(
        f"Shipped demo model; question {record.question!r} about a rendered flag of {args.country} "
        f"(answer {record.answer!r}); corrupting the image (noise on all its visual tokens)\n"
    )
    results = ml.trace_sites(model, probe, ml.image_noise(), progress=not args.quiet)
    return _report(results, Path(args.out))


def _planted_demo(args: argparse.Namespace) -> int:
    from mllm_lens.testing.planted import planted_fact_model

    print(f"Building a tiny LLaVA whose facts live in layer {args.layer}'s MLP (trained in seconds)...")
    planted = planted_fact_model(args.layer)
    entity = next(iter(planted.facts))
    probe = planted.probe(entity)
    print(f"Question {probe.question!r} -> answer {planted.facts[entity]!r}; corrupting {entity!r} with noise\n")
    results = ml.trace_sites(planted.model, probe, ml.noise(entity), progress=not args.quiet)
    return _report(results, Path(args.out))


def _report(results: dict[str, ml.TraceResult], out: Path) -> int:
    for site, result in results.items():
        print(heatmap_text(result), end="\n\n")
        result.save(out / f"demo_{site}.npz")
    print(f"Traces saved under {out}/ (open with mllm_lens.TraceResult.load).")
    return 0


def _trace(args: argparse.Namespace) -> int:
    model = ml.load(args.model, device=args.device, dtype=args.dtype)
    constraints = [ml.visual(c) for c in args.visual] + [ml.textual(c) for c in args.textual]
    probe = ml.Probe(Image.open(args.image), args.question, constraints, answer=args.answer)
    if args.replace:
        corrupt = ml.replace(args.corrupt, args.replace)
    elif args.corrupt == "image":
        corrupt = ml.image_noise()
    else:
        corrupt = ml.noise(args.corrupt)
    result = ml.trace(model, probe, corrupt, site=args.site, window=args.window, window_mode=args.window_mode)
    print(heatmap_text(result))
    if args.out:
        result.save(args.out)
        print(f"saved {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mllm-lens", description="Causal tracing of multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="trace the shipped demo model (or, with --planted, a planted-fact model)")
    demo.add_argument("--country", default="France", help="whose flag the demo model is asked about")
    demo.add_argument("--planted", action="store_true", help="use a tiny model with a fact planted in --layer")
    demo.add_argument("--layer", type=int, default=2)
    demo.add_argument("--out", default="mllm_lens_demo")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=_demo)
    tr = sub.add_parser("trace", help="trace one visual question on a local checkpoint")
    tr.add_argument("--model", required=True, help="local folder or cached name of an image-text-to-text model")
    tr.add_argument("--image", required=True)
    tr.add_argument("--question", required=True)
    tr.add_argument("--visual", action="append", default=[], help="a visual-constraint phrase (repeatable)")
    tr.add_argument("--textual", action="append", default=[], help="a textual-constraint phrase (repeatable)")
    tr.add_argument("--answer")
    tr.add_argument("--corrupt", default=None, help="constraint phrase to corrupt, or 'image'")
    tr.add_argument("--replace", help="replace the corrupted phrase by this phrase instead of adding noise")
    tr.add_argument("--site", choices=ml.models.SITES, default="mlp")
    tr.add_argument("--window", type=int, default=1)
    tr.add_argument("--window-mode", choices=["paper", "rome"], default="paper")
    tr.add_argument("--device")
    tr.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    tr.add_argument("--out", help="save the TraceResult here (.npz)")
    tr.set_defaults(run=_trace)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ml.MllmLensError as err:
        print(f"mllm-lens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
