"""Bad rows and image files stop the load with a message naming them, or are skipped and kept."""

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from fer_lab.core.errors import DataError
from fer_lab.data.faces import BadItem, image_problem
from fer_lab.data.fer2013 import FER2013_CLASSES, FER2013CSV
from fer_lab.data.fer2013_folder import FER2013Folder
from fer_lab.data.image_csv import ImageFolderCSV
from fer_lab.data.validation import parse_pixel_rows

from .helpers import compose_config, run_cli, write_fer2013_csv, write_image

# Per class and Usage; 7 classes, so Training rows are lines 2-15, PublicTest 16-22 and
# PrivateTest 23-29 (the header is line 1).
SIZES = {"Training": 2, "PublicTest": 1, "PrivateTest": 1}
ROWS = 28
GOOD_PIXELS = " ".join(["7"] * 2304)
LEGEND_CLASSES = ["anger", "happiness", "neutral", "sadness", "surprise"]


def fer_csv(tmp_path: Path, replace: dict[int, str] | None = None) -> Path:
    """The small Kaggle CSV, with the given lines (1-based) replaced."""
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SIZES)
    lines = path.read_text().splitlines()
    for number, text in (replace or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def pixels_with(token: str) -> str:
    return " ".join([token] + ["7"] * 2303)


BAD_ROWS = {
    "short": ("2,1 2 3,Training", "3 pixel values, expected 2304"),
    "long": (f"2,{GOOD_PIXELS} 7,Training", "2305 pixel values, expected 2304"),
    "too bright": (f"2,{pixels_with('300')},Training", "pixel value 300 out of range 0..255"),
    "negative": (f"2,{pixels_with('-1')},Training", "pixel value -1 out of range 0..255"),
    "wraps in uint8": (f"2,{pixels_with('65541')},Training", "pixel value 65541 out of range"),
    "not a number": (f"2,{pixels_with('abc')},Training", "non-numeric pixel value 'abc'"),
    "decimal": (f"2,{pixels_with('1.5')},Training", "non-numeric pixel value '1.5'"),
    "empty pixels": ("2,,Training", "empty pixels field"),
    "unknown emotion": (f"9,{GOOD_PIXELS},Training", "unknown emotion code 9"),
    "text emotion": (f"sad,{GOOD_PIXELS},Training", "non-numeric emotion code 'sad'"),
    "empty emotion": (f",{GOOD_PIXELS},Training", "empty emotion field"),
    "misspelt Usage": (f"2,{GOOD_PIXELS},Trainig", "unknown Usage 'Trainig'"),
    "extra field": (f"2,{GOOD_PIXELS},Training,x", "expected 3 fields, saw 4"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_fer2013_bad_row_stops_the_load_naming_file_line_and_fix(tmp_path: Path, case) -> None:
    row, reason = BAD_ROWS[case]
    path = fer_csv(tmp_path, {5: row})
    with pytest.raises(DataError) as error:
        FER2013CSV(str(path), FER2013_CLASSES).load()
    message = str(error.value)
    assert message.startswith(f"{path}: 1 bad row:")
    assert "line 5" in message and reason in message
    assert "dataset.on_bad_data=skip" in message


@pytest.mark.parametrize("case", BAD_ROWS)
def test_fer2013_skip_keeps_the_good_rows_and_records_the_bad(tmp_path: Path, case) -> None:
    row, reason = BAD_ROWS[case]
    path = fer_csv(tmp_path, {5: row})
    splits = FER2013CSV(str(path), FER2013_CLASSES, on_bad_data="skip").load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (13, 7, 7)
    (item,) = splits.skipped
    assert (item.source, item.line) == (str(path), 5)
    assert reason in item.reason
    assert item.split == (None if case == "extra field" else row.split(",")[2])


def test_fer2013_lists_twenty_bad_rows_and_the_total(tmp_path: Path) -> None:
    path = fer_csv(tmp_path, {line: "2,1 2,Training" for line in range(2, 27)})
    with pytest.raises(DataError) as error:
        FER2013CSV(str(path), FER2013_CLASSES).load()
    message = str(error.value)
    assert "25 bad rows" in message and "... and 5 more" in message
    assert "line 21 " in message and "line 22 " not in message


def test_fer2013_line_numbers_count_blank_and_skipped_lines(tmp_path: Path) -> None:
    path = fer_csv(tmp_path, {3: "", 4: f"2,{GOOD_PIXELS},Training,x", 7: "2,1,Training"})
    splits = FER2013CSV(str(path), FER2013_CLASSES, on_bad_data="skip").load()
    assert [item.line for item in splits.skipped] == [4, 7]
    assert len(splits.train) == 11  # 14 Training lines, one blank and two bad


def test_fer2013_rows_of_other_classes_are_unused_not_bad(tmp_path: Path) -> None:
    # line 2 is angry (code 0): outside happy/sad, so its pixels do not matter
    path = fer_csv(tmp_path, {2: "0,1 2 3,Training"})
    splits = FER2013CSV(str(path), ["happy", "sad"]).load()
    assert (len(splits.train), splits.skipped) == (4, [])


def test_fer2013_usage_named_in_splits_is_valid(tmp_path: Path) -> None:
    path = fer_csv(tmp_path)
    path.write_text(path.read_text().replace("PublicTest", "Dev"))
    splits = {"train": "Training", "val": "Dev", "test": "PrivateTest"}
    assert len(FER2013CSV(str(path), FER2013_CLASSES, splits=splits).load().val) == 7


def test_fer2013_empty_split_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = fer_csv(tmp_path, {line: "2,1 2,PublicTest" for line in range(16, 23)})
    with pytest.raises(DataError) as error:
        FER2013CSV(str(path), ["happy", "sad"], on_bad_data="skip").load()
    message = str(error.value)
    assert "val split is empty" in message and "'PublicTest'" in message
    assert "['happy', 'sad']" in message


def test_fer2013_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_text(f"emotion,pixels\n3,{GOOD_PIXELS}\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['Usage'\]"):
        FER2013CSV(str(path), FER2013_CLASSES).load()


def test_fer2013_unreadable_csv_names_the_file(tmp_path: Path) -> None:
    path = fer_csv(tmp_path, {3: f'2,"{GOOD_PIXELS},Training'})
    with pytest.raises(DataError, match="not a readable CSV") as error:
        FER2013CSV(str(path), FER2013_CLASSES).load()
    assert str(path) in str(error.value)


@pytest.mark.parametrize("loader", [FER2013CSV, FER2013Folder, ImageFolderCSV])
def test_unknown_policy_names_the_setting(loader) -> None:
    with pytest.raises(DataError, match=r"dataset\.on_bad_data .*'ignore'"):
        loader("unused", ["happy"], on_bad_data="ignore")


@pytest.mark.parametrize(
    "dataset", ["fer2013", "fer2013_happy_sad", "fer2013_folder", "image_folder_csv"]
)
def test_dataset_configs_default_to_error_and_take_skip(dataset: str) -> None:
    assert compose_config(f"dataset={dataset}").dataset.on_bad_data == "error"
    cfg = compose_config(f"dataset={dataset}", "dataset.on_bad_data=skip")
    assert instantiate(cfg.dataset).on_bad_data == "skip"


def test_pixel_rows_fast_and_row_by_row_parses_agree() -> None:
    clean = " ".join(map(str, range(256)))
    images, reasons = parse_pixel_rows([clean, f" {clean}", clean.replace(" ", "\t")], 256)
    assert reasons == [None, None, None]
    assert (images == np.arange(256, dtype=np.uint8)).all()
    _, reasons = parse_pixel_rows([clean, f"{'9' * 30} {clean[2:]}"], 256)
    assert reasons == [None, f"pixel value {'9' * 30} out of range 0..255"]


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_images_are_detected(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"face{suffix}"
    write_image(path, 96, 96, False, 0)
    assert image_problem(path) is None
    for keep in (0.3, 0.6, 0.9, 0.99):
        write_image(path, 96, 96, False, 0)
        truncate(path, keep)
        assert image_problem(path) == "truncated image", keep


def test_cv2_alone_would_accept_a_truncated_jpeg(tmp_path: Path) -> None:
    """Why the loaders check end markers rather than trusting cv2.imread."""
    path = tmp_path / "face.jpg"
    write_image(path, 96, 96, False, 0)
    truncate(path)
    assert cv2.imread(str(path)) is not None
    assert image_problem(path) == "truncated image"


def test_folder_reports_truncated_unreadable_and_non_image_files(fer2013_folder: Path) -> None:
    happy = fer2013_folder / "train" / "Happy"
    truncate(happy / "train_300.jpg")
    (happy / "train_301.jpg").write_text("not a picture")
    (happy / "notes.txt").write_text("to do")
    (happy / ".DS_Store").write_bytes(b"\0\1")
    with pytest.raises(DataError) as error:
        FER2013Folder(str(fer2013_folder), FER2013_CLASSES).load()
    message = str(error.value)
    assert message.startswith(f"{fer2013_folder}: 3 bad files:")
    assert "train/Happy/train_300.jpg [train]: truncated image" in message
    assert "train/Happy/train_301.jpg [train]: not a readable image" in message
    assert "train/Happy/notes.txt [train]: not an image file" in message
    assert ".DS_Store" not in message


def test_folder_skip_leaves_bad_files_out(fer2013_folder: Path) -> None:
    bad_file = fer2013_folder / "test" / "Sad" / "test_400.png"
    write_image(bad_file, 48, 48, False, 1)
    truncate(bad_file)
    splits = FER2013Folder(str(fer2013_folder), FER2013_CLASSES, on_bad_data="skip").load()
    assert splits.skipped == [BadItem(str(bad_file), None, "test", "truncated image")]
    assert len(splits.test) == 21 and bad_file not in splits.test.images


def test_folder_duplicates_within_a_split_and_across_train_test(fer2013_folder: Path) -> None:
    train = fer2013_folder / "train"
    (train / "Sad" / "train_300.jpg").write_bytes((train / "Happy" / "train_300.jpg").read_bytes())
    leaked = fer2013_folder / "test" / "Fear" / "test_200.jpg"
    (train / "Fear" / "test_200.jpg").write_bytes(leaked.read_bytes())
    splits = FER2013Folder(str(fer2013_folder), FER2013_CLASSES, on_bad_data="skip").load()
    reasons = {
        Path(item.source).relative_to(train).as_posix(): item.reason for item in splits.skipped
    }
    assert reasons == {
        "Sad/train_300.jpg": "duplicate of train/Happy/train_300.jpg",
        "Fear/test_200.jpg": "duplicate of test/Fear/test_200.jpg (train/test leakage)",
    }
    with pytest.raises(DataError, match="2 bad files"):
        FER2013Folder(str(fer2013_folder), FER2013_CLASSES).load()


def test_folder_class_with_no_usable_image_is_an_error_even_when_skipping(
    fer2013_folder: Path,
) -> None:
    for path in (fer2013_folder / "test" / "Disgust").iterdir():
        truncate(path)
    with pytest.raises(DataError, match=r"no usable images of class\(es\) \['disgust'\]") as error:
        FER2013Folder(str(fer2013_folder), FER2013_CLASSES, on_bad_data="skip").load()
    assert f"{fer2013_folder / 'test'}:" in str(error.value)


def legend_rows(legend: Path, replace: dict[int, str]) -> None:
    lines = legend.read_text().splitlines()
    for number, text in replace.items():
        lines[number - 1] = text
    legend.write_text("\n".join(lines) + "\n")


def test_legend_reports_missing_truncated_duplicate_and_unknown_rows(legend_dataset: Path) -> None:
    images = legend_dataset.parent / "images"
    (images / "img_7.png").unlink()
    truncate(images / "img_3.jpg")
    legend_rows(
        legend_dataset, {4: "user2,images/img_0.jpg,anger", 6: "user0,images/img_4.png,Bored"}
    )
    with pytest.raises(DataError) as error:
        ImageFolderCSV(str(legend_dataset), LEGEND_CLASSES).load()
    message = str(error.value)
    assert message.startswith(f"{legend_dataset}: 4 bad rows:")
    assert "images/img_0.jpg (line 4): duplicate of line 2" in message
    assert "images/img_3.jpg (line 5): truncated image" in message
    assert "line 6: 'Bored' is not in dataset.classes" in message
    assert "images/img_7.png (line 9): file not found" in message
    assert f"dataset.classes: {LEGEND_CLASSES}" in message


def test_legend_skip_keeps_the_rest(legend_dataset: Path) -> None:
    truncate(legend_dataset.parent / "images" / "img_3.jpg")
    legend_rows(legend_dataset, {6: "user0,images/img_4.png,Contempt "})
    splits = ImageFolderCSV(str(legend_dataset), LEGEND_CLASSES, on_bad_data="skip").load()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 58
    assert [(item.line, item.reason) for item in splits.skipped] == [
        (5, "truncated image"),
        (6, "'Contempt ' is not in dataset.classes"),
    ]


def test_legend_labels_match_in_any_case_and_spacing(legend_dataset: Path) -> None:
    legend_rows(
        legend_dataset, {2: "user0,images/img_0.jpg,  SURPRISE\t", 3: "u,images/img_1.png,Anger"}
    )
    splits = ImageFolderCSV(str(legend_dataset), LEGEND_CLASSES).load()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 60


def test_legend_class_whose_images_are_all_bad_is_an_error(legend_dataset: Path, caplog) -> None:
    images = legend_dataset.parent / "images"
    for i in range(3, 60, 5):  # every sadness row
        truncate(images / f"img_{i}.{'png' if i % 3 else 'jpg'}")
    classes = [*LEGEND_CLASSES, "fear"]
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match=r"\['sadness'\]"):
        ImageFolderCSV(str(legend_dataset), classes, on_bad_data="skip").load()
    assert "no rows for class(es) ['fear']" in caplog.text


@pytest.mark.slow
def test_cli_stops_on_a_bad_fer2013_row_with_exit_code_2(tmp_path: Path) -> None:
    path = fer_csv(tmp_path, {9: f"2,{pixels_with('256')},Training"})
    result = run_cli(
        tmp_path, "dataset=fer2013", f"dataset.path={path}", "model=convnet0", "trainer=debug"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "line 9 [Training]: pixel value 256 out of range 0..255" in output
    assert "dataset.on_bad_data=skip" in output
    assert "Traceback" not in output
