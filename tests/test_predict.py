"""`python -m fer_lab.predict` on generated photos: faces found, cropped, classified, written."""

import csv
import gzip
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from fer_lab.core.errors import ConfigError
from fer_lab.data.faces import read_image
from fer_lab.inference.checkpoint import load_trained
from fer_lab.inference.face_detection import Box, FaceDetector, crop_face
from fer_lab.inference.photos import FacePredictor, list_images, predict

from .helpers import REAL_FER2013, REPO_ROOT, write_face_photo, write_image

COLOUR_FACE = (150, 40, 160)  # x, y, side in colour.jpg
GREY_FACE = (30, 30, 150)  # in grey.jpg


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A colour JPEG with a face, a grayscale JPEG with a face, and a noise PNG without one."""
    folder = tmp_path / "photos"
    write_face_photo(folder / "colour.jpg", 240, 360, [COLOUR_FACE], colour=True, seed=1)
    write_face_photo(folder / "grey.jpg", 220, 200, [GREY_FACE], colour=False, seed=2)
    write_image(folder / "noise.png", 120, 160, colour=True, seed=3)
    return folder


def run_predict(*overrides: str) -> tuple[dict[str, int], list[dict[str, str]]]:
    """`predict` on the config the CLI composes; returns its counts and the CSV's rows."""
    with initialize_config_module("fer_lab.conf", version_base="1.3"):
        cfg = compose("predict", overrides=list(overrides))
    counts = predict(cfg)
    with open(cfg.output, newline="") as handle:
        return counts, list(csv.DictReader(handle))


def centre_inside(row: dict[str, str], face: tuple[int, int, int]) -> bool:
    x, y, side = face
    centre_x, centre_y = int(row["x"]) + int(row["w"]) / 2, int(row["y"]) + int(row["h"]) / 2
    return x < centre_x < x + side and y < centre_y < y + side


def test_test_faces_are_detected_at_many_sizes(tmp_path: Path) -> None:
    detector = FaceDetector()
    for seed in range(6):
        side = 60 + 30 * seed
        face = (seed * 17, seed * 9, side)
        write_face_photo(tmp_path / "face.jpg", side + 70, side + 120, [face], bool(seed % 2), seed)
        grey = cv2.imread(str(tmp_path / "face.jpg"), cv2.IMREAD_GRAYSCALE)
        (box,) = detector.detect(grey)
        assert centre_inside(box._asdict(), face), (seed, box)


