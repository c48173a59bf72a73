"""Dataset-scale runs (issue 15): resume, crash safety, refused settings, failures recorded,
skipped rows reported, aggregates on a planted-fact dataset, the CLI and the HTML report."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mllm_lens as ml
from mllm_lens.data import world
from mllm_lens.experiments import Example, RunSettings, demo_world, from_probes, open_run, vqa_constraints
from mllm_lens.experiments import runner as runner_module
from mllm_lens.experiments.aggregate import peak_layer
from mllm_lens.experiments.compute import ROLES

pytest.importorskip("pyarrow", reason="the runs extra (pyarrow, pandas) is part of the test install")

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vqa_constraints"
FAST = RunSettings(sites=("mlp",), target="prediction")


def probes(n: int) -> list[ml.Probe]:
    """``n`` probes on different random images (the tiny model's prediction is the target)."""
    out = []
    for seed in range(n):
        pixels = (np.random.default_rng(seed).random((40, 50, 3)) * 255).astype("uint8")
        out.append(
            ml.Probe(Image.fromarray(pixels), "which continent is this country in?", [ml.visual("this country")])
        )
    return out


def test_resume_computes_only_what_is_missing(models, tmp_path, monkeypatch):
    model = models["llava"]
    data = from_probes(probes(5))
    computed: list[str] = []
    original = runner_module.example_rows

    def counting(model, example, settings):
        computed.append(example.example_id)
        return original(model, example, settings)

    monkeypatch.setattr(runner_module, "example_rows", counting)
    ml.run(model, data.select(limit=2), tmp_path, FAST, progress=False)
    assert computed == ["probe-0", "probe-1"]
    ml.run(model, data, tmp_path, FAST, progress=False)  # a larger selection of the same dataset grows the run
    assert computed == ["probe-0", "probe-1", "probe-2", "probe-3", "probe-4"]
    ml.run(model, data, tmp_path, FAST, progress=False)
    assert len(computed) == 5
    table = open_run(tmp_path).table()
    assert sorted(table["example_id"]) == [f"probe-{i}" for i in range(5)]
    assert (table["status"] == "ok").all()
    row = table.iloc[0]
    assert len(row["scores"]) == row["n_layers"] * row["n_positions"] == row["n_layers"] * len(row["roles"])
    assert {"time_s", "clean_prob", "corrupted_prob", "meta_question"} <= set(table.columns)


def test_other_settings_are_refused_naming_the_keys_unless_forked(models, tmp_path):
    model, data = models["llava"], from_probes(probes(1))
    ml.run(model, data, tmp_path, FAST, progress=False)
    other = RunSettings(sites=("attn",), windows=(3,), target="prediction")
    with pytest.raises(ml.OptionError, match=r"sites: \['mlp'\] there, \['attn'\] now.*windows"):
        ml.run(model, data, tmp_path, other, progress=False)
    ml.run(model, data, tmp_path, other, fork=True, progress=False)
    assert open_run(tmp_path).settings["sites"] == ["attn"]
    forked = [p for p in tmp_path.iterdir() if p.name.startswith("forked-")]
    assert len(forked) == 1 and open_run(forked[0]).settings["sites"] == ["mlp"]  # moved aside, not deleted


def test_a_failing_example_is_recorded_and_the_run_goes_on(models, tmp_path):
    good = probes(2)

    def broken():
        raise FileNotFoundError("images/missing.jpg")

    data = from_probes(good)
    data.examples.insert(1, Example("bad", broken, {"question": "?", "answer": None}))
    ml.run(models["llava"], data, tmp_path, FAST, progress=False)
    run = open_run(tmp_path)
    failures = run.failures()
    assert list(failures["example_id"]) == ["bad"]
    assert "FileNotFoundError: images/missing.jpg" in failures.iloc[0]["error"]
    assert set(run.table()[lambda t: t["status"] == "ok"]["example_id"]) == {"probe-0", "probe-1"}


def test_answer_target_needs_answers(models, tmp_path):
    with pytest.raises(ml.OptionError, match="have no answer.*target='prediction'"):
        ml.run(models["llava"], from_probes(probes(1)), tmp_path, RunSettings(sites=("mlp",)), progress=False)
    assert not (tmp_path / "manifest.json").exists()


CRASH_SCRIPT = """
import sys, time
import mllm_lens as ml
from mllm_lens.experiments import RunSettings, from_probes, runner
sys.path.insert(0, {tests!r})
from test_experiments import probes

original = runner.example_rows
def slow(model, example, settings):
    time.sleep(0.3)  # time for the test to kill the run in the middle
    return original(model, example, settings)
runner.example_rows = slow
ml.run(ml.load({model!r}), from_probes(probes(12)), {out!r}, RunSettings(sites=("mlp",), target="prediction"),
       flush_every=1, progress=False)
"""


def test_kill_9_leaves_complete_records_and_a_rerun_finishes_identically(saved_models, models, tmp_path):
    out = tmp_path / "run"
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), model=saved_models["llava"], out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 300
    while len(list((out / "records").glob("part-*.parquet"))) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "the run wrote no shards"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_run(out).table()
    assert 3 <= partial["example_id"].nunique() < 12, "the kill came after the run finished"
    assert all(len(r["scores"]) == r["n_layers"] * r["n_positions"] for _, r in partial.iterrows())
    ml.run(models["llava"], from_probes(probes(12)), out, FAST, progress=False)  # resumes
    resumed = open_run(out).table().sort_values("example_id").reset_index(drop=True)
    assert not resumed["example_id"].duplicated().any() and len(resumed) == 12
    assert not list((out / "records").glob(".part-*"))  # the killed shard's temporary file is gone
    ml.run(models["llava"], from_probes(probes(12)), tmp_path / "whole", FAST, progress=False)
    whole = open_run(tmp_path / "whole").table().sort_values("example_id").reset_index(drop=True)
    np.testing.assert_allclose(np.stack(resumed["scores"]), np.stack(whole["scores"]), atol=1e-6)


