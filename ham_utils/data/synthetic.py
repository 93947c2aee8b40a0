"""A SYNTHETIC demo dataset in the HAM10000 Kaggle layout, for runs without the real data.

The metadata follows HAM10000's class imbalance, images per lesion and per-class
distributions of age, sex, site and diagnosis type. The images are drawn shapes, colours
and noise that look like dermatoscopy at a glance, with class cues loosely modelled on the
dermatoscopic criteria of each class, so that a model learns something in minutes on a CPU.
They have no medical meaning whatsoever.

Each lesion's appearance comes from a per-lesion seed and each view of it (rotation, shift,
scale, lighting, hairs, noise) from a per-image seed, so the images of one lesion are
near-duplicates, as in HAM10000, and every image is reproducible on its own.

No library draws dermatoscopy-like images, so the drawing is done here with OpenCV
primitives and smooth NumPy noise fields.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ham_utils.config import CLASSES, METADATA_COLUMNS, ParamsError
from ham_utils.errors import DataError

MARKER_FILE = "SYNTHETIC_DATA.txt"
METADATA_FILE = "HAM10000_metadata.csv"
IMAGE_FOLDERS: tuple[str, str] = ("HAM10000_images_part_1", "HAM10000_images_part_2")
JPEG_QUALITY = 90
MIN_WIDTH, MIN_HEIGHT = 32, 24

# ----------------------------------------------------------------------------------------
# Metadata: shares and distributions rounded from the public HAM10000 metadata
# ----------------------------------------------------------------------------------------

# Image counts per class of the full HAM10000 set (10,015 images).
HAM10000_IMAGE_COUNTS: dict[str, int] = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}
MIN_LESIONS_PER_CLASS = 6  # so that validation and test splits get some of every class
MIN_IMAGES = MIN_LESIONS_PER_CLASS * len(CLASSES)

# Share of lesions with 1, 2, 3, 4, 5, 6 images.
IMAGES_PER_LESION: dict[str, tuple[float, ...]] = {
    "akiec": (0.66, 0.25, 0.08, 0.01),
    "bcc": (0.54, 0.36, 0.095, 0.005),
    "bkl": (0.605, 0.30, 0.076, 0.011, 0.004, 0.004),
    "df": (0.53, 0.36, 0.11),
    "mel": (0.375, 0.453, 0.163, 0.005, 0.002, 0.002),
    "nv": (0.817, 0.129, 0.05, 0.003, 0.0005, 0.0005),
    "vasc": (0.65, 0.26, 0.08, 0.01),
}
AGE_MEAN_SD: dict[str, tuple[float, float]] = {
    "akiec": (67, 11),
    "bcc": (67, 14),
    "bkl": (64, 14),
    "df": (53, 13),
    "mel": (61, 15),
    "nv": (46, 15),
    "vasc": (51, 21),
}
AGE_STEP, AGE_MAX = 5, 85
MISSING_AGE_RATE = 0.006
MALE_SHARE: dict[str, float] = {
    "akiec": 0.68,
    "bcc": 0.62,
    "bkl": 0.57,
    "df": 0.55,
    "mel": 0.62,
    "nv": 0.51,
    "vasc": 0.49,
}
UNKNOWN_SEX_RATE = 0.01
DX_TYPE_SHARES: dict[str, dict[str, float]] = {
    "akiec": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "bkl": {"histo": 0.70, "consensus": 0.24, "confocal": 0.06},
    "df": {"consensus": 0.52, "histo": 0.48},
    "mel": {"histo": 1.0},
    "nv": {"follow_up": 0.55, "histo": 0.37, "consensus": 0.08},
    "vasc": {"consensus": 0.53, "histo": 0.47},
}
# Percent of lesions per body site (HAM10000 category names).
LOCALIZATION_SHARES: dict[str, dict[str, float]] = {
    "akiec": {
        "face": 35, "lower extremity": 20, "upper extremity": 19, "back": 9, "chest": 4,
        "hand": 4, "scalp": 4, "neck": 3, "abdomen": 2, "ear": 1,
    },
    "bcc": {
        "back": 36, "face": 20, "lower extremity": 11, "upper extremity": 10, "chest": 9,
        "abdomen": 4, "scalp": 4, "neck": 3, "trunk": 2, "foot": 1, "unknown": 1,
    },
    "bkl": {
        "face": 29, "back": 18, "lower extremity": 16, "upper extremity": 9, "chest": 7,
        "trunk": 7, "abdomen": 4, "neck": 3, "scalp": 3, "unknown": 2, "ear": 1, "hand": 1,
    },
    "df": {
        "lower extremity": 71, "upper extremity": 21, "abdomen": 3, "back": 2, "foot": 2,
        "genital": 1,
    },
    "mel": {
        "back": 29, "upper extremity": 19, "lower extremity": 17, "face": 9, "abdomen": 6,
        "chest": 6, "trunk": 4, "foot": 3, "neck": 3, "ear": 2, "scalp": 1, "unknown": 1,
        "acral": 0.5,
    },
    "nv": {
        "lower extremity": 22, "back": 21, "trunk": 19, "abdomen": 13, "upper extremity": 10,
        "foot": 4, "chest": 3, "unknown": 3, "face": 1, "genital": 1, "hand": 1, "neck": 1,
        "scalp": 1, "acral": 0.5,
    },
    "vasc": {
        "trunk": 22, "abdomen": 19, "lower extremity": 19, "back": 15, "upper extremity": 8,
        "face": 6, "chest": 4, "hand": 4, "neck": 2, "scalp": 1,
    },
}  # fmt: skip

LESION_PREFIX, IMAGE_PREFIX = "SYNTH_L", "SYNTH_"
# Independent random streams under one user seed.
_METADATA_STREAM, _LESION_STREAM, _IMAGE_STREAM = 0, 1, 2


def class_image_counts(n_images: int) -> dict[str, int]:
    """Images per class: HAM10000's shares, at least MIN_LESIONS_PER_CLASS each, summing to n."""
    if n_images < MIN_IMAGES:
        raise ParamsError(
            f"n_images (demo_images) must be at least {MIN_IMAGES} "
            f"({MIN_LESIONS_PER_CLASS} lesions of each of {len(CLASSES)} classes), got {n_images}"
        )
    total = sum(HAM10000_IMAGE_COUNTS.values())
    ideal = {dx: n_images * HAM10000_IMAGE_COUNTS[dx] / total for dx in CLASSES}
    counts = {dx: max(MIN_LESIONS_PER_CLASS, math.floor(ideal[dx])) for dx in CLASSES}
    # Largest remainders get the images still missing; the largest classes give back
    # what the minimum added.
    by_remainder = sorted(CLASSES, key=lambda dx: ideal[dx] - counts[dx], reverse=True)
    by_size = sorted(CLASSES, key=lambda dx: counts[dx], reverse=True)
    missing = n_images - sum(counts.values())
    for i in range(abs(missing)):
        if missing > 0:
            counts[by_remainder[i % len(CLASSES)]] += 1
        else:
            donor = next(dx for dx in by_size if counts[dx] > MIN_LESIONS_PER_CLASS)
            counts[donor] -= 1
            by_size.sort(key=lambda dx: counts[dx], reverse=True)
    return counts


