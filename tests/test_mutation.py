"""Mutation check: deliberate bugs in the method must make the suite fail.

Each mutation copies the package to a temporary folder, changes one line of the method (a
window off by one, a restoration written one position early, noise on the wrong span, an edit
of the wrong layer), and runs the tests that guard that part against the copy in a fresh
interpreter. The mutation is caught when that run fails. If one of these tests fails, the
suite has lost its power to see that bug.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

# name -> (file in the package, original text, mutated text, tests that must catch it)
MUTATIONS = {
    "window_off_by_one": (
        "tracing/windows.py",
        "lo, hi = max(0, layer - window), min(num_layers, layer + window + 1)",
        "lo, hi = max(0, layer - window + 1), min(num_layers, layer + window)",
        ["test_windows.py", "test_oracle.py"],
    ),
    "restore_one_position_early": (
        "tracing/executor.py",
        "(row, self.position_map[pos] - self.p0, pos - self.p0)",
        "(row, max(self.position_map[pos] - self.p0 - 1, 0), pos - self.p0)",
        ["test_oracle.py::test_fast_trace_equals_reference", "test_known_mechanism.py"],
    ),
    "noise_on_the_wrong_span": (
        "tracing/corruption.py",
        "        return list(range(start, end))\n\n    def apply(self, model: LensModel, encoded",
        "        return list(range(start + 1, end + 1))\n\n    def apply(self, model: LensModel, encoded",
        ["test_oracle.py::test_fast_trace_equals_reference"],
    ),
    "restart_reads_the_prefix_offset_wrong": (
        "tracing/partial.py",
        "hidden = self.outputs[start_layer][packing.positions - self.first]",
        "hidden = self.outputs[start_layer][(packing.positions - self.first - 1).clamp_min(0)]",
        [
            "test_patches.py::test_a_base_run_on_a_given_prefix_equals_the_whole_run",
            "test_trace.py::test_a_late_phrase_partial_trace_reuses_the_shared_prefix",
        ],
    ),
    "start_layer_call_misses_its_own_key": (
        "tracing/partial.py",
        "allowed = keys[None] <= positions[:, None]",
        "allowed = keys[None] < positions[:, None]",
        ["test_oracle.py::test_fast_trace_equals_reference"],
    ),
    "edit_at_the_wrong_layer": (
        "editing/multedit.py",
        "modules = [projection(model, layer, site) for layer in layer_list]",
        "modules = [projection(model, min(layer + 1, model.num_layers - 1), site) for layer in layer_list]",
        ["test_editing.py"],
    ),
}


def _mutated_copy(tmp_path: Path, relative: str, original: str, mutated: str) -> Path:
    package = tmp_path / "mllm_lens"
    shutil.copytree(ROOT / "mllm_lens", package, ignore=shutil.ignore_patterns("__pycache__"))
    target = package / relative
    source = target.read_text()
    assert source.count(original) == 1, f"{relative} no longer holds the line this mutation changes"
    target.write_text(source.replace(original, mutated))
    return tmp_path


def _run(where: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=where, env=env, capture_output=True, text=True, timeout=1800, check=False
    )


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_suite_catches_the_mutation(tmp_path, name):
    relative, original, mutated, tests = MUTATIONS[name]
    where = _mutated_copy(tmp_path, relative, original, mutated)
    imported = _run(where, ["-c", "import mllm_lens; print(mllm_lens.__file__)"])
    assert imported.stdout.strip().startswith(str(where)), imported.stdout + imported.stderr
    selected = [str(TESTS / t) for t in tests]
    options = ["-x", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml")]
    result = _run(where, ["-m", "pytest", *options, *selected])
    output = f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 1, f"mutation {name!r} was not caught:\n{output}"
