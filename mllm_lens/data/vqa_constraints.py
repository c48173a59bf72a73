"""Loader for the released VQA-Constraints annotation CSVs (Basu et al., NeurIPS 2024).

Three files are known: ``multimodal_known.csv`` (``subject``), ``multimodal_movies.csv``
(``director``, the hidden entity) and ``okvqa.csv`` (no subject column). The first, unnamed
column is the row index. Images are not part of the release: pass ``image_dir`` to attach them
(read lazily); rows whose image is missing are left out and reported, not fatal.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from mllm_lens.data.records import VQARecord
from mllm_lens.errors import MissingFileError, VQAConstraintsFormatError
from mllm_lens.probe import Probe, find_phrase

#: Known headers (after the unnamed index column) and the column holding the subject, if any.
HEADERS: dict[tuple[str, ...], str | None] = {
    ("question", "subject", "main_entity", "image_url"): "subject",
    ("question", "director", "main_entity", "image_url"): "director",
    ("question", "main_entity", "image_url"): None,
}
#: Suffixes tried, in order, when an ``image_url`` names no existing file as is.
IMAGE_SUFFIXES = ("", ".jpg", ".jpeg", ".png", ".JPEG")


class MissingImagesWarning(UserWarning):
    """Some rows were left out because their image file was not found under ``image_dir``."""


class Unlocatable(NamedTuple):
    """A row whose ``main_entity`` cannot be located in its question (so no probe is made)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index; the public field name of a row
    main_entity: str
    question: str


class VQAConstraintsDataset:
    """The loaded rows: ``records``, plus ``missing_images`` and ``unlocatable`` reports."""

    def __init__(
        self,
        records: list[VQARecord],
        *,
        source: str,
        image_dir: Path | None,
        missing_images: list[tuple[int, str]],
        unlocatable: list[Unlocatable],
    ) -> None:
        self.records = records
        self.source = source
        self.image_dir = image_dir
        self.missing_images = missing_images
        self.unlocatable = unlocatable

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[VQARecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> VQARecord:
        return self.records[i]

    def __repr__(self) -> str:
        return (
            f"VQAConstraintsDataset({self.source!r}: {len(self.records)} records, "
            f"{len(self.missing_images)} missing images, {len(self.unlocatable)} unlocatable)"
        )

    def probes(self, template: str | None = None) -> Iterator[Probe]:
        """A :class:`Probe` for each record with an image whose ``main_entity`` is in its question."""
        if self.image_dir is None:
            raise ValueError(f"{self.source} was loaded without image_dir: there are no images to probe")
        for record in self.records:
            if record.meta.get("locatable") and (record.image is not None or record.image_loader is not None):
                yield record.probe(template=template)


def _image_loader(path: Path) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB")

    return load


def _find_image(image_dir: Path, image_url: str) -> Path | None:
    relative = image_url.strip().removeprefix("./")
    if not relative:
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / (relative + suffix)
        if candidate.is_file():
            return candidate
    return None


def _clean_entity(cell: str) -> tuple[str, str | None]:
    """The first non-empty line of ``cell``, stripped, and the remaining text (None if none)."""
    lines = [line.strip() for line in cell.splitlines()]
    kept = [line for line in lines if line]
    if not kept:
        return "", None
    rest = "\n".join(kept[1:])
    return kept[0], rest or None


def _locatable(main_entity: str, question: str) -> bool:
    # The probe's own rule, on the question as the paper template inserts it (trailing "?" dropped).
    return bool(main_entity) and find_phrase(main_entity, question.strip().rstrip("?").rstrip()) >= 0


def _read_text(path: Path) -> str:
    """The file's text, or a clear error if it is missing, a folder, binary or not UTF-8."""
    if not path.exists():
        raise MissingFileError(f"no VQA-Constraints CSV at {path}")
    if not path.is_file():
        raise VQAConstraintsFormatError(f"{path} is a folder; pass one of its CSV files (e.g. okvqa.csv)")
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise VQAConstraintsFormatError(
            f"{path} is a binary file (NUL byte at offset {nul}), not a VQA-Constraints CSV (UTF-8 text)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise VQAConstraintsFormatError(
            f"{path} is not UTF-8 text (byte {data[err.start : err.start + 1]!r} at offset {err.start} cannot be "
            "decoded); a VQA-Constraints CSV is a UTF-8 text file"
        ) from None


def load_vqa_constraints(csv_path: str | Path, image_dir: str | Path | None = None) -> VQAConstraintsDataset:
    """Read one VQA-Constraints CSV into :class:`VQARecord` objects.

    Without ``image_dir`` only annotations are loaded. With it, each record gets a lazy
    ``image_loader``; rows whose image is not found are left out, listed in
    ``missing_images`` as ``(index, image_url)`` and summarised in one :class:`MissingImagesWarning`.
    Raises :class:`VQAConstraintsFormatError` (file and line named) on a malformed row or header.
    """
    path = Path(csv_path)
    images = Path(image_dir) if image_dir is not None else None
    if images is not None and not images.is_dir():
        raise MissingFileError(
            f"image_dir {images} is not a folder; pass the folder the image_url paths are relative to"
        )
    records: list[VQARecord] = []
    missing: list[tuple[int, str]] = []
    unlocatable: list[Unlocatable] = []
    with io.StringIO(_read_text(path), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = " or ".join(repr(",".join(("", *cols))) for cols in HEADERS)
        if header is None or header[0].strip() or tuple(h.strip() for h in header[1:]) not in HEADERS:
            raise VQAConstraintsFormatError(f"{path}, line 1: unknown header {header!r}; expected {expected}")
        columns = tuple(h.strip() for h in header[1:])
        subject_column = HEADERS[columns]
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue  # a blank line
            where = f"{path}, line {line}"
            if len(row) != len(header):
                raise VQAConstraintsFormatError(f"{where}: {len(row)} fields, expected {len(header)} ({header!r})")
            try:
                index = int(row[0].strip())
            except ValueError:
                raise VQAConstraintsFormatError(f"{where}: the index {row[0]!r} is not an integer") from None
            cells = dict(zip(columns, row[1:], strict=True))
            question = cells["question"].strip()
            if not question:
                raise VQAConstraintsFormatError(f"{where}: the question of row {index} is empty")
            main_entity, note = _clean_entity(cells["main_entity"])
            image_url = cells["image_url"].strip()
            meta: dict = {"line": line, "image_url": image_url, "locatable": _locatable(main_entity, question)}
            if note is not None:
                meta["annotator_note"] = note
            record = VQARecord(
                question=question,
                main_entity=main_entity,
                subject=cells[subject_column].strip() if subject_column else "",
                source=path.stem,
                index=index,
                meta=meta,
            )
            if not meta["locatable"]:
                unlocatable.append(Unlocatable(index, main_entity, question))
            if images is not None:
                found = _find_image(images, image_url)
                if found is None:
                    missing.append((index, image_url))
                    continue
                record.image_path = str(found)
                record.image_loader = _image_loader(found)
            records.append(record)
    if missing:
        examples = ", ".join(f"row {i}: {url!r}" for i, url in missing[:3])
        warnings.warn(
            f"{len(missing)} of {len(missing) + len(records)} rows of {path.name} left out: no image under "
            f"{images} (tried suffixes {IMAGE_SUFFIXES[1:]}); e.g. {examples}",
            MissingImagesWarning,
            stacklevel=2,
        )
    return VQAConstraintsDataset(
        records, source=path.stem, image_dir=images, missing_images=missing, unlocatable=unlocatable
    )
