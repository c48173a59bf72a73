"""``mllm_lens.run``: one experiment over a dataset, resumable, on this machine or on Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mllm_lens.errors import MissingExtraError, OptionError
from mllm_lens.experiments.compute import example_rows
from mllm_lens.experiments.datasets import Dataset, Example, from_probes
from mllm_lens.experiments.settings import RunSettings, versions
from mllm_lens.experiments.store import RunStore, require_parquet
from mllm_lens.models.fingerprint import weights_fingerprint
from mllm_lens.models.lens_model import LensModel
from mllm_lens.probe import Probe

BACKENDS = ("local", "ray")
ModelSpec = LensModel | str | Callable[[], LensModel]


def load_model(spec: ModelSpec, device: str | None = None, dtype: str | None = None) -> LensModel:
    """A LensModel from a loaded model, a name/path for :func:`mllm_lens.load`, or a factory."""
    if isinstance(spec, LensModel):
        return spec
    if isinstance(spec, str | Path):
        from mllm_lens.models.loading import load

        return load(spec, device=device, dtype=dtype)
    return spec()


def _model_name(spec: ModelSpec, model: LensModel | None) -> str:
    if isinstance(spec, str | Path):
        return str(spec)
    if model is not None and model.name:
        return model.name
    return getattr(spec, "__qualname__", type(spec).__name__)


def run_settings(
    settings: RunSettings, dataset: Dataset, model_name: str, weights: str | None, model_options: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's settings: analyses, dataset, model and versions (``weights`` None before loading)."""
    return {
        **settings.to_dict(),
        "dataset": dataset.description,
        "selection": dataset.selection,
        "model": model_name,
        "weights": weights,
        **model_options,
        "versions": versions(),
    }


def run(
    model: ModelSpec,
    dataset: Dataset | Iterable[Probe],
    out: str | Path,
    settings: RunSettings | None = None,
    *,
    backend: str = "local",
    workers: int = 2,
    address: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    fork: bool = False,
    flush_every: int = 16,
    flush_seconds: float = 60.0,
    progress: bool = True,
    on_flush: Callable[[Path], None] | None = None,
) -> Path:
    """Run ``settings``' analyses on every example of ``dataset`` into the store ``out``.

    Re-running with the same settings resumes (examples already stored are skipped); other
    settings are refused unless ``fork``. Rows are flushed atomically every ``flush_every``
    rows or ``flush_seconds``. ``backend="ray"`` spreads examples over ``workers`` Ray actors
    (each loads the model once; ``model`` must then be a name/path or a picklable factory;
    ``address`` joins an existing cluster). ``on_flush(run_folder)`` is called after each shard
    is written (e.g. :class:`mllm_lens.widgets.LiveAggregate` redraws). Returns the run folder.
    """
    settings = RunSettings() if settings is None else settings
    require_parquet()  # before anything is written or loaded
    if backend not in BACKENDS:
        raise OptionError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ray" and isinstance(model, LensModel):
        raise OptionError("the ray backend loads the model in each worker: pass its name/path or a factory")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise OptionError(f"workers must be an integer >= 1, got {workers!r}")
    data = dataset if isinstance(dataset, Dataset) else from_probes(dataset)
    _check_targets(data, settings)
    store = RunStore(out)
    options = {"device": device, "dtype": dtype}
    loaded = model if isinstance(model, LensModel) else None
    name = _model_name(model, loaded)
    if not fork:  # other settings are refused before any model is loaded (the weights are checked after)
        store.check_resumable(run_settings(settings, data, name, None, options), ignore=("weights",))
    actors: list = []
    if backend == "local":
        loaded = load_model(model, device, dtype)
        weights = weights_fingerprint(loaded)
    else:
        actors = _ray_actors(model, options, workers, address)
        weights = _ray_fingerprint(actors)
    store.create_or_resume(run_settings(settings, data, name, weights, options), fork=fork)
    store.write_report({"skipped": data.skipped, "examples": len(data.examples)})
    done = store.done_ids()
    todo = [e for e in data.examples if e.example_id not in done]
    bar = tqdm(
        total=len(data.examples),
        initial=len(data.examples) - len(todo),
        desc="run",
        unit="example",
        disable=not progress,
    )
    rows_of = (
        (example_rows(loaded, example, settings) for example in todo)
        if loaded is not None
        else _ray_rows(actors, todo, settings)
    )
    try:
        for rows in rows_of:
            store.add(rows)
            bar.update(1)
            if store.flush_due(flush_every, flush_seconds):
                store.flush()
                if on_flush is not None:
                    on_flush(store.path)
    finally:
        store.flush()
        bar.close()
    if on_flush is not None:
        on_flush(store.path)
    return store.path


def _check_targets(data: Dataset, settings: RunSettings) -> None:
    if settings.target == "answer":
        missing = [e.example_id for e in data.examples if e.meta.get("answer") is None]
        if missing:
            raise OptionError(
                f"{len(missing)} examples of {data.description.get('name')} have no answer (e.g. {missing[0]}); "
                "trace the model's own prediction with target='prediction' (--target prediction)"
            )


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError("the ray backend needs Ray: pip install 'mllm-lens[distributed]'") from None
    return ray


def _ray_init(address: str | None) -> Any:
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


class _Worker:
    """A Ray actor: loads the model once, then computes examples."""

    def __init__(self, spec: ModelSpec, options: dict[str, Any]) -> None:
        self.model = load_model(spec, options.get("device"), options.get("dtype"))

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def rows(self, example: Example, settings: RunSettings) -> list[dict[str, Any]]:
        return example_rows(self.model, example, settings)


_actors: dict[tuple, list] = {}


def _ray_actors(spec: ModelSpec, options: dict[str, Any], workers: int, address: str | None) -> list:
    ray = _ray_init(address)
    key = (repr(spec), tuple(sorted(options.items())), workers)
    if key not in _actors:
        gpus = 1 if options.get("device", "") and str(options["device"]).startswith("cuda") else 0
        actor = ray.remote(num_cpus=1, num_gpus=gpus)(_Worker)
        _actors[key] = [actor.remote(spec, options) for _ in range(workers)]
    return _actors[key]


def _ray_fingerprint(actors: list) -> str:
    """The workers' common weights fingerprint (they must all have loaded the same weights)."""
    prints = set(_ray().get([a.fingerprint.remote() for a in actors]))
    if len(prints) != 1:
        raise OptionError(f"the Ray workers loaded different weights: {sorted(prints)}")
    return prints.pop()


def _ray_rows(actors: list, todo: list[Example], settings: RunSettings):
    """Rows of ``todo`` from the actors, as each example finishes (order is not kept)."""
    from ray.util import ActorPool

    yield from ActorPool(actors).map_unordered(lambda actor, example: actor.rows.remote(example, settings), todo)


def shutdown_ray() -> None:
    """Stop the Ray actors this process started (and Ray, if this process started it)."""
    _actors.clear()
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
