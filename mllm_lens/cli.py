"""The ``mllm-lens`` command.

Every input is checked before a model is loaded (files, phrases, options, the output folder).
An error prints one line, ``mllm-lens: error: ...``, to stderr and exits with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

import mllm_lens as ml
from mllm_lens.errors import FileFormatError, MissingFileError, OptionError, ProbeError
from mllm_lens.models.loading import DTYPES, check_device
from mllm_lens.probe import locate_constraint
from mllm_lens.testing.planted import NUM_LAYERS
from mllm_lens.text_view import heatmap_text
from mllm_lens.tracing.corruption import Corruption
from mllm_lens.tracing.windows import WINDOW_MODES

EXIT_ERROR = 2
DEFAULT_COUNTRY = "France"
DEFAULT_PLANTED_LAYER = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are mllm_lens errors (printed as one line by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise OptionError(f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def writable_target(path: Path, option: str, *, folder: bool = False) -> Path:
    """Refuse ``path`` (a file, or a ``folder``) that cannot be written, before any work is done."""
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise OptionError(
            f"{option} {path} is {kind}; give {'a folder' if folder else 'a file name such as trace.npz'}"
        )
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{option} {path}: {existing} is a file, so no folder can be made there")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise OptionError(f"{option} {path}: cannot write into {existing} ({err.strerror or err})") from None
    return path


def read_image(path: str) -> Image.Image:
    """The image file as RGB, or a clear error if it is missing or not an image."""
    file = Path(path)
    if not file.exists():
        raise MissingFileError(f"--image {path}: no such file")
    if not file.is_file():
        raise FileFormatError(f"--image {path} is a folder, not an image file")
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a file that is no image
        raise FileFormatError(
            f"--image {path} is not an image PIL can read (PNG, JPEG, GIF, WebP, ...): {err}"
        ) from None


def demo_country(name: str) -> str:
    """The demo world's spelling of ``name`` (case-insensitive), or an error naming close matches."""
    from mllm_lens.data import world

    known = {c.lower(): c for c in world.FACTS}
    if name.lower() in known:
        return known[name.lower()]
    close = difflib.get_close_matches(name, list(world.FACTS), n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise OptionError(
        f"--country {name!r} is not in the demo world; {hint}it knows {len(world.FACTS)} countries, e.g. "
        f"{', '.join(list(world.FACTS)[:5])} (list them all with `mllm-lens demo --list-countries`)"
    )


def _demo(args: argparse.Namespace) -> int:
    if args.list_countries:
        from mllm_lens.data import world

        print("\n".join(sorted(world.FACTS)))
        return 0
    if args.planted:
        return _planted_demo(args)
    if args.layer is not None:
        raise OptionError("--layer applies to --planted only (the shipped demo model is traced at every layer)")
    import random

    from mllm_lens.data import world

    country = demo_country(args.country or DEFAULT_COUNTRY)
    out = writable_target(Path(args.out), "--out", folder=True)
    model = ml.load("demo")
    record = world.make_record(country, world.template("capital"), 0, random.Random(0))
    probe = record.probe()
    print(
        f"Shipped demo model; question {record.question!r} about a rendered flag of {country} "
        f"(answer {record.answer!r}); corrupting the visual constraint {record.main_entity!r} "
        "(3σ noise on its embeddings, the paper's corruption)\n"
    )
    results = ml.trace_sites(model, probe, ml.noise(record.main_entity), progress=not args.quiet)
    return _report(results, out)


def _planted_demo(args: argparse.Namespace) -> int:
    from mllm_lens.testing.planted import planted_fact_model

    if args.country is not None:
        raise OptionError("--country applies to the shipped demo model, not to --planted")
    layer = DEFAULT_PLANTED_LAYER if args.layer is None else args.layer
    if not 0 <= layer < NUM_LAYERS:
        raise OptionError(
            f"--layer must be 0..{NUM_LAYERS - 1} (the planted model has {NUM_LAYERS} layers), got {layer}"
        )
    out = writable_target(Path(args.out), "--out", folder=True)
    print(f"Building a tiny LLaVA whose facts live in layer {layer}'s MLP (trained in seconds)...")
    planted = planted_fact_model(layer)
    entity = next(iter(planted.facts))
    probe = planted.probe(entity)
    print(f"Question {probe.question!r} -> answer {planted.facts[entity]!r}; corrupting {entity!r} with noise\n")
    results = ml.trace_sites(planted.model, probe, ml.noise(entity), progress=not args.quiet)
    return _report(results, out)


def _report(results: dict[str, ml.TraceResult], out: Path) -> int:
    for site, result in results.items():
        print(heatmap_text(result), end="\n\n")
        result.save(out / f"demo_{site}.npz")
    print(f"Traces saved under {out}/ (open with mllm_lens.TraceResult.load).")
    return 0


def _corruption(args: argparse.Namespace, probe: ml.Probe) -> Corruption:
    """The corruption the options ask for, checked against the probe's constraints."""
    texts = [c.text for c in probe.constraints]
    if args.corrupt == "image":
        if args.replace:
            raise OptionError("--replace replaces a constraint phrase: give --corrupt PHRASE, not --corrupt image")
        return ml.image_noise()
    if not texts:
        raise OptionError("nothing to corrupt: give a --visual or --textual phrase, or --corrupt image")
    if args.corrupt is not None and args.corrupt not in texts:
        raise OptionError(
            f"--corrupt {args.corrupt!r} is not a constraint; use one of the --visual/--textual phrases "
            f"({', '.join(map(repr, texts))}) or 'image'"
        )
    if args.replace is not None:
        return ml.replace(args.corrupt, args.replace)
    return ml.noise(args.corrupt)


def _trace(args: argparse.Namespace) -> int:
    image = read_image(args.image)
    constraints = [ml.visual(c) for c in args.visual] + [ml.textual(c) for c in args.textual]
    probe = ml.Probe(image, args.question, constraints, answer=args.answer)
    for constraint in probe.constraints:
        try:
            locate_constraint(constraint, probe.question)
        except ProbeError as err:
            raise ProbeError(f"{err} (on the command line: give a phrase that occurs once in --question)") from None
    corrupt = _corruption(args, probe)
    out = None if args.out is None else writable_target(Path(args.out), "--out")
    check_device(args.device)
    model = ml.load(args.model, device=args.device, dtype=args.dtype)
    result = ml.trace(model, probe, corrupt, site=args.site, window=args.window, window_mode=args.window_mode)
    print(heatmap_text(result))
    for note in result.warnings:
        print(f"note: {note}")
    if out is not None:
        result.save(out)
        print(f"saved {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mllm-lens", description="Causal tracing of multimodal LLMs.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,trace,run,summarize}", help="what to run")
    debug: dict[str, Any] = {
        "action": "store_true",
        "default": argparse.SUPPRESS,
        "help": "show the full traceback of an error",
    }
    demo = sub.add_parser("demo", help="trace the shipped demo model (or, with --planted, a planted-fact model)")
    demo.add_argument("--country", help=f"whose flag the demo model is asked about (default {DEFAULT_COUNTRY})")
    demo.add_argument("--list-countries", action="store_true", help="list the countries --country accepts and exit")
    demo.add_argument("--planted", action="store_true", help="use a tiny model with a fact planted in --layer")
    demo.add_argument(
        "--layer",
        type=int,
        help=f"with --planted: the layer (0-{NUM_LAYERS - 1}) whose MLP holds the facts "
        f"(default {DEFAULT_PLANTED_LAYER})",
    )
    demo.add_argument("--out", default="mllm_lens_demo", help="folder for the traces (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--debug", **debug)
    demo.set_defaults(run=_demo)
    tr = sub.add_parser("trace", help="trace one visual question on a local checkpoint")
    tr.add_argument(
        "--model", required=True, help="local folder or cached name of an image-text-to-text model, or 'demo'"
    )
    tr.add_argument("--image", required=True, help="the image file (PNG, JPEG, ...)")
    tr.add_argument("--question", required=True, help="the question about the image")
    tr.add_argument("--visual", action="append", default=[], help="a visual-constraint phrase (repeatable)")
    tr.add_argument("--textual", action="append", default=[], help="a textual-constraint phrase (repeatable)")
    tr.add_argument("--answer", help="the answer to trace (its first token; default: the model's top-1 token)")
    tr.add_argument(
        "--corrupt", default=None, help="constraint phrase to corrupt, or 'image' (default: the first visual one)"
    )
    tr.add_argument("--replace", help="replace the corrupted phrase by this phrase instead of adding noise")
    tr.add_argument("--site", choices=ml.models.SITES, default="mlp", help="what is restored (default: %(default)s)")
    tr.add_argument("--window", type=_positive_int, default=1, help="layer window, an integer >= 1 (default: 1)")
    tr.add_argument(
        "--window-mode", choices=WINDOW_MODES, default="paper", help="window convention (default: %(default)s)"
    )
    tr.add_argument("--device", help="torch device, e.g. cpu or cuda (default: where the model loads)")
    tr.add_argument("--dtype", choices=sorted(DTYPES), help="weights' dtype (default: the checkpoint's)")
    tr.add_argument("--out", help="save the TraceResult here (.npz)")
    tr.add_argument("--debug", **debug)
    tr.set_defaults(run=_trace)
    from mllm_lens.experiments.cli import add_parsers

    add_parsers(sub, debug)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, ml.MllmLensError):
        return text
    return f"{type(err).__name__}: {text} (rerun with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(args_list)
        return args.run(args)
    except KeyboardInterrupt:
        print("mllm-lens: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if "--debug" in args_list:
            raise
        print(f"mllm-lens: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
