"""A catalogue of bad input at every entry point: each fails with an mllm_lens error whose one
readable sentence names the input and what is accepted instead (issue 12).

Each case is ``(call, exception type, words the message must hold)``; the calls take a
:class:`Ctx` of small shared objects (the tiny LLaVA, a probe, files under a temp folder).
"""

from __future__ import annotations

import io
import shutil
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mllm_lens as ml
from mllm_lens.cli import build_parser, main
from mllm_lens.data import load_vqa_constraints
from mllm_lens.errors import (
    CorruptionError,
    EditError,
    FileFormatError,
    MissingExtraError,
    MissingFileError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    ProbeError,
    TraceConfigError,
    VQAConstraintsFormatError,
)
from mllm_lens.models import loading
from mllm_lens.tracing.corruption import as_corruption

QUESTION = "which continent is this country in?"
REPEATED = "is the capital of the country in this continent?"  # "the" twice
KNOWN_HEADER = ",question,subject,main_entity,image_url\n"


@dataclass
class Ctx:
    model: ml.LensModel
    probe: ml.Probe
    image: Image.Image
    tmp: Path
    saved: dict[str, str]

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def trace(self, **kwargs) -> ml.TraceResult:
        return ml.trace(self.model, kwargs.pop("probe", self.probe), progress=False, **kwargs)


def _trace_result() -> ml.TraceResult:
    return ml.TraceResult(
        scores=np.zeros((2, 3)),
        clean_prob=0.5,
        corrupted_prob=0.1,
        target_id=1,
        target_token="a",
        labels=["x", "y", "z"],
        tokens=["x", "y", "z"],
        constraint_spans={"y": (1, 2)},
        constraint_kinds={"y": "visual"},
        image_span=(0, 1),
        patch_grid=(1, 1),
        site="mlp",
    )


def _write_files(tmp: Path, saved: dict[str, str]) -> None:
    """The bad (and good) files the cases point at."""
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp / "ok.png")
    (tmp / "not_an_image.png").write_text("hello, I am text")
    (tmp / "a_folder").mkdir()
    (tmp / "empty_model").mkdir()
    (tmp / "afile.bin").write_bytes(b"\0" * 10)
    no_processor = tmp / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(saved["llava"]) / name, no_processor / name)
    no_config = tmp / "no_config"
    no_config.mkdir()
    shutil.copy(Path(saved["llava"]) / "model.safetensors", no_config / "model.safetensors")
    good = _trace_result().save(tmp / "good.npz")
    (tmp / "truncated.npz").write_bytes(good.read_bytes()[:100])
    np.savez(tmp / "foreign.npz", scores=np.zeros(3))
    (tmp / "text.npz").write_text("not a zip")
    with zipfile.ZipFile(tmp / "no_fields.npz", "w") as zf:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2, 3)))
        zf.writestr("scores.npy", buffer.getvalue())
        zf.writestr("meta.json", '{"type": "TraceResult"}')
    (tmp / "binary.csv").write_bytes((tmp / "ok.png").read_bytes())
    (tmp / "latin1.csv").write_bytes((KNOWN_HEADER + "0,Où est-ce?,Café,ce café,./a\n").encode("latin-1"))
    rows = {
        "bad_header.csv": ",question,entity,image_url\n0,What?,x,./a\n",
        "bad_fields.csv": KNOWN_HEADER + "0,What is this?,x\n",
        "bad_index.csv": KNOWN_HEADER + "zero,What is this?,Paris,this,./a\n",
        "empty_question.csv": KNOWN_HEADER + "0,,Paris,this,./a\n",
        "good.csv": KNOWN_HEADER + "0,What is this?,Paris,this,./a\n",
    }
    for name, text in rows.items():
        (tmp / name).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def ctx(models, saved_models, tmp_path_factory) -> Ctx:
    tmp = tmp_path_factory.mktemp("bad_input")
    _write_files(tmp, saved_models)
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8"))
    probe = ml.Probe(image, QUESTION, [ml.visual("this country"), ml.textual("continent")])
    return Ctx(models["llava"], probe, image, tmp, saved_models)


