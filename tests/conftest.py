from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

import mllm_lens as ml
from mllm_lens.testing import tiny_llava, tiny_llava_next, tiny_llava_phi

BUILDERS = {"llava": tiny_llava, "llava_phi": tiny_llava_phi, "llava_next": tiny_llava_next}


@pytest.fixture(scope="session", autouse=True)
def key_stats_cache(tmp_path_factory):
    """Key statistics (batch edits) are cached in a temporary folder, never in the user's home."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MLLM_LENS_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def planted_layer2_trained():
    """The planted-fact model with its facts in layer 2, trained once per session (~15-35 s)."""
    from mllm_lens.testing.planted import planted_fact_model

    return planted_fact_model(2)


@pytest.fixture(scope="module")
def planted(planted_layer2_trained):
    """A private copy of the layer-2 planted-fact model for each test module, so an edit a module
    makes cannot reach another module's tests."""
    return copy.deepcopy(planted_layer2_trained)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory) -> dict[str, str]:
    """Each tiny architecture saved with save_pretrained into its own folder."""
    paths = {}
    for name, build in BUILDERS.items():
        path = tmp_path_factory.mktemp(name)
        build(path)
        paths[name] = str(path)
    return paths


@pytest.fixture(scope="session")
def models(saved_models) -> dict[str, ml.LensModel]:
    """The tiny architectures loaded back through the real ``load()`` path."""
    return {name: ml.load(path) for name, path in saved_models.items()}


@pytest.fixture(params=sorted(BUILDERS))
def arch(request) -> str:
    return request.param


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8"))


@pytest.fixture
def probe(image) -> ml.Probe:
    return ml.Probe(image, "which continent is this country in?", [ml.visual("this country"), ml.textual("continent")])
