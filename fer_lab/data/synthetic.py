"""Procedurally drawn 48x48 grayscale faces for the seven FER2013 expressions.

This is the embedded default dataset for the demo and the tests: it needs no download, is
deterministic for a given seed, and is learnable by a small CNN without being trivially
separable from raw pixels (pose, lighting, noise and expression intensity all vary per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from fer_lab.data.faces import Faces, FaceSplits, class_indices

EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_SUPERSAMPLE = 2  # faces are drawn at twice the output size, then area-downsampled
_SHIFT_BITS = 4  # sub-pixel precision for cv2 drawing calls
_FIXED = 1 << _SHIFT_BITS
_PAD = 0.2  # canvas margin (face-image units): pose jitter never drags the head to the border


class _Expr(NamedTuple):
    """Facial action parameters; 0 everywhere (except scales at 1) is a neutral face."""

    brow_raise: float  # + raises both brows
    brow_tilt: float  # + lowers the inner ends (anger), - raises them (sadness, fear)
    brow_asym: float  # + lowers one brow only (disgust)
    eye_open: float  # eye height scale
    mouth_width: float  # mouth width scale
    mouth_curve: float  # + corners up (smile), - corners down (frown)
    mouth_open_up: float  # how far the upper lip lifts off the mouth line
    mouth_open_down: float  # how far the lower lip drops
    mouth_asym: float  # + raises one mouth corner and upper lip side (disgust sneer)
    nose_wrinkle: float  # strength of wrinkle lines beside the nose


_PROTOTYPES: tuple[_Expr, ...] = (
    _Expr(-0.8, 1.2, 0.0, 0.6, 0.8, -0.5, 0.0, 0.0, 0.0, 0.3),  # angry
    _Expr(-0.3, 0.3, 1.0, 0.55, 0.9, -0.25, 0.35, 0.0, 1.2, 1.0),  # disgust
    _Expr(0.7, -1.1, 0.0, 1.4, 1.3, -0.4, 0.2, 0.5, 0.0, 0.0),  # fear
    _Expr(0.0, 0.0, 0.0, 0.7, 1.3, 1.2, 0.05, 0.5, 0.0, 0.0),  # happy
    _Expr(0.1, -1.1, 0.0, 0.8, 0.9, -1.0, 0.0, 0.0, 0.0, 0.0),  # sad
    _Expr(1.2, 0.0, 0.0, 1.7, 0.6, 0.0, 0.6, 0.9, 0.0, 0.0),  # surprise
    _Expr(0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # neutral
)
_NEUTRAL = np.asarray(_PROTOTYPES[EXPRESSIONS.index("neutral")], dtype=np.float64)
_PARAM_NOISE = np.array([0.2, 0.2, 0.1, 0.12, 0.1, 0.2, 0.05, 0.08, 0.1, 0.1])


def _pt(x: float, y: float, s: float) -> tuple[int, int]:
    """Normalised (0..1) coordinates to fixed-point coordinates on the padded canvas."""
    return round((x + _PAD) * s * _FIXED), round((y + _PAD) * s * _FIXED)


def _axes(a: float, b: float, s: float) -> tuple[int, int]:
    """Normalised ellipse semi-axes to fixed-point canvas lengths (no margin offset)."""
    return round(a * s * _FIXED), round(b * s * _FIXED)


def _curve(xs: np.ndarray, ys: np.ndarray, s: float) -> np.ndarray:
    """Normalised polyline to a fixed-point int32 point array for cv2.polylines/fillPoly."""
    return np.round((np.stack([xs, ys], axis=1) + _PAD) * s * _FIXED).astype(np.int32)


def _oval(
    canvas: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    colour: float,
    thickness: int,
    s: float,
    arc: tuple[int, int] = (0, 360),
) -> None:
    """Draw an anti-aliased ellipse (filled when ``thickness`` is -1) in normalised units."""
    cv2.ellipse(
        canvas,
        _pt(*centre, s),
        _axes(*axes, s),
        0,
        *arc,
        float(colour),
        thickness,
        cv2.LINE_AA,
        _SHIFT_BITS,
    )


def _draw_face(p: _Expr, side: float, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw one face with expression parameters ``p``; ``side`` (+-1) picks the asymmetric half."""
    s = float(size * _SUPERSAMPLE)
    aa, sb = cv2.LINE_AA, _SHIFT_BITS
    u = rng.uniform(size=15)

    # Background: grey level plus a linear lighting ramp in a random direction.
    bg, ramp, angle = 30 + 200 * u[0], 60 * (u[1] - 0.5), 2 * np.pi * u[2]
    grid = np.linspace(-0.5 - _PAD, 0.5 + _PAD, round(s * (1 + 2 * _PAD)), dtype=np.float32)
    light = bg + ramp * (np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None])
    canvas = np.clip(light, 0, 255).astype(np.uint8)  # cv2 anti-aliases only 8-bit images

    skin = 95 + 120 * u[3]
    dark = skin * (0.15 + 0.25 * u[4])
    cx, cy = 0.5 + 0.03 * (u[5] - 0.5), 0.52
    head_w, head_h = 0.34 + 0.06 * u[6], 0.44 + 0.05 * u[7]
    if u[8] < 0.7:  # hair: a darker, slightly larger oval peeking out above the head
        hair = max(0.0, skin - 60 - 60 * u[9])
        _oval(canvas, (cx, cy - 0.07), (head_w + 0.035, head_h), hair, -1, s)
    _oval(canvas, (cx, cy), (head_w, head_h), skin, -1, s)

    eye_y = 0.44 + 0.04 * (u[10] - 0.5)
    eye_dx = 0.145 + 0.03 * u[11]
    eye_w = 0.065 + 0.015 * u[12]
    eye_h = max(0.012, 0.036 * p.eye_open)
    lw = max(1, round(s / 40))  # stroke width on the supersampled canvas
    for sgn in (-1.0, 1.0):
        ex = cx + sgn * eye_dx
        _oval(canvas, (ex, eye_y), (eye_w, eye_h), min(255.0, skin + 45), -1, s)
        _oval(canvas, (ex, eye_y), (eye_w, eye_h), dark, lw, s)
        iris = min(0.03, eye_h * 0.95)
        cv2.circle(canvas, _pt(ex, eye_y, s), round(iris * s * _FIXED), float(dark), -1, aa, sb)

        # Brow: inner end at the nose side; tilt moves the inner end, asym lowers one side.
        lower = p.brow_asym if sgn == side else 0.0
        by = eye_y - 0.09 - 0.06 * p.brow_raise + 0.05 * lower
        inner = (cx + sgn * (eye_dx - eye_w * 0.9), by + 0.06 * p.brow_tilt)
        mid = (cx + sgn * eye_dx, by - 0.012)
        outer = (cx + sgn * (eye_dx + eye_w * 1.3), by + 0.008 - 0.01 * p.brow_tilt)
        brow = _curve(*np.array([inner, mid, outer]).T, s)
        cv2.polylines(canvas, [brow], False, float(dark), 2 * lw, aa, sb)

    # Nose: a short bridge plus a base arc; disgust adds wrinkle lines beside it.
    nose_y = 0.61 + 0.03 * (u[13] - 0.5)
    shade = float(skin * 0.7)
    cv2.line(canvas, _pt(cx, eye_y + 0.04, s), _pt(cx + 0.01, nose_y, s), shade, lw, aa, sb)
    _oval(canvas, (cx, nose_y), (0.035, 0.015), shade, lw, s, arc=(0, 180))
    if p.nose_wrinkle > 0.3:
        wr = float(skin - (skin - dark) * min(1.0, p.nose_wrinkle) * 0.6)
        for sgn in (-1.0, 1.0):
            x0 = cx + sgn * 0.045
            top, bottom = _pt(x0, nose_y - 0.07, s), _pt(x0 + sgn * 0.02, nose_y - 0.02, s)
            cv2.line(canvas, top, bottom, wr, lw, aa, sb)

    # Mouth: a base line with curved corners, optionally opened into a dark cavity.
    my = 0.75 + 0.03 * (u[14] - 0.5)
    half = 0.135 * p.mouth_width
    xs = np.linspace(-1.0, 1.0, 13)
    base = my - 0.075 * p.mouth_curve * xs**2 - 0.04 * p.mouth_asym * side * xs
    bulge = 1.0 - xs**2
    sneer = 0.5 + 0.5 * side * xs * np.sign(p.mouth_asym)
    upper = base - 0.06 * p.mouth_open_up * bulge * (1.0 + sneer * abs(p.mouth_asym))
    lower = base + 0.08 * p.mouth_open_down * bulge
    mx = cx + half * xs
    if (lower - upper).max() > 0.02:
        outline = _curve(np.concatenate([mx, mx[::-1]]), np.concatenate([upper, lower[::-1]]), s)
        cv2.fillPoly(canvas, [outline], float(dark * 0.6), aa, sb)
        cv2.polylines(canvas, [outline], True, float(dark), lw, aa, sb)
    else:
        cv2.polylines(canvas, [_curve(mx, base, s)], False, float(dark), lw + 1, aa, sb)
    return canvas