@pytest.fixture
def no_weights(monkeypatch):
    """Any case that gets as far as reading weights fails: every check must come first."""

    class Refuse:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            raise AssertionError("weights were loaded before the input was refused")

    monkeypatch.setattr(loading, "AutoModelForImageTextToText", Refuse)


def check(call: Callable[[Ctx], object], ctx: Ctx, error: type[Exception], words: tuple[str, ...]) -> str:
    with pytest.raises(error) as info:
        call(ctx)
    message = str(info.value)
    assert isinstance(info.value, ml.MllmLensError), f"{type(info.value).__name__} is not an mllm_lens error"
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def case(call: Callable[[Ctx], object], error: type[Exception], *words: str, id: str):  # noqa: A002 - pytest's name
    return pytest.param(call, error, words, id=id)


# -- probes ----------------------------------------------------------------------------------------
def _probe(ctx: Ctx, constraints, question: str = QUESTION, **kwargs) -> ml.Probe:
    return ml.Probe(ctx.image, question, constraints, **kwargs)


PROBES = [
    case(lambda c: ml.Constraint("   "), ProbeError, "constraint phrase", "non-empty", id="empty-phrase"),
    case(lambda c: ml.Constraint("x", "spatial"), ProbeError, "'visual' or 'textual'", "'spatial'", id="bad-kind"),
    case(lambda c: ml.visual("this", occurrence=-1), ProbeError, "occurrence", ">= 0", "-1", id="negative-occurrence"),
    case(lambda c: ml.visual("this", occurrence="1"), ProbeError, "occurrence", "'1'", id="string-occurrence"),
    case(lambda c: ml.visual("this", occurrence=True), ProbeError, "occurrence", "True", id="bool-occurrence"),
    case(lambda c: _probe(c, [5]), ProbeError, "ml.visual/ml.textual", "got 5", id="constraint-not-a-phrase"),
    case(lambda c: _probe(c, [("a", "visual", 1)]), ProbeError, "(phrase, kind) pair", id="constraint-triple"),
    case(lambda c: ml.Probe("photo.jpg", QUESTION), ProbeError, "PIL.Image", "str", id="image-is-a-path"),
    case(lambda c: _probe(c, [], question="  "), ProbeError, "question is empty", id="empty-question"),
    case(lambda c: _probe(c, [], question=None), ProbeError, "question must be a string", id="question-none"),
    case(lambda c: _probe(c, [], answer="  "), ProbeError, "answer is empty", "answer=None", id="empty-answer"),
    case(lambda c: _probe(c, [], answer=3), ProbeError, "answer must be a string", id="answer-not-text"),
    case(
        lambda c: _probe(c, ["this country", ml.textual("this country")]),
        ProbeError,
        "'this country'",
        "2 times",
        id="duplicate-constraint",
    ),
    case(
        lambda c: _probe(c, [ml.textual("Golden Globe")]).encode(c.model),
        ProbeError,
        "'Golden Globe' (textual) is not in the question",
        "Tokenized prompt",
        "<image>×16",
        id="phrase-not-in-question",
    ),
    case(
        lambda c: _probe(c, [ml.textual("the")], question=REPEATED).encode(c.model),
        ProbeError,
        "'the' (textual) occurs 2 times",
        "character 3",
        "character 18",
        "tokens",
        "occurrence=0..1",
        id="repeated-phrase",
    ),
    case(
        lambda c: _probe(c, [ml.textual("the", occurrence=2)], question=REPEATED).encode(c.model),
        ProbeError,
        "occurrence=2",
        "2 time(s)",
        "occurrence=0..1",
        id="occurrence-out-of-range",
    ),
    case(
        lambda c: _probe(c, ["this"], question="what is <image> this?").encode(c.model),
        ProbeError,
        "contains the image token",
        id="image-token-in-question",
    ),
    case(
        lambda c: _probe(c, [], template="<image> hello").encode(c.model),
        ProbeError,
        "no '{question}' field",
        id="template-without-question",
    ),
    case(
        lambda c: _probe(c, [], template="USER: {question}").encode(c.model),
        ProbeError,
        "no image token '<image>'",
        id="template-without-image",
    ),
    case(
        lambda c: _probe(c, [], answer="zzzunknownzzz").encode(c.model),
        ProbeError,
        "'zzzunknownzzz'",
        "unknown to the tokenizer",
        id="unknown-answer",
    ),
    case(lambda c: c.probe.constraint("this city"), ProbeError, "no constraint 'this city'", id="unknown-constraint"),
]

