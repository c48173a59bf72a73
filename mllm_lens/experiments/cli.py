"""``mllm-lens run`` and ``mllm-lens summarize``: every input is checked before a model loads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mllm_lens.errors import MissingFileError, OptionError
from mllm_lens.experiments.settings import ANALYSES, CORRUPTIONS, TARGETS, RunSettings
from mllm_lens.models.adapters import SITES
from mllm_lens.tracing.windows import WINDOW_MODES

DEMO_WORLD = "demo-world"


def _csv_list(allowed: tuple[str, ...] | None, kind=str):
    def parse(text: str) -> tuple:
        items = [kind(t.strip()) for t in text.split(",") if t.strip()]
        bad = [i for i in items if allowed is not None and i not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(allowed or ())}, got {text!r}"
            )
        return tuple(items)

    return parse


def _windows(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, e.g. 1,5; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, e.g. 1,5; got {text!r}")
    return values


def dataset_from_args(args: argparse.Namespace):
    from mllm_lens.experiments import datasets

    if args.dataset == DEMO_WORLD:
        if args.images is not None:
            raise OptionError("--images belongs to a CSV dataset; the demo world renders its own flags")
        size = args.limit if args.size is None else args.size
        data = datasets.demo_world(size, seed=args.seed, split=args.split)
    else:
        csv = Path(args.dataset)
        if not csv.is_file():
            raise MissingFileError(f"--dataset {args.dataset}: no such CSV file (or give {DEMO_WORLD!r})")
        if args.images is None:
            raise OptionError(f"--dataset {csv.name} is a CSV: give --images, the folder its image_url paths are under")
        if not Path(args.images).is_dir():
            raise MissingFileError(f"--images {args.images}: no such folder")
        data = datasets.vqa_constraints(csv, args.images)
    return data.select(args.limit, args.shuffle, args.seed)


def _run(args: argparse.Namespace) -> int:
    from mllm_lens.cli import writable_target
    from mllm_lens.experiments.runner import run
    from mllm_lens.models.loading import check_device

    data = dataset_from_args(args)
    if not data.examples:
        raise OptionError(f"the dataset has no examples to run ({len(data.skipped)} rows skipped)")
    target = args.target or ("answer" if all(e.meta.get("answer") is not None for e in data.examples) else "prediction")
    settings = RunSettings(
        analyses=args.analyses,
        sites=args.sites,
        windows=args.windows,
        window_mode=args.window_mode,
        corruption=args.corruption,
        noise_scale=args.noise_scale,
        seed=args.seed,
        target=target,
    )
    out = writable_target(Path(args.out), "--out", folder=True)
    check_device(args.device)
    if args.backend == "local" and (args.address or args.workers != 2):
        raise OptionError("--workers and --address apply to --backend ray")
    print(f"{len(data.examples)} examples ({len(data.skipped)} rows skipped, listed in {out}/report.json) -> {out}")
    run(
        args.model,
        data,
        out,
        settings,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        device=args.device,
        dtype=args.dtype,
        fork=args.fork,
        progress=not args.quiet,
    )
    from mllm_lens.experiments.results import open_run

    table = open_run(out).table()
    errors = table[table["status"] == "error"]["example_id"].nunique()
    print(
        f"done: {table['example_id'].nunique()} examples stored, {errors} with an error; "
        f"`mllm-lens summarize {out} --out report.html` draws the aggregates"
    )
    return 0


def _summarize(args: argparse.Namespace) -> int:
    from mllm_lens.cli import writable_target
    from mllm_lens.experiments import aggregate
    from mllm_lens.experiments.report import write_report
    from mllm_lens.experiments.results import open_run

    run = open_run(args.run_dir)
    other = open_run(args.compare) if args.compare else None
    out = writable_target(Path(args.out), "--out")
    table = run.table()
    for site in run.settings.get("sites", []):
        for window in run.settings.get("windows", []):
            profiles = aggregate.role_profiles(table, site, window)
            if "visual" in profiles:
                curve = profiles["visual"]["mean"]
                print(
                    f"{site} window {window}: visual-constraint effect peaks at layer {int(curve.argmax())} "
                    f"({curve.max():.4f}, n={profiles['visual']['n']})"
                )
    write_report(run, out, other)
    print(f"report: {out}")
    return 0


def add_parsers(sub: Any, debug: dict[str, Any]) -> None:
    run = sub.add_parser("run", help="run an experiment over a dataset (resumable)")
    run.add_argument("--model", required=True, help="local folder or cached name of the model, or 'demo'")
    run.add_argument(
        "--dataset", default=DEMO_WORLD, help=f"{DEMO_WORLD!r} or a VQA-Constraints CSV (default: %(default)s)"
    )
    run.add_argument("--images", help="with a CSV: the folder its image_url paths are relative to")
    run.add_argument("--split", choices=("train", "held-out"), default="train", help="demo world: which countries")
    run.add_argument("--size", type=int, help="demo world: questions to generate (default: --limit, or one round)")
    run.add_argument("--limit", type=int, help="run only the first N examples (after --shuffle)")
    run.add_argument("--shuffle", action="store_true", help="shuffle the examples (seeded by --seed) before --limit")
    run.add_argument("--seed", type=int, default=0, help="seed of the demo world, the shuffle and the noise")
    run.add_argument(
        "--analyses",
        type=_csv_list(ANALYSES),
        default=("trace",),
        help=f"comma-separated: {','.join(ANALYSES)} (default: trace)",
    )
    run.add_argument(
        "--sites", type=_csv_list(SITES), default=SITES, help="comma-separated sites to trace (default: all)"
    )
    run.add_argument(
        "--windows", type=_windows, default=(1,), help="comma-separated layer windows, e.g. 1,5 (default: 1)"
    )
    run.add_argument(
        "--window-mode", choices=WINDOW_MODES, default="paper", help="window convention (default: %(default)s)"
    )
    run.add_argument(
        "--corruption", choices=CORRUPTIONS, default="noise", help="noise on the visual constraint or on the image"
    )
    run.add_argument(
        "--noise-scale", type=float, default=3.0, help="noise in embedding standard deviations (default: 3)"
    )
    run.add_argument(
        "--target",
        choices=TARGETS,
        help="trace the dataset's answer or the model's prediction (default: answer when every example has one)",
    )
    run.add_argument("--backend", choices=("local", "ray"), default="local", help="where examples run (default: local)")
    run.add_argument("--workers", type=int, default=2, help="--backend ray: actors, each loading the model once")
    run.add_argument("--address", help="--backend ray: an existing cluster's address (default: start a local Ray)")
    run.add_argument("--device", help="torch device, e.g. cpu or cuda")
    run.add_argument("--dtype", help="weights' dtype: float32, float16 or bfloat16")
    run.add_argument("--fork", action="store_true", help="start over in a folder that holds a run with other settings")
    run.add_argument("--out", required=True, help="the run folder (re-running the same command resumes it)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--debug", **debug)
    run.set_defaults(run=_run)
    summarize = sub.add_parser("summarize", help="aggregate figures and tables of a run as one HTML report")
    summarize.add_argument("run_dir", help="the run folder")
    summarize.add_argument("--compare", help="another run folder to draw beside it")
    summarize.add_argument("--out", default="report.html", help="the HTML file (default: %(default)s)")
    summarize.add_argument("--debug", **debug)
    summarize.set_defaults(run=_summarize)