def draw_faces(n_per_class: int, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``7 * n_per_class`` faces, classes shuffled deterministically by ``seed``.

    Returns ``(images, labels)``: uint8 ``[N, size, size]`` and int64 ``[N]`` FER2013 labels
    (indices into :data:`EXPRESSIONS`).
    """
    rng = np.random.default_rng(seed)
    n = len(EXPRESSIONS) * n_per_class
    labels = rng.permutation(np.repeat(np.arange(len(EXPRESSIONS), dtype=np.int64), n_per_class))

    # Expression intensity pulls each face part-way from neutral towards its prototype.
    protos = np.asarray(_PROTOTYPES, dtype=np.float64)[labels]
    intensity = rng.uniform(0.6, 1.0, size=(n, 1))
    jitter = rng.normal(size=protos.shape) * _PARAM_NOISE
    params = _NEUTRAL + intensity * (protos - _NEUTRAL) + jitter
    sides = rng.choice([-1.0, 1.0], size=n)

    # Pose, lighting and sensor nuisances.
    big = size * _SUPERSAMPLE
    angles = rng.uniform(-12.0, 12.0, size=n)
    scales = rng.uniform(0.9, 1.1, size=n)
    shifts = rng.uniform(-4.0, 4.0, size=(n, 2)) * _SUPERSAMPLE
    contrast = rng.uniform(0.6, 1.3, size=n)
    brightness = rng.uniform(-30.0, 30.0, size=n)
    blur = rng.uniform(0.0, 1.0, size=n)
    noise_std = rng.uniform(2.0, 12.0, size=n)

    images = np.empty((n, size, size), dtype=np.uint8)
    centre = ((0.5 + _PAD) * big, (0.5 + _PAD) * big)  # face-image centre on the padded canvas
    for i in range(n):
        canvas = _draw_face(_Expr(*params[i]), sides[i], rng, size)
        warp = cv2.getRotationMatrix2D(centre, angles[i], scales[i])
        warp[:, 2] += shifts[i] - _PAD * big  # also crops the margin away
        canvas = cv2.warpAffine(
            canvas, warp, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        img = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
        if blur[i] > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), blur[i])
        img = (img - 128.0) * contrast[i] + 128.0 + brightness[i]
        img += rng.normal(0.0, noise_std[i], size=img.shape).astype(np.float32)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels


class SyntheticFaces:
    """`conf/dataset/synthetic.yaml`: fresh, disjoint draws for train, val and test.

    `classes` may be a subset of `EXPRESSIONS`; labels follow its order.
    """

    colour = False  # greyscale drawings

    def __init__(
        self,
        classes: Sequence[str] = EXPRESSIONS,
        name: str = "synthetic",
        train_per_class: int = 300,
        val_per_class: int = 60,
        test_per_class: int = 60,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.classes = list(classes)
        self.codes = class_indices(self.classes, EXPRESSIONS, "dataset.classes")
        self.sizes = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        self.seed = seed

    def load(self) -> FaceSplits:
        splits = {}
        for offset, (split, per_class) in enumerate(self.sizes.items()):
            images, codes = draw_faces(per_class, self.seed * 3 + offset)
            keep = np.isin(codes, self.codes)
            relabel = np.array([self.codes.index(c) if c in self.codes else -1 for c in range(7)])
            splits[split] = Faces(images[keep], relabel[codes[keep]])
        return FaceSplits(**splits)
