"""The ready-made notebooks run top to bottom; the demo command works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mllm_lens as ml
from mllm_lens.cli import main

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.filterwarnings("ignore::mllm_lens.tracing.CorruptionIneffectiveWarning")  # notebooks show it
@pytest.mark.filterwarnings("ignore::mllm_lens.editing.EditIneffectiveWarning")  # notebook 05 explains it
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_runs(notebook, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), namespace)
    results = (ml.TraceResult, ml.PatchResult, ml.EditReport, ml.experiments.Run)
    assert any(isinstance(value, results) for value in namespace.values())


#: Issue 17's ceiling for a notebook saved after a full run.
MAX_SAVED_BYTES = 1_000_000


def test_widgets_notebook_saved_after_a_run_in_a_kernel_stays_small(tmp_path):
    """Notebook 03 run in a real kernel, as a user runs it, then saved: BokehJS must not be inlined
    into it (``output_notebook(INLINE)`` stored two 4 MB copies in one output)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOKS[0].parent / "03_widgets.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    saved = tmp_path / "03_widgets.ipynb"
    nbformat.write(notebook, saved)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)  # widgets shown
    assert saved.stat().st_size <= MAX_SAVED_BYTES, f"{saved.stat().st_size} bytes"


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"


def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--planted", "--layer", "1", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mlp trace" in out and "peak" in out and "at layer 1," in out.split("attn trace")[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_attn.npz", "demo_hidden.npz", "demo_mlp.npz"]


def test_demo_command_on_the_shipped_model(tmp_path, capsys):
    assert main(["demo", "--country", "Japan", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "'Tokyo'" in out and "mlp trace of 'Tokyo'" in out
    assert len(list(tmp_path.glob("demo_*.npz"))) == 3


def test_trace_command_reports_bad_input(tmp_path, capsys, saved_models):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (20, 20)).save(image)
    code = main(
        [
            "trace",
            "--model",
            saved_models["llava"],
            "--image",
            str(image),
            "--question",
            "which continent is this country in?",
            "--visual",
            "this city",
        ]
    )
    assert code == 2
    assert "'this city'" in capsys.readouterr().err