def _lesion_sizes(n_images: int, shares: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Images per lesion for one class: ``n_images`` in all, at least MIN_LESIONS_PER_CLASS."""
    p = np.asarray(shares, dtype=float) / sum(shares)
    draws = rng.choice(np.arange(1, len(p) + 1), size=n_images, p=p)
    ends = np.cumsum(draws)
    n_lesions = int(np.searchsorted(ends, n_images)) + 1
    sizes = draws[:n_lesions].copy()
    sizes[-1] -= ends[n_lesions - 1] - n_images
    while len(sizes) < MIN_LESIONS_PER_CLASS:  # tiny classes: split the largest lesion
        largest = int(np.argmax(sizes))
        sizes[largest] -= 1
        sizes = np.append(sizes, 1)
    return sizes


def _choice(rng: np.random.Generator, shares: dict[str, float], n: int) -> np.ndarray:
    p = np.array(list(shares.values()), dtype=float)
    return rng.choice(np.array(list(shares), dtype=object), size=n, p=p / p.sum())


def _lesion_table(dx: str, n_images: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per lesion of class ``dx``: its image count and shared attributes."""
    sizes = _lesion_sizes(n_images, IMAGES_PER_LESION[dx], rng)
    n = len(sizes)
    mean, sd = AGE_MEAN_SD[dx]
    age = np.clip(np.round(rng.normal(mean, sd, n) / AGE_STEP) * AGE_STEP, 0, AGE_MAX)
    age[rng.random(n) < MISSING_AGE_RATE] = np.nan
    male = MALE_SHARE[dx] * (1 - UNKNOWN_SEX_RATE)
    sex_shares = {"male": male, "female": 1 - UNKNOWN_SEX_RATE - male, "unknown": UNKNOWN_SEX_RATE}
    return pd.DataFrame(
        {
            "n_images": sizes,
            "dx": dx,
            "dx_type": _choice(rng, DX_TYPE_SHARES[dx], n),
            "age": age,
            "sex": _choice(rng, sex_shares, n),
            "localization": _choice(rng, LOCALIZATION_SHARES[dx], n),
        }
    )


def generate_metadata(n_images: int, seed: int) -> pd.DataFrame:
    """A HAM10000-like metadata table of exactly ``n_images`` rows with SYNTH ids.

    Columns are :data:`~ham_utils.config.METADATA_COLUMNS`. Rows of one lesion are
    adjacent and share dx, dx_type, age, sex and localization; image ids are numbered in a
    shuffled order. The same seed gives the same table.
    """
    rng = np.random.default_rng([seed, _METADATA_STREAM])
    lesions = pd.concat(
        [_lesion_table(dx, count, rng) for dx, count in class_image_counts(n_images).items()],
        ignore_index=True,
    )
    lesions = lesions.iloc[rng.permutation(len(lesions))].reset_index(drop=True)
    lesions["lesion_id"] = [f"{LESION_PREFIX}{i:07d}" for i in range(1, len(lesions) + 1)]
    rows = lesions.loc[lesions.index.repeat(lesions["n_images"])].reset_index(drop=True)
    rows["image_id"] = [f"{IMAGE_PREFIX}{i:07d}" for i in rng.permutation(n_images) + 1]
    return rows[list(METADATA_COLUMNS)]


# ----------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------

N_ANGLES = 360  # angular resolution of lesion outlines
EXTENT = 1.75  # canvas half-side in lesion radii: room for lobes and soft borders
# Lesion canvases come in a few radii so their coordinate grids can be cached; the view
# warp then scales the canvas to the lesion's size in the frame.
CANVAS_RADII: tuple[int, ...] = (12, 16, 24, 32, 48, 64, 96)

# Lesion radius as a fraction of min(width, height), per class (overlapping on purpose).
LESION_RADIUS: dict[str, tuple[float, float]] = {
    "akiec": (0.15, 0.36),
    "bcc": (0.13, 0.32),
    "bkl": (0.14, 0.34),
    "df": (0.12, 0.28),
    "mel": (0.15, 0.36),
    "nv": (0.12, 0.33),
    "vasc": (0.09, 0.27),
}


def _rgb(r: int, g: int, b: int) -> np.ndarray:
    return np.array([r, g, b], dtype=np.float32) / 255


BLACK = _rgb(40, 28, 28)
DARK_BROWN = _rgb(80, 45, 30)
MID_BROWN = _rgb(130, 78, 50)
LIGHT_BROWN = _rgb(175, 120, 85)
TAN = _rgb(200, 150, 112)
BLUE_GREY = _rgb(115, 118, 135)
RED_BROWN = _rgb(145, 72, 62)
PINK = _rgb(230, 160, 160)
RED = _rgb(190, 50, 60)
DARK_RED = _rgb(110, 20, 40)
PURPLE_RED = _rgb(140, 35, 80)
SCALE_WHITE = _rgb(240, 232, 215)
SCAR_WHITE = _rgb(240, 222, 215)
MILIA_WHITE = _rgb(245, 240, 215)
# Skin tones under a dermatoscope: pinkish, yellowish, lilac-grey, tanned.
SKIN_TONES = np.stack(
    [_rgb(238, 190, 185), _rgb(232, 200, 170), _rgb(215, 200, 215), _rgb(205, 150, 120)]
)


@dataclass(frozen=True)
class _Canvas:
    """A square canvas with the lesion centred; coordinates are in lesion radii."""

    radius: int  # pixels per lesion radius
    side: int
    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray  # distance from the centre
    angle_bin: np.ndarray  # angle from the centre in N_ANGLES bins

    def px(self, points: np.ndarray) -> np.ndarray:
        """Canvas pixel coordinates (for cv2 drawing) of points given in lesion radii."""
        return np.round(np.asarray(points) * self.radius + self.side / 2).astype(np.int32)

    def field(self, rng: np.random.Generator, grid: int) -> np.ndarray:
        """A smooth random field (about unit variance) with ``grid`` cells across the canvas."""
        cells = rng.standard_normal((grid, grid)).astype(np.float32)
        return cv2.resize(cells, (self.side, self.side), interpolation=cv2.INTER_CUBIC)


@functools.lru_cache(maxsize=len(CANVAS_RADII))
def _canvas(radius: int) -> _Canvas:
    side = 2 * math.ceil(EXTENT * radius)
    v, u = (np.mgrid[:side, :side].astype(np.float32) + 0.5 - side / 2) / radius
    angle = np.arctan2(v, u)
    angle_bin = ((angle + np.pi) * (N_ANGLES / (2 * np.pi))).astype(np.intp) % N_ANGLES
    return _Canvas(radius, side, u, v, np.hypot(u, v), angle_bin)


def _canvas_radius(frame_radius: float) -> int:
    fitting = [r for r in CANVAS_RADII if r >= 0.75 * frame_radius]
    return fitting[0] if fitting else CANVAS_RADII[-1]


# --- drawing helpers (all randomness from the lesion's own generator) --------------------


def _outline(rng: np.random.Generator, amplitudes: Sequence[float]) -> np.ndarray:
    """Border radius per angle bin: 1 plus random harmonics (k = 1, 2, ...)."""
    angles = np.linspace(0, 2 * np.pi, N_ANGLES, endpoint=False)
    radius = np.ones(N_ANGLES)
    for k, amplitude in enumerate(amplitudes, start=1):
        radius += amplitude * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    return np.clip(radius, 0.45, 1.45).astype(np.float32)


def _random_amplitudes(rng: np.random.Generator, maxima: Sequence[float]) -> list[float]:
    return [rng.uniform(0, m) for m in maxima]


def _alpha(c: _Canvas, border: np.ndarray, softness: float | np.ndarray) -> np.ndarray:
    """Coverage 0..1 inside ``border``, fading over ``softness`` radii (scalar or per angle)."""
    soft = softness[c.angle_bin] if isinstance(softness, np.ndarray) else softness
    return np.clip((border[c.angle_bin] - c.rho) / soft + 0.5, 0, 1)


def _mix(weights: Sequence[np.ndarray], colours: Sequence[np.ndarray], sharpness: float):
    """Blend colours by a softmax over random fields: blotches of each colour."""
    stacked = sharpness * np.stack(weights)
    stacked = np.exp(stacked - stacked.max(axis=0))
    stacked /= stacked.sum(axis=0)
    return np.tensordot(stacked, np.stack(colours), axes=(0, 0)).astype(np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float32)
    return a + (b - a) * (t[..., None] if t.ndim else t)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.1) -> np.ndarray:
    """The colour a little lighter or darker and a little shifted in hue."""
    factor = rng.uniform(1 - amount, 1 + amount) * rng.uniform(0.97, 1.03, 3)
    return np.clip(colour * factor, 0, 1).astype(np.float32)


