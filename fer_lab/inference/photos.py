"""What `python -m fer_lab.predict` does: the expression of every face in ordinary photos, as a
CSV.

Faces are found with OpenCV's Haar cascade, cropped, and fed to the network exactly as its
training images were (size, channels, normalisation, from the checkpoint's own config).
"""

import csv
import glob
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fer_lab.core.errors import ConfigError
from fer_lab.data.faces import IMAGE_SUFFIXES, image_problem, read_image, to_channels
from fer_lab.inference.checkpoint import TrainedModel, inference_device, load_trained
from fer_lab.inference.face_detection import Box, FaceDetector, crop_face

log = logging.getLogger(__name__)

NO_FACE, UNREADABLE = "no face", "unreadable"
Row = list[str | int | float]


def list_images(images: str) -> list[Path]:
    """`images=`: one file, a folder's image files, or a glob; relative to the working dir."""
    path = Path(images).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if len(found) < len(files):
            others = [p.name for p in files if p not in found]
            log.warning("%s: not images by their suffix, left out: %s", path, others)
    else:
        matches = glob.glob(str(path), recursive=True)
        found = sorted(Path(p) for p in matches if Path(p).is_file())
    if not found:
        raise ConfigError(
            f"images={images}: no image files match (looked in {Path.cwd()}); pass a file, "
            f"a folder of {'/'.join(IMAGE_SUFFIXES)} files, or a glob like 'photos/*.jpg'"
        )
    return found


class FacePredictor:
    """Finds the faces of a photo and gives each one's class probabilities."""

    def __init__(
        self,
        trained: TrainedModel,
        detector: FaceDetector | None,
        margin: float,
        device: torch.device,
    ) -> None:
        self.net = trained.net.to(device)
        self.transform = trained.eval_transform()
        self.channels = trained.channels
        self.colour = trained.colour
        self.detector = detector
        self.margin = margin
        self.device = device

    def __call__(self, rgb: np.ndarray) -> list[tuple[Box, np.ndarray]]:
        """(box, probabilities) per face of a uint8 HxWx3 photo; without a detector the whole
        photo is the one face (resized as the training loaders resize whole images)."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        model_input = rgb if self.colour else to_channels(grey, self.channels)
        if self.detector is None:
            boxes = [Box(0, 0, rgb.shape[1], rgb.shape[0])]
            crops = [model_input]
        else:
            boxes = self.detector.detect(grey)
            crops = [crop_face(model_input, box, self.margin) for box in boxes]
        if not crops:
            return []
        batch = torch.stack([self.transform(image=crop)["image"].float() for crop in crops])
        with torch.inference_mode():
            probabilities = torch.softmax(self.net(batch.to(self.device)), dim=1).cpu().numpy()
        return list(zip(boxes, probabilities, strict=True))


def annotate(
    rgb: np.ndarray, faces: list[tuple[Box, np.ndarray]], classes: list[str]
) -> np.ndarray:
    """A BGR copy of the photo with each face's box and top class with its probability."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(0.4, min(image.shape[:2]) / 600)
    thickness = max(1, round(2 * scale))
    labels = [(box, f"{classes[p.argmax()]} {p.max():.2f}") for box, p in faces]
    for box, label in labels or [(Box(0, 0, 0, 0), NO_FACE)]:
        cv2.rectangle(image, (box.x, box.y), (box.x + box.w, box.y + box.h), (0, 255, 0), thickness)
        (width, height), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, box.y - height - base)  # above the box, or inside it at the photo's top
        cv2.rectangle(image, (box.x, top), (box.x + width, top + height + base), (0, 0, 0), -1)
        origin = (box.x, top + height)
        cv2.putText(image, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 0), thickness)
    return image


def annotated_path(path: Path, root: Path, annotate_dir: Path) -> Path:
    """Where the annotated copy goes: the photo's path under `root`, mirrored in `annotate_dir`
    (so same-named photos from two folders do not collide), as PNG where cv2 cannot write
    the original format."""
    target = annotate_dir / path.resolve().relative_to(root)
    return target if cv2.haveImageWriter(str(target)) else target.with_suffix(".png")


def faceless_row(path: Path, what: str, classes: list[str], note: str = "") -> Row:
    """The row of a photo without a face (`what` is NO_FACE) or that could not be read."""
    return [str(path), -1, "", "", "", "", what, "", *[""] * len(classes), note]


def prediction_rows(
    paths: list[Path], predictor: FacePredictor, classes: list[str], annotate_dir: Path | None
) -> Iterator[Row]:
    """One row per face, and one per photo without a face or that could not be read."""
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    for path in paths:
        problem = image_problem(path)
        if problem:
            log.warning("%s: could not be read (%s); its row says so", path, problem)
            yield faceless_row(path, UNREADABLE, classes, problem)
            continue
        rgb = read_image(path, 3)
        faces = predictor(rgb)
        if annotate_dir is not None:
            target = annotated_path(path, root, annotate_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), annotate(rgb, faces, classes))
        if not faces:
            yield faceless_row(path, NO_FACE, classes)
        for index, (box, probabilities) in enumerate(faces):
            best = int(probabilities.argmax())
            shares = [round(float(p), 6) for p in probabilities]
            yield [str(path), index, *box, classes[best], shares[best], *shares, ""]


def predict(cfg: DictConfig) -> dict[str, int]:
    """Write the predictions CSV (and annotated copies); returns the counts in the summary."""
    for key in ("ckpt_path", "images"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(
                f"{key}= is required: python -m fer_lab.predict ckpt_path=... images=..."
            )
    if cfg.margin < 0:
        raise ConfigError(f"margin={cfg.margin}: must be >= 0 (a fraction of the face box)")
    device = inference_device(cfg.device)
    paths = list_images(cfg.images)  # the quick checks first, then the checkpoint
    detector = FaceDetector(**cfg.detector) if cfg.detect else None
    trained = load_trained(cfg.ckpt_path)
    predictor = FacePredictor(trained, detector, cfg.margin, device)
    annotate_dir = Path(cfg.annotate_dir).expanduser().resolve() if cfg.annotate_dir else None
    output = Path(cfg.output).expanduser()
    header = ["file", "face", "x", "y", "w", "h", "emotion", "confidence", *trained.classes, "note"]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle = output.open("w", newline="")
    except OSError as error:
        raise ConfigError(f"output={cfg.output}: cannot write ({error.strerror})") from error
    counts = {"images": len(paths), "faces": 0, NO_FACE: 0, UNREADABLE: 0}
    with handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in prediction_rows(paths, predictor, trained.classes, annotate_dir):
            writer.writerow(row)
            emotion = row[6]  # or NO_FACE / UNREADABLE for a photo without a face row
            counts[emotion if emotion in (NO_FACE, UNREADABLE) else "faces"] += 1
    log.info(
        "%d images, %d faces; without a face: %d, unreadable: %d; predictions in %s%s",
        *counts.values(),
        output,
        f", annotated copies in {annotate_dir}" if annotate_dir else "",
    )
    return counts
