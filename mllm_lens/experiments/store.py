"""A crash-safe result store: one folder per run, Parquet shards written atomically.

Layout::

    RUN_DIR/manifest.json            the run's settings (written once, atomically)
    RUN_DIR/records/part-*.parquet   complete shards of per-example rows
    RUN_DIR/report.json              what the dataset left out (rows without an image, ...)

A shard is written to a temporary name and renamed into place, so a ``kill -9`` at any
moment leaves only complete shards: the examples of the shard being written are simply
missing and are computed again when the same command is re-run. Readers (pandas, pyarrow,
:func:`open_run`) only look at ``part-*.parquet``, so a run can be read while it is written.
Parquet needs ``pyarrow`` (the ``runs`` extra); nothing in a store needs mllm_lens to be read.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mllm_lens.errors import FileFormatError, MissingExtraError, MissingFileError, OptionError
from mllm_lens.io import atomic_path

MANIFEST = "manifest.json"
RECORDS = "records"
REPORT = "report.json"
STORE_FORMAT = 1


def require_parquet():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError(
            "dataset runs store Parquet files and need pyarrow and pandas: pip install 'mllm-lens[runs]'"
        ) from None
    return pa, pq


class RunStore:
    """The folder of one run. ``open`` it to write (new or resumed) or :func:`read_manifest` to read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    @property
    def records_dir(self) -> Path:
        return self.path / RECORDS

    def manifest(self) -> dict[str, Any]:
        """The settings the run was started with."""
        return read_manifest(self.path)

    def check_resumable(self, settings: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
        """Refuse, naming the keys, if the folder holds a run whose settings differ (but ``ignore``)."""
        if (self.path / MANIFEST).exists():
            old = read_manifest(self.path)["settings"]
            differing = [k for k in differing_keys(old, settings) if k not in ignore]
            if differing:
                _refuse(self.path, old, settings, differing)

    def create_or_resume(self, settings: dict[str, Any], *, fork: bool = False) -> bool:
        """Start the run in an empty folder, or resume one with the same settings.

        Returns True when resuming. A folder with other settings is refused, naming the keys
        that differ, unless ``fork`` (then the old records are moved aside, never deleted).
        """
        manifest_file = self.path / MANIFEST
        if manifest_file.exists():
            old = read_manifest(self.path)["settings"]
            differing = differing_keys(old, settings)
            if differing and not fork:
                _refuse(self.path, old, settings, differing)
            if differing:
                aside = self.path / f"forked-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
                aside.mkdir()
                for name in (MANIFEST, RECORDS, REPORT):
                    if (self.path / name).exists():
                        (self.path / name).rename(aside / name)
        elif self.path.exists() and any(p for p in self.path.iterdir() if not p.name.startswith(".")):
            raise OptionError(f"{self.path} is not empty and holds no mllm_lens run; give an empty or new folder")
        self.records_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.records_dir.glob(".part-*.tmp"):  # a shard being written when a run was killed
            stale.unlink(missing_ok=True)
        if manifest_file.exists():
            return True
        with atomic_path(manifest_file) as tmp:
            tmp.write_text(json.dumps({"format": STORE_FORMAT, "settings": settings}, indent=1, sort_keys=True))
        return False

    def done_ids(self) -> set[str]:
        """Examples with a complete record (ok or error) in a written shard."""
        table = read_records(self.path, columns=["example_id"])
        return set() if table is None else set(table.column("example_id").to_pylist())

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Queue one example's rows; they reach disk at the next :meth:`flush`."""
        self._pending.extend(rows)

    def flush_due(self, every_rows: int, every_seconds: float) -> bool:
        return bool(self._pending) and (
            len(self._pending) >= every_rows or time.monotonic() - self._last_flush >= every_seconds
        )

    def flush(self) -> None:
        """Write the queued rows as one new shard, atomically (temporary name, then rename)."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        pa, pq = require_parquet()
        columns = list(dict.fromkeys(k for row in self._pending for k in row))  # from_pylist reads row 0's keys only
        table = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in self._pending])
        target = self.records_dir / f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        self._pending = []

    def write_report(self, report: dict[str, Any]) -> None:
        with atomic_path(self.path / REPORT) as tmp:
            tmp.write_text(json.dumps(report, indent=1, sort_keys=True, default=str))


def _refuse(path: Path, old: dict[str, Any], new: dict[str, Any], differing: list[str]) -> None:
    details = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differing)
    raise OptionError(
        f"{path} holds a run with other settings ({details}); use another folder, or fork=True (--fork) to "
        "start over there (the old records are moved aside)"
    )


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings keys whose values differ (the versions and the selection from the dataset are
    recorded but never block a resume: a run may grow with a larger --limit)."""
    informative = {"versions", "selection"}
    keys = (set(old) | set(new)) - informative
    return sorted(k for k in keys if old.get(k) != new.get(k))


def read_manifest(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    file = folder / MANIFEST
    if not folder.exists():
        raise MissingFileError(f"no run folder {folder}")
    if not file.exists():
        raise MissingFileError(f"{folder} is not an mllm_lens run: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileFormatError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or "settings" not in manifest:
        raise FileFormatError(f"{file} is not an mllm_lens run manifest (no 'settings')")
    return manifest


def read_records(path: str | Path, columns: list[str] | None = None):
    """Every complete shard of the run as one pyarrow Table (None before the first shard)."""
    pa, pq = require_parquet()
    shards = sorted((Path(path) / RECORDS).glob("part-*.parquet"))
    if not shards:
        return None
    tables = [pq.read_table(shard, columns=columns) for shard in shards]
    return pa.concat_tables(tables, promote_options="permissive")
