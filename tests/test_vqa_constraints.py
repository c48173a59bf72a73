"""The VQA-Constraints CSV loader, on the released files and on malformed copies."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from mllm_lens.data import MissingImagesWarning, VQAConstraintsDataset, VQARecord, load_vqa_constraints
from mllm_lens.errors import MllmLensError, VQAConstraintsFormatError
from mllm_lens.probe import Probe

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vqa_constraints"
KNOWN_HEADER = ",question,subject,main_entity,image_url\n"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    """The folder of released CSVs (``../shared/data`` beside the checkout, as in CI): required."""
    assert DATA_DIR.is_dir(), f"VQA-Constraints CSVs not found at {DATA_DIR}: check out ../shared beside the repo"
    return DATA_DIR


@pytest.mark.parametrize(
    ("name", "rows", "unlocatable"),
    [("multimodal_known", 1204, 0), ("multimodal_movies", 3214, 0), ("okvqa", 5045, 240)],
)
def test_real_files_load_all_rows(data_dir: Path, name: str, rows: int, unlocatable: int) -> None:
    dataset = load_vqa_constraints(data_dir / f"{name}.csv")
    assert isinstance(dataset, VQAConstraintsDataset)
    assert len(dataset) == rows
    assert len(dataset.unlocatable) == unlocatable
    assert dataset.missing_images == []
    for record in dataset:
        assert isinstance(record, VQARecord)
        assert record.source == name
        assert record.question and "\n" not in record.main_entity
        assert record.image is None and record.image_loader is None and record.image_path is None
        assert record.answer is None and record.textual_constraints == []


def test_row_zero_fields(data_dir: Path) -> None:
    known = load_vqa_constraints(data_dir / "multimodal_known.csv")[0]
    assert (known.index, known.question, known.subject, known.main_entity) == (
        0,
        "This building is located in",
        "Space Needle",
        "This building",
    )
    assert known.meta["image_url"] == "./A photo of Space Needle"
    movies = load_vqa_constraints(data_dir / "multimodal_movies.csv")[0]
    assert (movies.question, movies.subject, movies.main_entity) == (
        "Name a movie directed by this director?",
        "Ron Fricke",
        "this director",
    )
    okvqa = load_vqa_constraints(data_dir / "okvqa.csv")[0]
    assert (okvqa.question, okvqa.subject, okvqa.main_entity) == ("What sport can you use this for?", "", "this")
    assert okvqa.meta["image_url"] == "./val2014/COCO_val2014_000000297147.jpg"


def test_okvqa_index_gap_and_multiline_entities(data_dir: Path) -> None:
    dataset = load_vqa_constraints(data_dir / "okvqa.csv")
    by_index = {r.index: r for r in dataset}
    assert 3188 not in by_index and {3187, 3189} <= set(by_index)
    last = by_index[5045]  # the last row: no final newline
    assert (last.question, last.main_entity) == ("What fruit is typically added to the top of cereal?", "fruit")
    assert by_index[529].main_entity == "this drink" and "annotator_note" not in by_index[529].meta
    assert by_index[1096].main_entity == "bird"
    assert by_index[1107].main_entity == "cat" and by_index[1107].meta["annotator_note"] == "this image"
    assert by_index[1531].main_entity == "this animal" and by_index[1531].meta["annotator_note"] == "this object"
    assert by_index[2782].main_entity == "it" and by_index[2782].meta["annotator_note"].startswith("(Note:")
    assert by_index[1107].meta["line"] == 1112  # the physical line where the record starts
    unlocatable = {u.index: u for u in dataset.unlocatable}
    assert unlocatable[529] == (529, "this drink", "What drink is this?")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def _image(path: Path, color: tuple[int, int, int], mode: str = "RGB") -> None:
    """Write a small image; a name without a known extension is saved as PNG."""
    image = Image.new("RGB", (12, 10), color).convert(mode)
    image.save(path, format=None if path.suffix else "PNG")


def test_image_dir_missing_images_lazy_loading_and_probes(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "multimodal_known.csv",
        KNOWN_HEADER
        + "0,This building is located in,Space Needle,This building,./A photo of Space Needle\n"
        + "1,This mountain is in,Vinson Massif,This mountain,./A photo of Vinson Massif\n"
        + "2,This company is owned by,Audible.com,That firm,./A photo of Audible.com\n"
        + "3,This service is owned by,Beats Music,This service,./A photo of Beats Music\n"
        + "4,This river flows into,Rhine,This river,./A photo of Rhine\n"
        + "5,This lake is in,Lake Baikal,This lake,./A photo of Lake Baikal\n"
        + '6,This city is the capital of,Paris,"this city\n",./A photo of Paris\n',
    )
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "A photo of Space Needle.jpg", (200, 10, 10))
    _image(images / "A photo of Audible.com.jpeg", (10, 200, 10))
    _image(images / "A photo of Rhine.png", (90, 90, 90), mode="L")
    _image(images / "A photo of Paris", (10, 10, 200))  # no extension: found as is
    with pytest.warns(MissingImagesWarning) as caught:
        dataset = load_vqa_constraints(csv_path, image_dir=images)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "3 of 7" in message and "Vinson Massif" in message and "Lake Baikal" in message
    assert dataset.missing_images == [
        (1, "./A photo of Vinson Massif"),
        (3, "./A photo of Beats Music"),
        (5, "./A photo of Lake Baikal"),
    ]
    assert [r.index for r in dataset] == [0, 2, 4, 6]
    assert [u.index for u in dataset.unlocatable] == [2]  # "That firm" is not in its question
    assert all(r.image is None and r.image_loader is not None for r in dataset)  # nothing opened yet
    assert dataset[1].image_path == str(images / "A photo of Audible.com.jpeg")
    first = dataset[0].load_image()
    assert first.mode == "RGB" and first.size == (12, 10) and first.getpixel((0, 0))[0] > 150
    assert dataset[2].load_image().mode == "RGB"  # the grey PNG is converted
    probe = dataset[3].probe()
    assert isinstance(probe, Probe) and probe.constraint().text == "this city"
    probes = list(dataset.probes(template="<image>\nQ: {question}\nA:"))
    assert [p.question for p in probes] == [dataset[i].question for i in (0, 2, 3)]
    assert all(p.template == "<image>\nQ: {question}\nA:" for p in probes)


def test_no_warning_when_all_images_exist(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "k.csv", KNOWN_HEADER + "0,This building is in,X,This building,./a\n")
    _image(tmp_path / "a.jpg", (1, 2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = load_vqa_constraints(csv_path, image_dir=tmp_path)
    assert len(dataset) == 1 and dataset.missing_images == []


def test_probes_needs_image_dir(tmp_path: Path) -> None:
    dataset = load_vqa_constraints(_write(tmp_path / "k.csv", KNOWN_HEADER + "0,This is in,X,This,./a\n"))
    with pytest.raises(ValueError, match="without image_dir"):
        list(dataset.probes())


def test_crlf_and_quoted_newlines_keep_line_numbers(tmp_path: Path) -> None:
    text = (
        ',question,main_entity,image_url\r\n0,What is this?,"this\n\nnote",./a.jpg\r\n1,Why?,x,./b.jpg\r\n2,,y,./c.jpg'
    )
    with pytest.raises(VQAConstraintsFormatError, match=r"line 6\b.*question of row 2 is empty"):
        load_vqa_constraints(_write(tmp_path / "okvqa.csv", text))


@pytest.mark.parametrize(
    ("body", "line", "fault"),
    [
        ("0,A is,X,A,./a\nx1,B is,Y,B,./b\n", 3, "index 'x1' is not an integer"),
        ("0,A is,X,A,./a\n1,B is,Y,B\n", 3, "4 fields, expected 5"),
        ('0,"A\nis",X,A,./a\n1,B is,Y,B,./b,extra\n', 4, "6 fields, expected 5"),
        ("0,A is,X,A,./a\n1,B is,Y,B,./b\n2,  ,Z,C,./c\n", 4, "question of row 2 is empty"),
        ("0,A is,X,A,./a\n\n1,,Y,B,./b\n", 4, "question of row 1 is empty"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, body: str, line: int, fault: str) -> None:
    path = _write(tmp_path / "bad.csv", KNOWN_HEADER + body)
    with pytest.raises(VQAConstraintsFormatError) as info:
        load_vqa_constraints(path)
    message = str(info.value)
    assert str(path) in message and f"line {line}:" in message and fault in message
    assert isinstance(info.value, MllmLensError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("header", [",question,entity,image_url\n", "idx,question,main_entity,image_url\n", ""])
def test_unknown_header_names_expected_columns(tmp_path: Path, header: str) -> None:
    path = _write(tmp_path / "bad.csv", header + "0,A is,A,./a\n" if header else "")
    with pytest.raises(VQAConstraintsFormatError, match="line 1: unknown header") as info:
        load_vqa_constraints(path)
    assert "',question,main_entity,image_url'" in str(info.value) and str(path) in str(info.value)