def _network(c: _Canvas, rng: np.random.Generator, cell: float, width: float) -> np.ndarray:
    """0..1, high on the lines of a wobbly, patchy honeycomb with holes ``cell`` radii apart."""
    half = c.side // 2  # drawn at half resolution (it is blurred later anyway) and upsampled
    u, v = c.u[::2, ::2][:half, :half], c.v[::2, ::2][:half, :half]
    wobble = cv2.resize(rng.standard_normal((2, 10, 10)).transpose(1, 2, 0), (half, half))
    u = u + 0.45 * cell * wobble[..., 0]
    v = v + 0.45 * cell * wobble[..., 1]
    k, turn = 2 * np.pi / cell, rng.uniform(0, 2 * np.pi / 3)
    # Three plane waves 120 degrees apart peak on a hexagonal lattice; the low ground
    # between the peaks is a connected honeycomb.
    waves = sum(
        np.cos(k * (np.cos(turn + i * 2 * np.pi / 3) * u + np.sin(turn + i * 2 * np.pi / 3) * v))
        for i in range(3)
    )
    lines = np.clip((0.5 - waves) / (3 * width), 0, 1).astype(np.float32)
    lines = cv2.resize(lines, (c.side, c.side), interpolation=cv2.INTER_LINEAR)
    return lines * np.clip(0.6 + 0.6 * c.field(rng, 5), 0, 1)