def test_planted_dataset_peaks_at_the_planted_layer_and_is_flat_elsewhere(planted, tmp_path):
    """Known answer at dataset scale: the constraint's mean MLP effect peaks at the planted
    layer; positions the corruption cannot reach have exactly zero effect."""
    data = from_probes(planted.probes(), "planted")
    ml.run(planted.model, data, tmp_path, RunSettings(sites=("mlp",)), progress=False)
    profiles = open_run(tmp_path).role_profiles("mlp")
    assert profiles["visual"]["n"] == len(planted.facts)
    assert peak_layer(profiles, "visual") == planted.layer
    assert profiles["visual"]["lo"][planted.layer] > 0.5  # the band, not only the mean, is high
    for role in ("text", "image_early", "image_late", "textual"):
        assert np.abs(profiles[role]["mean"]).max() == 0.0, role


def test_demo_world_examples_are_stable_across_sizes():
    small, large = demo_world(5, seed=3), demo_world(40, seed=3)
    assert [e.example_id for e in small.examples] == [e.example_id for e in large.examples[:5]]
    assert [e.meta for e in small.examples] == [e.meta for e in large.examples[:5]]
    held = demo_world(5, split="held-out")
    assert {e.meta["subject"] for e in held.examples} <= set(world.HELD_OUT)


