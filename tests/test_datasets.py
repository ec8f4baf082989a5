"""Each dataset loader reads fixtures in its real format and yields the right splits."""

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from hydra.utils import instantiate

from fer_lab.core.errors import DataError
from fer_lab.data.download import extract_fer2013_csv
from fer_lab.data.fer2013 import FER2013_CLASSES, FER2013CSV
from fer_lab.data.fer2013_folder import FER2013Folder
from fer_lab.data.image_csv import ImageFolderCSV
from fer_lab.data.transforms import build_transforms

from .helpers import REAL_FER2013, compose_config, write_fer2013_csv

SPLIT_SIZES = {"Training": 4, "PublicTest": 2, "PrivateTest": 1}


def datamodule(dataset: str, model: str, *overrides: str):
    cfg = compose_config(f"dataset={dataset}", f"model={model}", "data.num_workers=0", *overrides)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_fer2013_csv_splits_by_usage(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"fer2013{suffix}"
    labels = write_fer2013_csv(path, SPLIT_SIZES)
    splits = FER2013CSV(str(path), FER2013_CLASSES).load()
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        faces = getattr(splits, split)
        assert faces.images.shape == (7 * SPLIT_SIZES[usage], 48, 48)
        assert faces.images.dtype == np.uint8
        assert faces.labels.tolist() == labels[usage]


def test_fer2013_csv_accepts_the_other_suffix(tmp_path: Path) -> None:
    write_fer2013_csv(tmp_path / "fer2013.csv.gz", SPLIT_SIZES)
    assert len(FER2013CSV(str(tmp_path / "fer2013.csv"), FER2013_CLASSES).load().train) == 28


def test_fer2013_pixels_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    pixels = np.arange(48 * 48) % 256
    path.write_text(
        "emotion,pixels,Usage\n"
        + "".join(
            f"{c},{' '.join(map(str, pixels))},{u}\n"
            for c, u in ((3, "Training"), (4, "PublicTest"), (5, "PrivateTest"))
        )
    )
    splits = FER2013CSV(str(path), FER2013_CLASSES).load()
    assert (splits.train.images[0] == pixels.reshape(48, 48)).all()
    assert splits.val.labels.tolist() == [4]


def test_happy_sad_subset_relabels_in_class_order(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SPLIT_SIZES)
    dm = datamodule("fer2013_happy_sad", "dachapally", f"dataset.path={path}")
    assert dm.classes == ["happy", "sad"]
    assert dm.class_counts("train") == [4, 4]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 48, 48)
    assert set(labels.tolist()) == {0, 1}


def test_fer2013_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kaggle competitions download") as error:
        FER2013CSV(str(tmp_path / "fer2013.csv"), FER2013_CLASSES).load()
    assert str(tmp_path / "fer2013.csv") in str(error.value)


def test_fer2013_wrong_pixel_count_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(path, SPLIT_SIZES)
    lines = path.read_text().splitlines()
    lines[3] = "2,1 2 3,Training"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 4\b"):
        FER2013CSV(str(path), FER2013_CLASSES).load()


def test_unknown_class_name_is_rejected() -> None:
    with pytest.raises(DataError, match="contempt"):
        FER2013CSV("unused.csv", ["happy", "contempt"])


def test_fer2013_folder_holds_out_a_seeded_validation_split(fer2013_folder: Path) -> None:
    source = FER2013Folder(str(fer2013_folder), FER2013_CLASSES, val_fraction=0.2, seed=3)
    splits = source.load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (56, 14, 21)
    assert np.bincount(splits.val.labels).tolist() == [2] * 7
    assert not set(splits.train.images) & set(splits.val.images)
    again = FER2013Folder(str(fer2013_folder), FER2013_CLASSES, val_fraction=0.2, seed=3).load()
    assert again.val.images == splits.val.images