def _dots(
    c: _Canvas,
    rng: np.random.Generator,
    n: int,
    spread: float,
    size: tuple[float, float],
    ring: bool = False,
) -> np.ndarray:
    """0..1 mask of ``n`` round dots within ``spread`` radii (on a ring near it if ``ring``)."""
    mask = np.zeros((c.side, c.side), np.float32)
    angle = rng.uniform(0, 2 * np.pi, n)
    dist = spread * (rng.uniform(0.75, 1.0, n) if ring else np.sqrt(rng.uniform(0, 1, n)))
    centres = c.px(np.stack([dist * np.cos(angle), dist * np.sin(angle)], axis=1))
    radii = np.maximum(1, np.round(rng.uniform(*size, n) * c.radius)).astype(int)
    for (x, y), r in zip(centres, radii, strict=True):
        cv2.circle(mask, (int(x), int(y)), int(r), 1.0, -1, cv2.LINE_AA)
    return mask


def _vessels(c: _Canvas, rng: np.random.Generator, n_trees: int, width: float) -> np.ndarray:
    """0..1 mask of branching (arborising) vessels that start near the rim and fork inwards."""
    mask = np.zeros((c.side, c.side), np.float32)
    for _ in range(n_trees):
        start_angle = rng.uniform(0, 2 * np.pi)
        start = 0.8 * np.array([np.cos(start_angle), np.sin(start_angle)])
        heading = start_angle + np.pi + rng.normal(0, 0.5)
        branches = [(start, heading, rng.uniform(0.5, 0.9), width, 0)]
        while branches:
            point, heading, length, thick, depth = branches.pop()
            path = [point]
            for _ in range(5):
                heading += rng.normal(0, 0.35)
                point = point + length / 5 * np.array([np.cos(heading), np.sin(heading)])
                path.append(point)
            thickness = max(1, round(thick * c.radius))
            cv2.polylines(mask, [c.px(np.array(path))], False, 1.0, thickness, cv2.LINE_AA)
            if depth < 3:
                for turn in (-1, 1):
                    fork = heading + turn * rng.uniform(0.35, 0.9)
                    branches.append((point, fork, length * 0.6, thick * 0.65, depth + 1))
    return mask


