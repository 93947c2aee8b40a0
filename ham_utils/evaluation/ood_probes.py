"""What the out-of-distribution check is measured on (``ham_utils.evaluation.ood``).

Two kinds of probe. Acquisition shifts of a real lesion photograph, which the check must let
through (a lesion photographed at another resolution, compressed harder, or under another
light is still a lesion): the image as given, resized to 1024 pixels wide, recompressed as
JPEG at quality 60, and with a colour cast of +-10% (red up and blue down, and the reverse).
And pictures that are not lesions, which it must stop: ten of scikit-image's sample pictures
(the same cat twice), uniform noise and four flat colours.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SHIFTS: tuple[str, ...] = ("as given", "1024 wide", "JPEG quality 60", "warm cast", "cool cast")
# Per-channel gains (R, G, B) of the colour casts.
CASTS = {"warm cast": (1.1, 1.0, 0.9), "cool cast": (0.9, 1.0, 1.1)}
SKIMAGE_PICTURES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
)
FLAT_COLOURS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128,) * 3,
                "skin": (220, 180, 150)}  # fmt: skip


def acquisition_shifts(image: Image.Image) -> dict[str, Image.Image]:
    """The lesion photograph as given and under each acquisition shift of :data:`SHIFTS`."""
    image = image.convert("RGB")
    width, height = image.size
    shifted = {"as given": image}
    shifted["1024 wide"] = image.resize((1024, round(1024 * height / width)), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=60)
    shifted["JPEG quality 60"] = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32)
    for name, gains in CASTS.items():
        cast = np.clip(np.rint(pixels * np.asarray(gains, np.float32)), 0, 255)
        shifted[name] = Image.fromarray(cast.astype(np.uint8))
    assert tuple(shifted) == SHIFTS
    return shifted


def not_lesions(width: int = 600, height: int = 450, seed: int = 1) -> dict[str, Image.Image]:
    """Fifteen pictures that are not lesions: scikit-image's samples, noise, flat colours."""
    import skimage.data

    pictures = {}
    for name in SKIMAGE_PICTURES:
        picture = getattr(skimage.data, name)()
        rgb = np.stack([picture] * 3, -1) if picture.ndim == 2 else picture[..., :3]
        pictures[name] = Image.fromarray(rgb.astype(np.uint8))
    rng = np.random.default_rng(seed)
    pictures["noise"] = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    for name, colour in FLAT_COLOURS.items():
        pictures[f"flat {name}"] = Image.new("RGB", (width, height), colour)
    return pictures