def test_fer2013_folder_batches(fer2013_folder: Path) -> None:
    dm = datamodule(
        "fer2013_folder", "convnet5", f"dataset.path={fer2013_folder}", "data.batch_size=5"
    )
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (5, 1, 48, 48)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_legend_csv_normalises_labels_and_splits_like_seed_002(legend_dataset: Path) -> None:
    source = ImageFolderCSV(
        str(legend_dataset),
        ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"],
    )
    splits = source.load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 5, 5)
    every = np.concatenate([splits.train.labels, splits.val.labels, splits.test.labels])
    assert sorted(set(every.tolist())) == [0, 4, 5, 6, 7]


def test_legend_photos_become_rgb_224_for_the_transfer_model(legend_dataset: Path) -> None:
    dm = datamodule(
        "image_folder_csv", "vgg16_transfer", f"dataset.path={legend_dataset}", "data.batch_size=4"
    )
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 224, 224)


def test_legend_unknown_label_names_the_line(legend_dataset: Path) -> None:
    text = legend_dataset.read_text().replace(
        "user3,images/img_3.jpg,sadness", "user3,images/img_3.jpg,bored"
    )
    legend_dataset.write_text(text)
    with pytest.raises(DataError, match=r"line 5: 'bored'"):
        ImageFolderCSV(
            str(legend_dataset), ["anger", "happiness", "neutral", "sadness", "surprise"]
        ).load()


def test_legend_missing_image_is_reported(legend_dataset: Path) -> None:
    (legend_dataset.parent / "images" / "img_7.png").unlink()
    with pytest.raises(DataError, match=r"img_7\.png"):
        ImageFolderCSV(
            str(legend_dataset), ["anger", "happiness", "neutral", "sadness", "surprise"]
        ).load()


LEGEND_CLASSES = ["anger", "happiness", "neutral", "sadness", "surprise"]


@pytest.fixture
def muxspace_dataset(legend_dataset: Path) -> Path:
    """The muxspace facial_expressions checkout: data/legend.csv lists bare file names, the
    photos are in images/ beside data/ (legend_dataset's photos, where they already are)."""
    root = legend_dataset.parent
    legend = root / "data" / "legend.csv"
    legend.parent.mkdir()
    legend.write_text(legend_dataset.read_text().replace(",images/", ","))
    legend_dataset.unlink()
    return legend


def test_muxspace_layout_finds_images_beside_data(muxspace_dataset: Path) -> None:
    cfg = compose_config("dataset=image_folder_csv", f"dataset.path={muxspace_dataset}")
    assert cfg.dataset.image_root is None
    splits = instantiate(cfg.dataset).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 5, 5)
    images = muxspace_dataset.parent.parent / "images"
    assert all(Path(path).parent == images for path in splits.train.images)


def test_images_beside_the_csv_come_first(muxspace_dataset: Path) -> None:
    """With the listed files both beside the CSV and in ../images, the CSV's folder wins."""
    for photo in (muxspace_dataset.parent.parent / "images").iterdir():
        shutil.copy(photo, muxspace_dataset.parent)
    splits = ImageFolderCSV(str(muxspace_dataset), LEGEND_CLASSES).load()
    assert all(Path(path).parent == muxspace_dataset.parent for path in splits.train.images)


def test_images_nowhere_near_is_one_error_naming_the_folders(muxspace_dataset: Path) -> None:
    images = muxspace_dataset.parent.parent / "images"
    images.rename(images.with_name("photos"))
    with pytest.raises(DataError) as error:
        ImageFolderCSV(str(muxspace_dataset), LEGEND_CLASSES, on_bad_data="skip").load()
    message = str(error.value)
    assert message.startswith(f"{muxspace_dataset}: 60 of 60 listed images not found")
    assert f"  {muxspace_dataset.parent} (beside the CSV): 60 of 60 missing, e.g. " in message
    assert f"  {images} (images/ beside the CSV's folder): 60 of 60 missing, e.g. " in message
    assert f"e.g. {images / 'img_0.jpg'}" in message
    assert "dataset.image_root=/path/to/images" in message
    assert "file not found" not in message  # no list of files
    assert len(message.splitlines()) == 4


