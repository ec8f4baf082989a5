"""Faces in ordinary photos: OpenCV's Haar frontal-face cascade and square crops around its boxes.

The cascade ships with opencv-python(-headless) 4.x under `cv2.data.haarcascades`, so finding
faces needs no download; FER models were trained on face crops, not on whole photos.
"""

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from fer_lab.core.errors import ConfigError


class Box(NamedTuple):
    """A face's pixel rectangle in the photo: top-left corner, width and height."""

    x: int
    y: int
    w: int
    h: int


def cascade_path(cascade: str) -> Path:
    """`cascade` as given when it is a path, else the file of that name in cv2's cascade folder."""
    given = Path(cascade).expanduser()
    if given.is_absolute() or given.parent != Path("."):
        return given
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)  # absent in OpenCV 5
    return Path(folder or "") / cascade


class FaceDetector:
    """Finds frontal faces; `scale_factor`, `min_neighbors` and `min_size` (pixels) are the
    cascade's own knobs: a smaller scale step and fewer neighbours find more faces, and more
    false ones."""

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
    ) -> None:
        if scale_factor <= 1:
            raise ConfigError(f"detector.scale_factor={scale_factor}: must be above 1, e.g. 1.1")
        if min_neighbors < 0 or min_size < 1:
            raise ConfigError(
                f"detector.min_neighbors={min_neighbors}, detector.min_size={min_size}: "
                "need min_neighbors >= 0 and min_size >= 1"
            )
        path = cascade_path(cascade)
        classifier = cv2.CascadeClassifier(str(path)) if path.is_file() else None
        if classifier is None or classifier.empty():
            raise ConfigError(
                f"detector.cascade={cascade}: no Haar cascade at {path}. It ships with "
                "opencv-python-headless 4.x under cv2.data.haarcascades; reinstall the pinned "
                "version (pip install 'opencv-python-headless>=4.9,<5') or pass the path of "
                "an OpenCV cascade XML file"
            )
        self.classifier = classifier
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, grey: np.ndarray) -> list[Box]:
        """Faces in a uint8 HxW image, left to right, so face numbers are stable across runs."""
        found = self.classifier.detectMultiScale(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        return sorted(Box(*map(int, box)) for box in found)


def crop_face(image: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """The square around `box` grown by `margin` x its size on every side; beyond the photo's
    edge the border pixels repeat, so a face at the edge is not squashed by the resize."""
    side = max(box.w, box.h)
    grow = round(margin * side)
    x0 = box.x + (box.w - side) // 2 - grow
    y0 = box.y + (box.h - side) // 2 - grow
    x1, y1 = x0 + side + 2 * grow, y0 + side + 2 * grow
    height, width = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = image[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    return crop if crop.ndim == 3 else crop[:, :, None]