# -- corruptions -----------------------------------------------------------------------------------
CORRUPTIONS = [
    case(lambda c: ml.noise(scale=-3), CorruptionError, "noise() scale", "> 0", "-3", id="negative-noise-scale"),
    case(lambda c: ml.noise(scale=0), CorruptionError, "noise() scale", "got 0", id="zero-noise-scale"),
    case(lambda c: ml.noise(scale=float("nan")), CorruptionError, "finite", "nan", id="nan-noise-scale"),
    case(lambda c: ml.image_noise(scale=-1), CorruptionError, "image_noise() scale", "-1", id="negative-image-scale"),
    case(lambda c: ml.noise(seed=1.5), CorruptionError, "seed must be an int", "1.5", id="float-seed"),
    case(
        lambda c: c.trace(corrupt=ml.image_noise([999])), CorruptionError, "patch index 999", id="patch-outside-image"
    ),
    case(lambda c: c.trace(corrupt=ml.image_noise([])), CorruptionError, "empty patch list", id="empty-patch-list"),
    case(lambda c: c.trace(corrupt=ml.replace("this country", " ")), CorruptionError, "by=", id="empty-replacement"),
    case(
        lambda c: c.trace(corrupt=ml.replace("this country", "this country")),
        CorruptionError,
        "identical",
        id="identical-replacement",
    ),
    case(
        lambda c: c.trace(corrupt=ml.replace("this city", "Paris")),
        ProbeError,
        "no constraint 'this city'",
        "'this country'",
        id="replace-unknown-constraint",
    ),
    case(lambda c: as_corruption(42), CorruptionError, "unknown corruption 42", "noise()", id="unknown-corruption"),
    case(lambda c: c.trace(corrupt="nope"), ProbeError, "no constraint 'nope'", id="noise-unknown-constraint"),
]

# -- trace settings --------------------------------------------------------------------------------
TRACES = [
    case(lambda c: c.trace(window=2.5), TraceConfigError, "window must be >= 1 and an int", "2.5", id="window-float"),
    case(lambda c: c.trace(window=0), TraceConfigError, "window must be >= 1", "got 0", id="window-zero"),
    case(lambda c: c.trace(window=True), TraceConfigError, "window", "True", id="window-bool"),
    case(lambda c: c.trace(window=3), TraceConfigError, "larger than the model's 5 layers", id="window-too-large"),
    case(lambda c: c.trace(window_mode="roman"), TraceConfigError, "window_mode", "'roman'", id="window-mode"),
    case(lambda c: c.trace(site="mlpp"), TraceConfigError, "unknown site 'mlpp'", "mlp", id="unknown-site"),
    case(lambda c: c.trace(batch_size=0), TraceConfigError, "batch_size must be an int >= 1", "0", id="batch-zero"),
    case(lambda c: c.trace(batch_size=-2), TraceConfigError, "batch_size", "-2", id="batch-negative"),
    case(lambda c: c.trace(batch_size=2.0), TraceConfigError, "batch_size", "2.0", id="batch-float"),
    case(lambda c: c.trace(memory_budget=0), TraceConfigError, "memory_budget", ">= 1", id="memory-budget-zero"),
    case(lambda c: c.trace(positions=[]), TraceConfigError, "positions is empty", "positions=None", id="no-positions"),
    case(lambda c: c.trace(positions=[0, 999]), TraceConfigError, "positions must lie in", id="position-outside"),
    case(
        lambda c: ml.trace_sites(c.model, c.probe, sites=[], progress=False),
        TraceConfigError,
        "unknown site",
        id="no-sites",
    ),
    case(
        lambda c: ml.TraceSession(c.model, c.probe, sites=("mlp",), warn=False).cell("mlp", 0, 999),
        TraceConfigError,
        "position 999 outside",
        id="cell-outside",
    ),
    case(lambda c: ml.patch_sweep(c.model, c.probe, block=0), TraceConfigError, "block and stride", id="block-zero"),
    case(lambda c: ml.patch_sweep(c.model, c.probe, batch_size=0), TraceConfigError, "batch_size", id="sweep-batch"),
]