def test_explicit_image_root_is_used(muxspace_dataset: Path) -> None:
    images = muxspace_dataset.parent.parent / "images"
    photos = images.rename(images.with_name("photos"))
    cfg = compose_config(
        "dataset=image_folder_csv",
        f"dataset.path={muxspace_dataset}",
        f"dataset.image_root={photos}",
    )
    splits = instantiate(cfg.dataset).load()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 60
    assert all(Path(path).parent == photos for path in splits.train.images)


def test_explicit_image_root_is_the_only_folder_searched(muxspace_dataset: Path) -> None:
    """A wrong image_root is not second-guessed, though images/ would hold the files."""
    empty = muxspace_dataset.parent.parent / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as error:
        ImageFolderCSV(str(muxspace_dataset), LEGEND_CLASSES, image_root=str(empty)).load()
    message = str(error.value)
    assert (
        f"  {empty} (dataset.image_root): 60 of 60 missing, e.g. {empty / 'img_0.jpg'}" in message
    )
    assert "beside the CSV" not in message


def test_a_few_missing_muxspace_images_are_bad_rows_with_lines(muxspace_dataset: Path) -> None:
    images = muxspace_dataset.parent.parent / "images"
    for name in ("img_7.png", "img_8.png"):
        (images / name).unlink()
    with pytest.raises(DataError) as error:
        ImageFolderCSV(str(muxspace_dataset), LEGEND_CLASSES).load()
    message = str(error.value)
    assert message.startswith(f"{muxspace_dataset}: 2 bad rows:")
    assert f"{images / 'img_7.png'} (line 9): file not found" in message
    assert f"{images / 'img_8.png'} (line 10): file not found" in message
    assert "dataset.on_bad_data=skip" in message
    skipped = ImageFolderCSV(str(muxspace_dataset), LEGEND_CLASSES, on_bad_data="skip").load()
    assert [item.line for item in skipped.skipped] == [9, 10]


def test_half_missing_is_still_bad_rows(legend_dataset: Path) -> None:
    for i in range(0, 60, 2):
        (legend_dataset.parent / "images" / f"img_{i}.{'png' if i % 3 else 'jpg'}").unlink()
    splits = ImageFolderCSV(str(legend_dataset), LEGEND_CLASSES, on_bad_data="skip").load()
    assert len(splits.skipped) == 30


@pytest.mark.fer2013
@pytest.mark.slow
@pytest.mark.skipif(not REAL_FER2013.exists(), reason="real FER2013 not beside the repository")
def test_real_fer2013_has_the_official_split_sizes() -> None:
    splits = FER2013CSV(str(REAL_FER2013), FER2013_CLASSES).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (28709, 3589, 3589)
    assert np.bincount(splits.test.labels).tolist() == [491, 55, 528, 879, 594, 416, 626]


def test_download_extracts_fer2013_csv_from_the_competition_bundle(tmp_path: Path) -> None:
    payload = b"emotion,pixels,Usage\n"
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        info = tarfile.TarInfo("fer2013/fer2013.csv")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("example_submission.csv", "id\n")
        archive.writestr("fer2013.tar.gz", tar_bytes.getvalue())
    assert extract_fer2013_csv(bundle, tmp_path).read_bytes() == payload


def test_augmentation_reaches_training_only() -> None:
    image = np.zeros((48, 48, 1), dtype=np.uint8)
    image[:, :10] = 255
    flip = A.HorizontalFlip(p=1.0)
    train, evaluation = build_transforms(48, [flip], A.ToFloat(max_value=255))
    assert train(image=image)["image"][0, 0, -1] == 1.0
    assert evaluation(image=image)["image"][0, 0, 0] == 1.0
    assert evaluation(image=image)["image"].shape == (1, 48, 48)