def test_each_face_is_classified_with_class_probabilities(
    trained_checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    output, annotated = tmp_path / "out" / "preds.csv", tmp_path / "annotated"
    counts, rows = run_predict(
        f"ckpt_path={trained_checkpoint}",
        f"images={photos}",
        f"output={output}",
        f"annotate_dir={annotated}",
    )
    assert counts == {"images": 3, "faces": 2, "no face": 1, "unreadable": 0}
    classes = load_trained(trained_checkpoint).classes
    box = ["x", "y", "w", "h"]
    assert list(rows[0]) == ["file", "face", *box, "emotion", "confidence", *classes, "note"]
    by_file = {Path(row["file"]).name: row for row in rows}
    assert len(rows) == len(by_file) == 3
    assert centre_inside(by_file["colour.jpg"], COLOUR_FACE)
    assert centre_inside(by_file["grey.jpg"], GREY_FACE)
    for name in ("colour.jpg", "grey.jpg"):
        row = by_file[name]
        probabilities = np.array([float(row[c]) for c in classes])
        assert row["face"] == "0"
        assert probabilities.sum() == pytest.approx(1, abs=1e-4)
        assert row["emotion"] == classes[probabilities.argmax()]
        assert float(row["confidence"]) == probabilities.max()
    no_face = by_file["noise.png"]
    assert (no_face["face"], no_face["x"], no_face["emotion"]) == ("-1", "", "no face")
    assert no_face[classes[0]] == ""
    for name in ("colour.jpg", "grey.jpg", "noise.png"):
        copy = cv2.imread(str(annotated / name))
        assert copy.shape[:2] == cv2.imread(str(photos / name)).shape[:2]
        assert not np.array_equal(copy, cv2.imread(str(photos / name)))  # something drawn


def test_detect_false_gives_one_row_per_whole_image(
    trained_checkpoint: Path, photos: Path, tmp_path: Path
) -> None:
    counts, rows = run_predict(
        f"ckpt_path={trained_checkpoint}",
        f"images={photos}/*",
        f"output={tmp_path / 'preds.csv'}",
        "detect=false",
    )
    assert counts["faces"] == len(rows) == 3
    boxes = {Path(row["file"]).name: (row["x"], row["y"], row["w"], row["h"]) for row in rows}
    assert boxes["noise.png"] == ("0", "0", "160", "120")
    assert {row["face"] for row in rows} == {"0"}


def test_unreadable_file_gets_a_row_and_a_warning(
    trained_checkpoint: Path, photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        counts, rows = run_predict(
            f"ckpt_path={trained_checkpoint}",
            f"images={photos}/*.jpg",
            f"output={tmp_path / 'preds.csv'}",
        )
    assert counts == {"images": 3, "faces": 2, "no face": 0, "unreadable": 1}
    (broken,) = [row for row in rows if row["file"].endswith("broken.jpg")]
    assert (broken["face"], broken["emotion"], broken["note"]) == (
        "-1",
        "unreadable",
        "not a readable image",
    )
    assert "broken.jpg: could not be read" in caplog.text


@pytest.mark.parametrize(
    ("dataset", "colour"),
    [("fer_lab.data.image_csv.ImageFolderCSV", True), ("fer_lab.data.fer2013.FER2013CSV", False)],
)
def test_rgb_models_see_photos_as_their_training_images_were(
    trained_checkpoint: Path, photos: Path, dataset: str, colour: bool
) -> None:
    """Colour crops for a model trained on colour photos; grey x3 for one trained on FER2013."""
    trained = load_trained(trained_checkpoint)
    trained.config.model.in_channels = 3  # untrained RGB convnet0: only the input matters here
    trained.config.dataset._target_ = dataset
    trained.net = instantiate(trained.config.model).eval()
    inputs = []
    trained.net.register_forward_hook(lambda _net, args, _out: inputs.append(args[0]))
    predictor = FacePredictor(trained, FaceDetector(), margin=0.1, device=torch.device("cpu"))
    ((_, probabilities),) = predictor(read_image(photos / "colour.jpg", 3))
    (batch,) = inputs
    assert batch.shape == (1, 3, 48, 48)
    assert torch.equal(batch[0, 0], batch[0, 2]) is not colour
    assert probabilities.sum() == pytest.approx(1, abs=1e-5)


def test_a_pattern_without_files_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"images=.*nothing/\*\.jpg: no image files"):
        list_images(str(tmp_path / "nothing" / "*.jpg"))


def test_a_missing_cascade_names_the_opencv_pin() -> None:
    with pytest.raises(ConfigError, match=r"no Haar cascade at .*opencv-python-headless>=4.9,<5"):
        FaceDetector(cascade="no_such_cascade.xml")


def test_crops_are_square_also_at_the_photo_edge() -> None:
    grey = np.arange(100 * 80, dtype=np.uint8).reshape(100, 80, 1)
    crop = crop_face(grey, Box(60, 0, 20, 30), margin=0.5)
    assert crop.shape == (60, 60, 1)  # side 30, grown by 15 on each side, edges repeated


@pytest.mark.slow
def test_cli_writes_csv_and_summary_relative_to_the_working_dir(
    trained_checkpoint: Path, photos: Path
) -> None:
    def cli(*overrides: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fer_lab.predict", f"ckpt_path={trained_checkpoint}"]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(
            [*command, *overrides], cwd=photos.parent, env=env, capture_output=True, text=True
        )

    result = cli("images=photos/*.jpg", "output=preds.csv", "device=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 images, 2 faces; without a face: 0, unreadable: 0" in result.stdout
    assert (photos.parent / "preds.csv").read_text().count("\n") == 3

    result = cli("images=elsewhere/*.png")
    assert result.returncode == 2
    assert "images=elsewhere/*.png: no image files match" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.fer2013
@pytest.mark.skipif(not REAL_FER2013.is_file(), reason=f"needs {REAL_FER2013}")
def test_real_fer2013_faces_are_detected(trained_checkpoint: Path, tmp_path: Path) -> None:
    """The default detector settings on real faces: FER2013's tight 48x48 crops, enlarged and
    placed in a bigger photo; about 7 in 10 are found (the crops cut off the face outline)."""
    with gzip.open(REAL_FER2013, "rt") as handle:
        next(handle)
        pixels = [next(handle).split(",")[1] for _ in range(20)]
    for i, values in enumerate(pixels):
        face = np.array(values.split(), dtype=np.uint8).reshape(48, 48)
        photo = np.full((240, 320), 120, np.uint8)
        photo[40:184, 100:244] = cv2.resize(face, (144, 144), interpolation=cv2.INTER_CUBIC)
        (tmp_path / "photos").mkdir(exist_ok=True)
        assert cv2.imwrite(str(tmp_path / "photos" / f"{i:02}.png"), photo)
    counts, _ = run_predict(
        f"ckpt_path={trained_checkpoint}",
        f"images={tmp_path / 'photos'}",
        f"output={tmp_path / 'preds.csv'}",
    )
    assert counts["images"] == 20
    assert counts["no face"] <= 10
