"""README's API tour runs as written on the shipped demo model.

The tour's code blocks are executed in order, in one namespace, with the demo model loaded in
place of the 7B checkpoint path and the demo world's rendering of a flag saved as the photo
the tour opens. The second test asserts what the demo model, which routes facts through the
visual constraint (issue 11), must show: the paper's defaults give results, not nulls.
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


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> dict:
    """The tour's namespace after running it, with the warnings it raised under ``"caught"``."""
    where = tmp_path_factory.mktemp("tour")
    patch = pytest.MonkeyPatch()
    patch.chdir(where)
    patch.setenv("MLLM_LENS_CACHE", str(where / "cache"))
    world.render_flag("Italy", random.Random(5)).save("flag.png")
    namespace: dict = {"__name__": "readme_tour"}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for block in tour_blocks():
                exec(compile(LOAD_7B.sub('ml.load("demo")', block), "README.md", "exec"), namespace)  # noqa: S102
        namespace["caught"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        namespace["cwd"] = where
        yield namespace
    finally:
        patch.undo()


def test_the_tour_runs_as_written_on_the_demo_model(tour):
    result = tour["result"]
    assert result.target_token == "Rome" and result.clean_prob > 0.5
    assert result.scores.shape == (4, len(result.labels))
    assert set(tour["by_site"]) == {"hidden", "mlp", "attn"}
    swapped = tour["swapped"]
    last = swapped.constraint_spans["this country"][1] - 1
    assert swapped.labels[last] == "country→Germany"  # a replacement of another length, aligned
    assert tour["knock"].k == 32 and len(tour["knock"].random_drops) == 20
    assert 0 <= tour["flow"].confidence_auroc <= 1  # known and never-seen countries: both classes
    assert 0 <= tour["report"].efficacy <= 1 and "efficacy" in tour["report"].table()
    assert (tour["cwd"] / "trace.npz").exists()


def test_the_tours_results_are_not_null(tour):
    result = tour["result"]
    assert result.corrupted_prob <= 0.3 * result.clean_prob  # the corruption takes the answer away
    assert tour["swapped"].corrupted_prob < 0.1  # the named country's capital replaces Rome
    assert tour["knock"].topk_drop > tour["knock"].random_mean
    assert tour["report"].efficacy >= 0.8 and tour["report"].specificity_drop <= 5
    assert not [w for w in tour["caught"] if "says little" in w]