def test_vqa_constraints_rows_without_images_or_constraint_are_listed(tmp_path):
    images = tmp_path / "images"
    (images / "val2014").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "val2014" / "COCO_val2014_000000297147.jpg")
    data = vqa_constraints(DATA_DIR / "okvqa.csv", images)
    assert [e.example_id for e in data.examples] == ["row-0"]
    reasons = {s["example_id"]: s["reason"] for s in data.skipped}
    assert "no image file" in reasons["row-1"]
    with open(DATA_DIR / "okvqa.csv", encoding="utf-8", newline="") as fh:
        rows = sum(1 for row in csv.reader(fh) if row) - 1
    assert len(data.skipped) + len(data.examples) == rows  # every row is run or listed


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mllm_lens.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nope.csv"], "--dataset nope.csv: no such CSV file"),
        (["--dataset", str(DATA_DIR / "okvqa.csv")], "give --images"),
        (["--sites", "mlp,brain"], "--sites: expected a comma-separated subset"),
        (["--windows", "0"], "--windows: expected comma-separated integers >= 1"),
        (["--images", "x"], "--images belongs to a CSV dataset"),
        (["--workers", "3"], "--workers and --address apply to --backend ray"),
    ],
)
def test_cli_run_checks_inputs_before_loading(args, message, tmp_path):
    result = run_cli("run", "--model", str(tmp_path / "no-model-here"), "--out", str(tmp_path / "o"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "no-model-here" not in result.stderr  # failed on the input, not on loading the model


def test_cli_run_resume_and_summarize_report(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report.html"
    common = ["run", "--model", "demo", "--dataset", "demo-world", "--seed", "0", "--sites", "mlp", "--quiet"]
    first = run_cli(*common, "--limit", "2", "--analyses", "trace,flow", "--out", str(out))
    assert first.returncode == 0, first.stderr
    second = run_cli(*common, "--limit", "3", "--analyses", "trace,flow", "--out", str(out))
    assert second.returncode == 0 and "3 examples stored" in second.stdout
    refused = run_cli(*common, "--limit", "3", "--analyses", "trace", "--out", str(out))
    assert refused.returncode == 2 and "analyses: ['trace', 'flow'] there, ['trace'] now" in refused.stderr
    summary = run_cli("summarize", str(out), "--compare", str(out), "--out", str(report))
    assert summary.returncode == 0, summary.stderr
    assert "mlp window 1: visual-constraint effect peaks at layer" in summary.stdout
    page = report.read_text()
    assert "mean indirect effect by token role" in page and "Predicting a correct answer" in page
    assert "cdn.bokeh.org" not in page  # self-contained: opens offline
    manifest = json.loads((out / "manifest.json").read_text())["settings"]
    assert manifest["model"] == "demo" and manifest["weights"] and manifest["versions"]["transformers"]


def test_role_names_cover_every_role():
    from mllm_lens.experiments.report import ROLE_COLORS, ROLE_NAMES

    assert set(ROLE_COLORS) == set(ROLE_NAMES) == set(ROLES)


def test_ray_backend_matches_local(tmp_path):
    pytest.importorskip("ray", reason="the distributed extra is part of the test install")
    data = demo_world(4, seed=1)
    settings = RunSettings(sites=("mlp",), analyses=("trace", "flow"))
    try:
        ml.run("demo", data, tmp_path / "ray", settings, backend="ray", workers=2, progress=False)
    finally:
        ml.experiments.shutdown_ray()
    ml.run("demo", data, tmp_path / "local", settings, progress=False)
    tables = [
        open_run(tmp_path / k).table().sort_values(["example_id", "analysis"]).reset_index(drop=True)
        for k in ("ray", "local")
    ]
    assert list(tables[0]["example_id"]) == list(tables[1]["example_id"]) and len(tables[0]) == 8
    for a, b in zip(tables[0]["scores"], tables[1]["scores"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert open_run(tmp_path / "ray").settings["weights"] == open_run(tmp_path / "local").settings["weights"]


def test_weights_fingerprint_is_thread_independent_and_sees_a_rank_one_change(saved_models):
    import torch

    from mllm_lens.models.fingerprint import weights_fingerprint

    model = ml.load(saved_models["llava"])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = weights_fingerprint(model)
        torch.set_num_threads(2)
        assert weights_fingerprint(model) == single
    finally:
        torch.set_num_threads(threads)
    weight = next(p for n, p in model.hf_model.named_parameters() if "down_proj" in n)
    with torch.no_grad():
        weight += 1e-3 * torch.outer(torch.ones(weight.shape[0]), torch.ones(weight.shape[1]))
    assert weights_fingerprint(model) != single


def test_live_aggregate_redraws_as_shards_land(planted, tmp_path):
    from mllm_lens.widgets import LiveAggregate

    live = LiveAggregate(site="mlp", layers=planted.model.num_layers)
    seen: list[int] = []

    def update(folder):
        live.update(folder)
        seen.append(live.examples)

    data = from_probes(planted.probes()[:4], "planted")
    ml.run(planted.model, data, tmp_path, RunSettings(sites=("mlp",)), flush_every=1, progress=False, on_flush=update)
    assert seen[0] == 1 and seen[-1] == 4 and seen == sorted(seen)
    curve = np.asarray(live.sources["visual"].data["mean"])
    assert int(curve.argmax()) == planted.layer and "4 examples so far" in live.title.text


def test_run_without_the_runs_extra_names_the_install_before_any_work(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(ml.MissingExtraError, match=r"pip install 'mllm-lens\[runs\]'"):
        ml.run(models["llava"], from_probes(probes(1)), tmp_path / "run", FAST, progress=False)
    assert not (tmp_path / "run").exists()
