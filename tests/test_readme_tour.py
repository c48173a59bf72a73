"""README's API tour runs as written on the shipped demo model, and its results are not null.

The tour's code blocks are executed in order, in one namespace, with the demo model loaded in
place of the 7B checkpoint path and the demo world's rendering of a flag saved as the photo
the tour opens. Then: noising the visual constraint takes the answer away, the replacement by
a named country switches it, the edit takes, and knocking out the top-k patches beats random.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

import pytest

from mllm_lens.data import world

README = Path(__file__).resolve().parents[1] / "README.md"
LOAD_7B = re.compile(r'ml\.load\("/models/[^"]+"[^)]*\)')


def tour_blocks() -> list[str]:
    """The ```python blocks of README's "API tour" section, in order."""
    text = README.read_text()
    section = text.split("## API tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_tour_loads_a_7b_path_that_the_test_replaces():
    blocks = tour_blocks()
    assert len(blocks) >= 3
    assert sum(len(LOAD_7B.findall(b)) for b in blocks) == 1


@pytest.fixture
def tour(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLLM_LENS_CACHE", str(tmp_path / "cache"))
    world.render_flag("Italy", random.Random(5)).save("flag.png")
    namespace: dict = {"__name__": "readme_tour"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ineffective corruption or weak edit would warn
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TqdmExperimentalWarning.*")
        for block in tour_blocks():
            exec(compile(LOAD_7B.sub('ml.load("demo")', block), "README.md", "exec"), namespace)  # noqa: S102
    return namespace


def test_tour_results_are_not_null(tour):
    result = tour["result"]
    assert result.target_token == "Rome"
    assert result.corrupted_prob <= 0.3 * result.clean_prob  # the corruption takes the answer away
    assert result.peak()[1] in range(*result.constraint_spans["this country"])
    swapped = tour["swapped"]
    assert swapped.settings["corrupted_tokens"][swapped.constraint_spans["this country"][0]] == "Germany"
    assert swapped.corrupted_prob < 0.1  # the named country's capital replaces Rome
    knock = tour["knock"]
    assert knock.topk_drop > knock.random_drop
    report = tour["report"]
    assert report.efficacy >= 0.8 and report.specificity_drop <= 5
    assert Path("trace.npz").exists()
