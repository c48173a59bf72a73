"""Reading a run: ``open_run(DIR)`` gives its settings, report and a pandas table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mllm_lens.errors import MissingExtraError
from mllm_lens.experiments import aggregate
from mllm_lens.experiments.store import REPORT, read_manifest, read_records


class Run:
    """A run folder (complete or still being written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.settings: dict[str, Any] = read_manifest(self.path)["settings"]

    @property
    def report(self) -> dict[str, Any]:
        """What the dataset left out (``skipped`` rows with their reason) and its size."""
        file = self.path / REPORT
        return json.loads(file.read_text()) if file.exists() else {"skipped": [], "examples": None}

    def table(self):
        """One row per example and analysis (and site, window): ``example_id``, ``analysis``,
        ``status``/``error``, the scores and probabilities, ``time_s``, the example's ``meta_*``."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingExtraError("reading a run needs pandas: pip install 'mllm-lens[runs]'") from None
        records = read_records(self.path)
        if records is None:
            return pd.DataFrame(columns=["example_id", "analysis", "status", "error"])
        return records.to_pandas()

    def failures(self):
        """The rows of examples that failed, with their error."""
        table = self.table()
        return table[table["status"] == "error"][["example_id", "analysis", "error"]]

    def role_profiles(self, site: str = "mlp", window: int | None = None, effect: str = "indirect") -> dict:
        """Mean effect per layer and token role with a 95 % band (see :mod:`.aggregate`)."""
        return aggregate.role_profiles(self.table(), site, window, effect)

    def flow_table(self) -> dict[str, Any]:
        return aggregate.flow_table(self.table())

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.settings.get('model')!r}, dataset={self.settings.get('dataset')})"


def open_run(path: str | Path) -> Run:
    """Open a run folder written by :func:`mllm_lens.run` (also while it is being written)."""
    return Run(path)