def _paint(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
    """Blend ``colour`` into ``rgb`` where ``mask`` is set (in place)."""
    m = (mask * opacity)[..., None]
    rgb *= 1 - m
    rgb += m * colour


# --- one painter per class: (lesion rgb 0..1, coverage alpha 0..1) on the canvas --------

LesionLayer = tuple[np.ndarray, np.ndarray]


def _paint_nv(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Uniform brown, round or oval, smooth regular border, maybe a faint pigment network."""
    border = _outline(rng, [0.0, rng.uniform(0, 0.18), *_random_amplitudes(rng, [0.04, 0.03])])
    alpha = _alpha(c, border, rng.uniform(0.05, 0.14))
    base = _jitter(rng, _lerp(TAN, DARK_BROWN, rng.uniform(0.2, 0.95)), 0.08)
    centre_shade = rng.uniform(-0.15, 0.2)  # darker or lighter centre
    shade = 1 + centre_shade * np.clip(1 - c.rho, 0, 1)
    shade += 0.04 * c.field(rng, 6) + 0.04 * c.field(rng, 40)
    rgb = base * shade[..., None]
    if rng.random() < 0.7:  # regular network, fading towards the rim
        net = _network(c, rng, rng.uniform(0.08, 0.13), rng.uniform(0.25, 0.4))
        fade = np.clip(1.1 - c.rho, 0, 1)
        rgb *= (1 - rng.uniform(0.1, 0.25) * net * fade)[..., None]
    if rng.random() < 0.25:  # a few regular globules
        _paint(rgb, _dots(c, rng, rng.integers(5, 20), 0.6, (0.03, 0.06)), DARK_BROWN, 0.5)
    return rgb, alpha


def _paint_mel(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Dark, asymmetric irregular outline, several colours in blotches, uneven texture."""
    border = _outline(rng, _random_amplitudes(rng, [0.2, 0.25, 0.15, 0.12, 0.1, 0.08, 0.06]))
    softness = np.clip(0.03 + 0.12 * np.abs(_outline(rng, [0.0, 0.5, 0.5]) - 1), 0.02, 0.2)
    alpha = _alpha(c, border, softness)
    # Browns cover most of the lesion; the accent colours form smaller blotches.
    browns = [DARK_BROWN, _lerp(MID_BROWN, LIGHT_BROWN, rng.uniform(0, 1)), BLACK]
    accents = [BLUE_GREY, RED_BROWN, BLACK, LIGHT_BROWN]
    picked = rng.choice(len(accents), size=rng.integers(1, 4), replace=False)
    colours = [_jitter(rng, col, 0.12) for col in [*browns, *(accents[i] for i in picked)]]
    bias = [0.5, rng.uniform(-0.3, 0.8), rng.uniform(-0.8, 0.3)] + [-0.6] * len(picked)
    grid = int(rng.integers(6, 11))
    fields = [c.field(rng, grid) + b for b in bias]
    rgb = _mix(fields, colours, rng.uniform(2.5, 5))
    rgb *= (1 + 0.07 * c.field(rng, 40) + 0.06 * c.field(rng, 16))[..., None]  # uneven texture
    if rng.random() < 0.5:  # atypical network: thick, broken, varying
        net = _network(c, rng, rng.uniform(0.1, 0.2), rng.uniform(0.25, 0.5))
        rgb *= (1 - 0.3 * net * (c.field(rng, 5) > 0))[..., None]
    if rng.random() < 0.5:  # irregular dots and globules near the rim
        _paint(rgb, _dots(c, rng, rng.integers(8, 30), 1.0, (0.02, 0.06), ring=True), BLACK, 0.8)
    if rng.random() < 0.3:  # white regression areas
        _paint(rgb, np.clip(c.field(rng, 6) - 1.0, 0, 1), SCAR_WHITE, 0.6)
    return rgb, alpha


def _paint_bkl(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Tan to brown, waxy granular texture, sharp 'stuck-on' border, maybe milia-like dots."""
    border = _outline(rng, [0.0, rng.uniform(0, 0.2), *_random_amplitudes(rng, [0.1, 0.07, 0.05])])
    alpha = _alpha(c, border, rng.uniform(0.01, 0.03))
    base = _jitter(rng, _lerp(TAN, MID_BROWN, rng.uniform(0.0, 0.8)), 0.08)
    granular = 0.12 * c.field(rng, 40) + 0.06 * c.field(rng, 12)
    fissures = np.clip(1 - np.abs(c.field(rng, 10)) / 0.12, 0, 1)  # cerebriform furrows
    rgb = base * (1 + granular - 0.25 * fissures)[..., None]
    if rng.random() < 0.6:  # milia-like cysts
        _paint(rgb, _dots(c, rng, rng.integers(4, 25), 0.8, (0.025, 0.05)), MILIA_WHITE, 0.85)
    if rng.random() < 0.4:  # comedo-like openings
        _paint(rgb, _dots(c, rng, rng.integers(3, 15), 0.8, (0.02, 0.045)), DARK_BROWN, 0.8)
    return rgb, alpha


def _paint_bcc(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Translucent pink patch with red arborising vessels, maybe blue-grey ovoid nests."""
    border = _outline(rng, _random_amplitudes(rng, [0.1, 0.15, 0.1, 0.08, 0.05]))
    envelope = _alpha(c, border, rng.uniform(0.12, 0.3))
    alpha = envelope * rng.uniform(0.55, 0.85)
    rgb = _jitter(rng, PINK, 0.06) * (1 + 0.05 * c.field(rng, 8))[..., None]
    if rng.random() < 0.5:  # shiny white areas
        _paint(rgb, np.clip(c.field(rng, 6) - 0.8, 0, 1), SCAR_WHITE, 0.7)
    vessels = _vessels(c, rng, rng.integers(2, 6), rng.uniform(0.015, 0.035)) * envelope
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.006 * c.radius + 0.3)  # under the surface
    _paint(rgb, vessels, _jitter(rng, _lerp(RED, DARK_RED, rng.uniform(0, 0.5)), 0.1))
    alpha = np.maximum(alpha, 0.85 * vessels)
    if rng.random() < 0.5:
        nests = np.zeros_like(alpha)
        for _ in range(rng.integers(1, 6)):
            centre = c.px(rng.uniform(-0.6, 0.6, 2))
            axes = np.maximum(1, np.round(rng.uniform(0.05, 0.16, 2) * c.radius)).astype(int)
            angle = rng.uniform(0, 180)
            cv2.ellipse(nests, tuple(centre), tuple(axes), angle, 0, 360, 1.0, -1, cv2.LINE_AA)
        nests = cv2.GaussianBlur(nests, (0, 0), 0.03 * c.radius + 0.5)
        _paint(rgb, nests, _jitter(rng, BLUE_GREY, 0.1), 0.8)
        alpha = np.maximum(alpha, 0.8 * nests)
    return rgb, alpha


def _paint_akiec(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Red-pink scaly patch, rough white-ish scale, ill-defined border."""
    border = _outline(rng, _random_amplitudes(rng, [0.15, 0.2, 0.12, 0.1, 0.08]))
    alpha = _alpha(c, border, rng.uniform(0.25, 0.45)) * rng.uniform(0.6, 0.85)
    alpha *= np.clip(1 + 0.3 * c.field(rng, 8), 0, 1)  # patchy, no clear edge
    base = _jitter(rng, _lerp(PINK, RED, rng.uniform(0.3, 0.7)), 0.08)
    rgb = base * (1 + 0.06 * c.field(rng, 12))[..., None]
    scale_area = np.clip(c.field(rng, 6) + rng.uniform(-0.3, 0.5), 0, 1)
    rough = np.clip(c.field(rng, 48) * 0.8 + 0.2, 0, 1)
    _paint(rgb, scale_area * rough, SCALE_WHITE, rng.uniform(0.6, 0.95))
    if rng.random() < 0.4:  # strawberry pattern: pale follicle openings
        _paint(rgb, _dots(c, rng, rng.integers(15, 40), 0.9, (0.02, 0.04)), SCALE_WHITE, 0.6)
    if rng.random() < 0.5:  # dotted vessels
        _paint(rgb, _dots(c, rng, rng.integers(10, 40), 0.9, (0.01, 0.025)), DARK_RED, 0.8)
    if rng.random() < 0.25:  # pigmented variant
        _paint(rgb, np.clip(c.field(rng, 8) - 0.8, 0, 1), MID_BROWN, 0.7)
    return rgb, alpha


def _paint_vasc(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Clustered red-purple lacunae with sharp edges on a paler septal background."""
    border = _outline(rng, [0.0, rng.uniform(0, 0.2), *_random_amplitudes(rng, [0.1, 0.06])])
    alpha = _alpha(c, border, 0.08) * rng.uniform(0.5, 0.8)
    base = _jitter(rng, _lerp(RED, PURPLE_RED, rng.uniform(0, 1)), 0.1)
    rgb = np.broadcast_to(_lerp(base, PINK, 0.5), (c.side, c.side, 3)).copy()
    lacunae = np.zeros_like(alpha)
    lacuna_colour = np.zeros_like(rgb)
    for _ in range(rng.integers(6, 25)):
        angle, dist = rng.uniform(0, 2 * np.pi), 0.75 * math.sqrt(rng.uniform())
        point = dist * np.array([np.cos(angle), np.sin(angle)])
        radius = max(1, round(rng.uniform(0.12, 0.3) * c.radius))
        centre = tuple(int(x) for x in c.px(point))
        colour = _lerp(base, DARK_RED, rng.uniform(0, 0.6))
        cv2.circle(lacunae, centre, radius, 1.0, -1, cv2.LINE_AA)
        cv2.circle(lacuna_colour, centre, radius, colour.tolist(), -1, cv2.LINE_AA)
    lacunae = np.clip(lacunae, 0, 1)[..., None]
    rgb = rgb * (1 - lacunae) + lacuna_colour * lacunae
    rgb *= (1 + 0.04 * c.field(rng, 16))[..., None]
    return rgb, np.maximum(alpha, lacunae[..., 0])


def _paint_df(c: _Canvas, rng: np.random.Generator) -> LesionLayer:
    """Pale scar-like centre with a brown peripheral ring, round, soft outer edge."""
    border = _outline(rng, [0.0, *_random_amplitudes(rng, [0.12, 0.06, 0.04])])
    alpha = _alpha(c, border, rng.uniform(0.3, 0.5))
    inner = rng.uniform(0.2, 0.45) * (1 + 0.25 * c.field(rng, 6))
    ring_t = np.clip((c.rho - inner) / rng.uniform(0.25, 0.45), 0, 1)
    rim = _jitter(rng, _lerp(LIGHT_BROWN, MID_BROWN, rng.uniform(0, 0.8)), 0.08)
    centre = _jitter(rng, _lerp(SCAR_WHITE, PINK, rng.uniform(0.2, 0.7)), 0.04)
    rgb = _lerp(centre, rim, ring_t) * (1 + 0.05 * c.field(rng, 20))[..., None]
    alpha *= 1 - rng.uniform(0.1, 0.35) * (1 - ring_t)  # the skin shows through the centre
    if rng.random() < 0.6:  # delicate network at the rim
        net = _network(c, rng, rng.uniform(0.08, 0.12), 0.25)
        rgb *= (1 - 0.1 * net * ring_t)[..., None]
    return rgb, alpha


PAINTERS: dict[str, Callable[[_Canvas, np.random.Generator], LesionLayer]] = {
    "akiec": _paint_akiec,
    "bcc": _paint_bcc,
    "bkl": _paint_bkl,
    "df": _paint_df,
    "mel": _paint_mel,
    "nv": _paint_nv,
    "vasc": _paint_vasc,
}


# --- the per-image view: skin, placement, hairs, lighting, optics ------------------------
# Full-frame passes dominate the cost, so smooth parts are made at low resolution and
# upsampled once, and the lesion and hairs are blended only where they are.


@functools.lru_cache(maxsize=4)
def _frame_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x and y in half shorter sides from the centre, and the radius in half-diagonals."""
    ys, xs = np.mgrid[:height, :width].astype(np.float32) + 0.5
    half = min(width, height) / 2
    x, y = (xs - width / 2) / half, (ys - height / 2) / half
    return x, y, np.hypot(xs - width / 2, ys - height / 2) / math.hypot(width / 2, height / 2)


def _skin(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Skin with a random tone, blotchy redness and fine grain, in 0..1."""
    tone = rng.dirichlet(np.full(len(SKIN_TONES), 0.6)) @ SKIN_TONES
    grid = (60, 80)
    mottling = cv2.resize(rng.standard_normal((6, 8, 3)).astype(np.float32), grid[::-1])
    grain = rng.standard_normal((*grid, 1)).astype(np.float32)
    texture = 1 + 0.025 * mottling + 0.02 * grain
    if rng.random() < 0.3:  # patchy redness, on any class
        redness = cv2.resize(rng.random((4, 5)).astype(np.float32), grid[::-1])
        texture[..., 1:] *= (1 - 0.12 * redness)[..., None]
    small = texture * tone.astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _view_matrix(
    rng: np.random.Generator, to_frame: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Layer-to-image affine map: ``to_frame``, then a random rotation, zoom and shift."""
    angle = math.radians(rng.normal(0, 20))
    zoom = rng.uniform(0.9, 1.1)
    rotate = zoom * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    centre = (width / 2, height / 2) + rng.normal(0, 0.06, 2) * (width, height)
    return np.hstack([rotate @ to_frame[:, :2], (rotate @ to_frame[:, 2] + centre)[:, None]])


def _place_lesion(image: np.ndarray, lesion: _Lesion, matrix: np.ndarray) -> None:
    """Warp the lesion into ``image`` (in place), working only over its bounding box."""
    height, width = image.shape[:2]
    h, w = lesion.alpha.shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]]) @ matrix.T
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int), (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    shifted = matrix.copy()
    shifted[:, 2] -= (x0, y0)
    size = (int(x1 - x0), int(y1 - y0))
    rgb = cv2.warpAffine(lesion.rgb, shifted, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(lesion.alpha, shifted, size, flags=cv2.INTER_LINEAR)
    box = image[y0:y1, x0:x1]
    box[:] = cv2.blendLinear(rgb, np.ascontiguousarray(box), alpha, 1 - alpha)


def _hairs(rng: np.random.Generator, image: np.ndarray) -> None:
    """Dark thin curved hairs, drawn in place."""
    height, width = image.shape[:2]
    n = 0 if rng.random() < 0.35 else int(rng.integers(1, 16))
    if n == 0:
        return
    mask = np.zeros((height, width), np.uint8)
    size = min(width, height)
    t = np.linspace(0, 1, 12)[:, None]
    for _ in range(n):
        start = rng.uniform(0, 1, 2) * (width, height)
        heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.2, 0.9) * size
        end = start + length * np.array([np.cos(heading), np.sin(heading)])
        bend = (start + end) / 2 + rng.normal(0, 0.15, 2) * length
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end
        thickness = max(1, round(rng.uniform(0.5, 1.6) * size / 300))
        cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    colour = _lerp(BLACK, DARK_BROWN, rng.uniform(0, 1)) * rng.uniform(0.5, 1.0)
    ys, xs = np.nonzero(mask)  # hairs cover a few percent of the frame: blend only there
    cover = (mask[ys, xs].astype(np.float32) * (rng.uniform(0.6, 0.95) / 255))[:, None]
    image[ys, xs] += cover * (colour - image[ys, xs])


def _lighting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Per-pixel RGB gain to 0..255: brightness, white balance, light gradient, round vignette.

    Computed at half resolution (it is smooth) and upsampled.
    """
    small_w, small_h = max(1, width // 2), max(1, height // 2)
    x, y, r = _frame_coords(small_h, small_w)
    edge = rng.uniform(0.8, 1.3)  # field-of-view circle in half-diagonals; > 1: no dark corners
    light = np.clip((edge - r) * (1 / rng.uniform(0.02, 0.1)), 0, 1)
    light *= 1 - rng.uniform(0.05, 0.35) * r * r
    light *= 1 + rng.uniform(-0.08, 0.08) * x + rng.uniform(-0.08, 0.08) * y
    gain = 255 * rng.uniform(0.75, 1.12) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    return cv2.resize(light[..., None] * gain, (width, height), interpolation=cv2.INTER_LINEAR)


def _to_uint8(rng: np.random.Generator, image: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Apply the lighting, a slight blur and sensor noise; round to uint8."""
    image *= light
    sigma = rng.uniform(0.5, 1.4) * min(image.shape[:2]) / 450
    if sigma >= 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = rng.random(image.shape[:2], dtype=np.float32) - 0.5  # uniform: cheaper than normal
    image += (noise * (255 * rng.uniform(0.02, 0.07)))[..., None]
    np.clip(image, 0, 255, out=image)
    return cv2.convertScaleAbs(image)  # rounds to nearest


@dataclass(frozen=True)
class _Lesion:
    """One lesion's drawing, cropped to where it is visible (read-only arrays)."""

    rgb: np.ndarray  # float32 0..1
    alpha: np.ndarray  # float32 coverage 0..1
    to_frame: np.ndarray  # 2x3 map from the crop to frame pixels around the lesion centre


@functools.lru_cache(maxsize=2)  # consecutive images of one lesion reuse its drawing
def _draw_lesion(dx: str, lesion_seed: int, frame_side: int) -> _Lesion:
    lesion_rng = np.random.default_rng(lesion_seed)
    frame_radius = lesion_rng.uniform(*LESION_RADIUS[dx]) * frame_side
    canvas = _canvas(_canvas_radius(frame_radius))
    rgb, alpha = PAINTERS[dx](canvas, lesion_rng)
    x, y, w, h = cv2.boundingRect((alpha > 1 / 255).astype(np.uint8))
    rgb = np.ascontiguousarray(np.clip(rgb[y : y + h, x : x + w], 0, 1), dtype=np.float32)
    alpha = np.ascontiguousarray(alpha[y : y + h, x : x + w], dtype=np.float32)
    rgb.flags.writeable = alpha.flags.writeable = False
    scale = frame_radius / canvas.radius
    offset = (np.array([x, y]) - canvas.side / 2) * scale
    to_frame = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]])
    return _Lesion(rgb, alpha, to_frame)


def render_lesion_image(
    dx: str,
    rng: np.random.Generator,
    width: int,
    height: int,
    lesion_seed: int | None = None,
) -> np.ndarray:
    """Draw one synthetic dermatoscopy-like image of class ``dx`` (uint8 HxWx3 RGB).

    The lesion itself (shape, colours, structures, size) depends only on ``lesion_seed``;
    the view (skin, placement, rotation, zoom, hairs, lighting, blur, noise) on ``rng``.
    Images with the same ``lesion_seed`` show the same lesion, like HAM10000's repeated
    images of one lesion. Without ``lesion_seed`` a new lesion is drawn from ``rng``.
    """
    if dx not in PAINTERS:
        raise ValueError(f"dx must be one of {CLASSES}, got {dx!r}")
    if lesion_seed is None:
        lesion_seed = int(rng.integers(2**63))
    lesion = _draw_lesion(dx, lesion_seed, min(width, height))
    image = _skin(rng, width, height)
    _place_lesion(image, lesion, _view_matrix(rng, lesion.to_frame, width, height))
    _hairs(rng, image)
    return _to_uint8(rng, image, _lighting(rng, width, height))


# ----------------------------------------------------------------------------------------
# The dataset on disk
# ----------------------------------------------------------------------------------------


def is_synthetic(data_dir: Path) -> bool:
    """True if ``data_dir`` holds a dataset written by :func:`generate_dataset`."""
    return (Path(data_dir) / MARKER_FILE).is_file()


def _id_number(identifier: str, prefix: str) -> int:
    return int(identifier.removeprefix(prefix))


def _image_rng(seed: int, image_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, _IMAGE_STREAM, _id_number(image_id, IMAGE_PREFIX)])


def _lesion_seed(seed: int, lesion_id: str) -> int:
    """The per-lesion seed of ``lesion_id`` in the dataset generated with ``seed``."""
    sequence = np.random.SeedSequence([seed, _LESION_STREAM, _id_number(lesion_id, LESION_PREFIX)])
    return int(sequence.generate_state(1, np.uint64)[0])


def _marker_text(n_images: int, width: int, height: int, seed: int) -> str:
    return (
        "SYNTHETIC DATA: these are NOT HAM10000 images and NOT photographs of skin.\n"
        "They were drawn by ham_utils.data.synthetic (shapes, colours and noise) with the\n"
        f"settings n_images={n_images} width={width} height={height} seed={seed}.\n"
        "They have no medical meaning whatsoever: no result obtained on them says anything\n"
        "about skin lesions. They exist to run and test the pipeline without the real data.\n"
    )


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(
            f"{out_dir} already exists and is not an empty folder; delete it or choose "
            "another output folder"
        )


def generate_dataset(
    out_dir: Path,
    n_images: int = 1500,
    width: int = 600,
    height: int = 450,
    seed: int = 2018,
    progress: bool = True,
) -> Path:
    """Write a SYNTHETIC dataset in the HAM10000 Kaggle layout to ``out_dir``; return it.

    ``out_dir`` gets HAM10000_metadata.csv, the JPEGs split by image id between
    HAM10000_images_part_1 and _part_2 (about half each) and :data:`MARKER_FILE`. All is
    written to a temporary sibling folder that is renamed at the end, so an interrupted run
    leaves no folder that looks complete.
    """
    out_dir = Path(out_dir)
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ParamsError(
            f"synthetic images must be at least {MIN_WIDTH}x{MIN_HEIGHT} pixels, "
            f"got {width}x{height}"
        )
    metadata = generate_metadata(n_images, seed)
    _check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same file system, so that the final rename is atomic;
    # mkdir (unlike tempfile.mkdtemp) keeps the user's umask for the finished folder.
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        _write_dataset(partial, metadata, width, height, seed, progress)
        _check_target(out_dir)
        if out_dir.exists():
            out_dir.rmdir()
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def _write_dataset(
    folder: Path, metadata: pd.DataFrame, width: int, height: int, seed: int, progress: bool
) -> None:
    """Images first, then the metadata, then the marker: a folder with a marker is complete."""
    part_1_ids = set(metadata["image_id"].sort_values().iloc[: math.ceil(len(metadata) / 2)])
    for name in IMAGE_FOLDERS:
        (folder / name).mkdir()
    rows = metadata[["lesion_id", "image_id", "dx"]].itertuples(index=False)
    bar = tqdm(rows, total=len(metadata), desc="synthetic images", unit="img", disable=not progress)
    for lesion_id, image_id, dx in bar:
        image = render_lesion_image(
            dx, _image_rng(seed, image_id), width, height, _lesion_seed(seed, lesion_id)
        )
        part = IMAGE_FOLDERS[0] if image_id in part_1_ids else IMAGE_FOLDERS[1]
        _write_jpeg(folder / part / f"{image_id}.jpg", image)
    metadata.to_csv(folder / METADATA_FILE, index=False)
    (folder / MARKER_FILE).write_text(_marker_text(len(metadata), width, height, seed))