# -- loading ---------------------------------------------------------------------------------------
LOADS = [
    case(
        lambda c: ml.load("models/nope"),
        ModelNotFoundError,
        "no model folder at models/nope",
        "offline",
        "local_files_only=False",
        id="missing-folder",
    ),
    case(lambda c: ml.load(c.saved["llava"] + "x"), FileNotFoundError, "no model folder at", id="path-typo"),
    case(
        lambda c: ml.load("demo", dtype="float64"),
        OptionError,
        "dtype",
        "'float64'",
        "float32",
        "bfloat16",
        id="dtype-float64",
    ),
    case(lambda c: ml.load("demo", dtype=torch.int8), OptionError, "torch.int8", "float16", id="dtype-int8"),
    case(lambda c: ml.load("demo", device="gpu"), OptionError, "'gpu'", "'cpu', 'cuda'", id="device-unknown"),
    pytest.param(
        lambda c: ml.load("demo", device="cuda"),
        OptionError,
        ("'cuda'", "no CUDA GPU", "device='cpu'"),
        id="device-cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
    case(lambda c: ml.load(c.path("empty_model")), ModelLoadError, "empty_model is empty", id="empty-folder"),
    case(lambda c: ml.load(c.path("afile.bin")), ModelLoadError, "afile.bin is a file", "folder", id="file-as-model"),
    case(
        lambda c: ml.load(c.path("no_processor")),
        ModelLoadError,
        "no_processor lacks a tokenizer",
        "tokenizer.json",
        "processor_config.json",
        id="no-processor",
    ),
    case(
        lambda c: ml.load(c.path("no_config")), ModelLoadError, "no config.json in", "model.safetensors", id="no-config"
    ),
]

# -- files -----------------------------------------------------------------------------------------
FILES = [
    case(
        lambda c: ml.TraceResult.load(c.path("truncated.npz")),
        FileFormatError,
        "truncated.npz",
        "truncated or corrupt",
        id="truncated-trace",
    ),
    case(
        lambda c: ml.TraceResult.load(c.path("foreign.npz")),
        FileFormatError,
        "foreign.npz",
        "'meta.json'",
        id="foreign-npz",
    ),
    case(lambda c: ml.TraceResult.load(c.path("nope.npz")), MissingFileError, "nope.npz", "missing", id="no-file"),
    case(lambda c: ml.TraceResult.load(c.path("a_folder")), FileFormatError, "a_folder", "a folder", id="folder"),
    case(lambda c: ml.TraceResult.load(c.path("text.npz")), FileFormatError, "text.npz", "cannot read", id="text"),
    case(
        lambda c: ml.TraceResult.load(c.path("no_fields.npz")),
        FileFormatError,
        "no_fields.npz",
        "missing or malformed field",
        id="missing-fields",
    ),
    case(
        lambda c: ml.PatchResult.load(c.path("good.npz")),
        FileFormatError,
        "holds a 'TraceResult', not a PatchResult",
        id="trace-as-patch-result",
    ),
    case(
        lambda c: ml.PatchResult.load(c.path("truncated.npz")), FileFormatError, "truncated.npz", id="truncated-patch"
    ),
    case(
        lambda c: ml.ContributionResult.load(c.path("foreign.npz")),
        FileFormatError,
        "'meta.json'",
        "foreign.npz",
        id="foreign-contributions",
    ),
]

# -- VQA-Constraints CSVs --------------------------------------------------------------------------
CSVS = [
    case(
        lambda c: load_vqa_constraints(c.path("binary.csv")),
        VQAConstraintsFormatError,
        "binary.csv",
        "binary file",
        id="binary-csv",
    ),
    case(
        lambda c: load_vqa_constraints(c.path("latin1.csv")),
        VQAConstraintsFormatError,
        "latin1.csv",
        "not UTF-8",
        id="latin1-csv",
    ),
    case(lambda c: load_vqa_constraints(c.path("nope.csv")), MissingFileError, "nope.csv", id="missing-csv"),
    case(lambda c: load_vqa_constraints(c.path("a_folder")), FileFormatError, "is a folder", id="folder-csv"),
    case(
        lambda c: load_vqa_constraints(c.path("bad_header.csv")),
        VQAConstraintsFormatError,
        "line 1",
        "unknown header",
        id="csv-header",
    ),
    case(
        lambda c: load_vqa_constraints(c.path("bad_fields.csv")),
        VQAConstraintsFormatError,
        "line 2",
        "3 fields, expected 5",
        id="csv-fields",
    ),
    case(
        lambda c: load_vqa_constraints(c.path("bad_index.csv")),
        VQAConstraintsFormatError,
        "'zero' is not an integer",
        id="csv-index",
    ),
    case(
        lambda c: load_vqa_constraints(c.path("empty_question.csv")),
        VQAConstraintsFormatError,
        "question of row 0 is empty",
        id="csv-empty-question",
    ),
    case(
        lambda c: load_vqa_constraints(c.path("good.csv"), image_dir=c.path("no_images")),
        MissingFileError,
        "image_dir",
        "no_images",
        id="csv-image-dir",
    ),
]

# -- edits -----------------------------------------------------------------------------------------
EDITS = [
    case(lambda c: ml.edit(c.model, c.probe, "Paris", layer=99), EditError, "layer 99", "0..4", id="edit-layer"),
    case(lambda c: ml.edit(c.model, c.probe, "Paris", 1, site="embed"), EditError, "site 'embed'", id="edit-site"),
    case(lambda c: ml.edit(c.model, c.probe, "Paris", 1, method="magic"), EditError, "'magic'", id="edit-method"),
    case(lambda c: ml.edit(c.model, c.probe, "  ", layer=1), EditError, "new answer is empty", id="edit-empty"),
    case(
        lambda c: ml.edit(c.model, c.probe, "Paris", 1, constraint="nope"),
        EditError,
        "no constraint 'nope'",
        id="edit-constraint",
    ),
    case(
        lambda c: ml.edit(c.model, c.probe, "Paris", 1, key_token="middle"),
        EditError,
        "key_token",
        "'middle'",
        id="edit-key-token",
    ),
    case(lambda c: ml.edit_many(c.model, [], layers=1), EditError, "no edit requests", id="edit-none"),
    case(
        lambda c: ml.edit(c.model, c.probe, "zzzunknownzzz", layer=1),
        EditError,
        "unknown to the tokenizer",
        id="edit-unknown-answer",
    ),
]


@pytest.mark.parametrize(("call", "error", "words"), PROBES + CORRUPTIONS + TRACES + FILES + CSVS + EDITS)
def test_bad_input_is_refused_clearly(ctx, call, error, words):
    check(call, ctx, error, words)


@pytest.mark.parametrize(("call", "error", "words"), LOADS)
def test_bad_model_is_refused_before_loading_weights(ctx, no_weights, call, error, words):
    check(call, ctx, error, words)


def test_the_tokenized_view_collapses_the_image():
    probe_error = None
    model = ml.load("demo")
    image = Image.new("RGB", (64, 64))
    start, end = ml.Probe(image, "What is the capital of this country?", ["this country"]).encode(model).image_span
    try:
        ml.Probe(image, "What is the capital of this country?", ["this flag"]).encode(model)
    except ProbeError as err:
        probe_error = str(err)
    assert end - start > 1 and probe_error is not None and probe_error.count("<image>") == 1
    assert f"{start}-{end - 1}:<image>×{end - start}" in probe_error
    assert len(probe_error) < 500


def test_a_multi_token_answer_is_traced_by_its_first_token_with_a_note(ctx):
    tokens = ctx.model.tokenizer.convert_ids_to_tokens(ctx.model.tokenizer("Asia Europe")["input_ids"])
    assert "Asia" in tokens and "Europe" in tokens  # two words of the tiny vocabulary
    probe = _probe(ctx, ["this country"], answer="Asia Europe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ml.tracing.CorruptionIneffectiveWarning)
        result = ctx.trace(probe=probe, positions=[0])
    assert result.target_token == "Asia"
    assert any("2 tokens" in note and "first token 'Asia'" in note for note in result.warnings)


def test_the_chosen_occurrence_is_traced_and_replaced(ctx):
    probe = _probe(ctx, [ml.textual("the", occurrence=1)], question=REPEATED)
    encoded = probe.encode(ctx.model)
    start, end = encoded.spans["the"]
    assert encoded.tokens[start - 1 : end + 1] == ["of", "the", "country"]
    replace = ml.replace("the", "a")
    replaced = ctx.model.tokenizer.convert_ids_to_tokens(replace.corrupted_ids(ctx.model, encoded).tolist())
    assert replaced[start - 2 : end + 1] == ["capital", "of", "a", "country"]
    assert replaced.count("the") == 1  # the first "the" is left alone


def test_show_without_the_widgets_extra_names_the_pip_command(monkeypatch):
    for name in [m for m in sys.modules if m == "mllm_lens.widgets" or m.startswith("mllm_lens.widgets.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "anywidget", None)
    with pytest.raises(MissingExtraError) as info:
        _trace_result().show()
    assert isinstance(info.value, ImportError)
    assert 'pip install "mllm-lens[widgets]"' in str(info.value) and "TraceResult.show()" in str(info.value)


# -- the command line ------------------------------------------------------------------------------
def _cli(c: Ctx, *args: str) -> list[str]:
    base = {"--model": c.saved["llava"], "--image": c.path("ok.png"), "--question": QUESTION}
    given = {a for a in args if a.startswith("--")}
    argv = ["trace", *args]
    for option, value in base.items():
        if option not in given:
            argv += [option, value]
    return argv


CLI = [
    (lambda c: _cli(c, "--image", "nope.png", "--visual", "this country"), ("--image nope.png", "no such file")),
    (lambda c: _cli(c, "--image", c.path("not_an_image.png")), ("not_an_image.png", "not an image", "PNG")),
    (lambda c: _cli(c, "--image", c.path("a_folder")), ("a_folder is a folder",)),
    (lambda c: _cli(c, "--model", "/nope", "--visual", "this country"), ("no model folder at /nope",)),
    (lambda c: _cli(c, "--model", c.path("empty_model"), "--visual", "this country"), ("empty_model is empty",)),
    (
        lambda c: _cli(c, "--visual", "this country", "--out", "/proc/nope/trace.npz"),
        ("--out /proc/nope/trace.npz", "cannot write into /proc"),
    ),
    (lambda c: _cli(c, "--visual", "this country", "--out", c.path("a_folder")), ("a_folder is a folder",)),
    (lambda c: _cli(c, "--visual", "this country", "--window", "0"), ("--window", ">= 1", "0")),
    (lambda c: _cli(c, "--visual", "this country", "--window", "2.5"), ("--window", "'2.5'")),
    (lambda c: _cli(c, "--visual", "this country", "--dtype", "float64"), ("--dtype", "'float64'", "float32")),
    (lambda c: _cli(c, "--visual", "this country", "--site", "neuron"), ("--site", "'neuron'", "mlp")),
    (lambda c: _cli(c, "--visual", "this city"), ("'this city'", "not in the question")),
    (lambda c: _cli(c, "--question", REPEATED, "--visual", "the"), ("occurs 2 times", "occurs once")),
    (lambda c: _cli(c, "--visual", "this country", "--corrupt", "continent"), ("--corrupt 'continent'", "'image'")),
    (lambda c: _cli(c, "--visual", "this country", "--corrupt", "image", "--replace", "x"), ("--replace",)),
    (lambda c: _cli(c), ("nothing to corrupt", "--visual", "--corrupt image")),
    (lambda c: _cli(c, "--question", " ", "--visual", "x"), ("question is empty",)),
    (lambda c: ["trace", "--model", "demo"], ("required", "--image", "--question")),
    (lambda c: ["demo", "--country", "Narnia"], ("'Narnia'", "--list-countries")),
    (lambda c: ["demo", "--country", "Frnace"], ("did you mean France",)),
    (lambda c: ["demo", "--planted", "--layer", "9"], ("--layer must be 0..4", "got 9")),
    (lambda c: ["demo", "--layer", "1"], ("--layer applies to --planted only",)),
    (lambda c: ["demo", "--planted", "--country", "Japan"], ("--country", "not to --planted")),
    (lambda c: ["demo", "--out", c.path("ok.png")], ("ok.png is a file",)),
    (lambda c: ["explain"], ("invalid choice", "'explain'")),
]
if not torch.cuda.is_available():
    CLI.append((lambda c: _cli(c, "--visual", "this country", "--device", "cuda"), ("'cuda'", "no CUDA GPU")))


@pytest.mark.parametrize(("argv", "words"), CLI, ids=[f"cli-{i}" for i in range(len(CLI))])
def test_the_command_line_prints_one_error_line(ctx, no_weights, capsys, argv, words):
    assert main(argv(ctx)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mllm-lens: error: "), captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def test_debug_shows_the_traceback(ctx):
    with pytest.raises(MissingFileError, match="no such file"):
        main(_cli(ctx, "--image", "nope.png", "--visual", "this country", "--debug"))


def test_the_installed_command_prints_no_traceback(ctx):
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "mllm_lens.cli", *_cli(ctx, "--image", "nope.png", "--visual", "this country")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["mllm-lens: error: --image nope.png: no such file"]


def test_every_option_has_help_text():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "trace" in a.choices).choices
    for name, sub in [("mllm-lens", parser), *subparsers.items()]:
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


# -- widget messages -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explorer():
    from mllm_lens.widgets import Explorer

    ex = Explorer(ml.load("demo"), sites=("hidden",))
    yield ex
    assert ex.wait(60)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


WIDGET_MESSAGES = [
    ({"type": "explode"}, None, "MessageError", ("Unknown request type 'explode'",)),
    ([1, 2], None, "MessageError", ("JSON object", "list")),
    ({"type": "select", "index": 99}, None, "MessageError", ("Index 99 is out of range",)),
    ({"type": "select", "index": "0"}, None, "MessageError", ("Index must be an integer",)),
    ({"type": "question", "text": 3}, None, "MessageError", ("The question must be text.",)),
    ({"type": "marks", "spans": [{"start": 0, "end": 1, "kind": "secret"}]}, None, "MessageError", ("Span kind",)),
    ({"type": "marks", "spans": [{"start": 0, "end": 99, "kind": "visual"}]}, None, "MessageError", ("out of range",)),
    ({"type": "corruption", "value": "noise:Paris"}, None, "MessageError", ("Unknown corruption",)),
    ({"type": "upload", "name": "x.png"}, [b"not an image"], "MessageError", ("Cannot read the uploaded file",)),
    ({"type": "upload", "name": "x.png"}, [png(), png()], "MessageError", ("Expected one binary buffer, got 2",)),
    ({"type": "edit", "answer": "Paris", "layer": 99}, None, "MessageError", ("Layer 99 is out of range",)),
    ({"type": "edit", "answer": "Zzyzx", "layer": 2}, None, "EditError", ("unknown to the tokenizer",)),
    ({"type": "undo"}, None, "MessageError", ("There is no edit to undo",)),
]


@pytest.mark.parametrize(
    ("content", "buffers", "kind", "words"), WIDGET_MESSAGES, ids=[f"widget-{i}" for i in range(len(WIDGET_MESSAGES))]
)
def test_widget_messages_show_a_clear_error(explorer, content, buffers, kind, words):
    explorer.select(0)
    before = len(explorer.errors)
    explorer.request(content, buffers)
    assert explorer.wait(60)
    assert len(explorer.errors) == before + 1
    error = explorer.errors[-1]
    assert type(error).__name__ == kind and isinstance(error, ml.MllmLensError)
    for word in words:
        assert word in explorer.error, f"{word!r} not in {explorer.error!r}"
    assert explorer.controls.status == "idle"
