"""Decoding and resizing one image: the single place every step (cache, app, predict) uses.

Pillow is used rather than OpenCV because it raises on truncated JPEGs (OpenCV returns a
half-grey image with only a log line) and because its JPEG draft mode decodes large
images at a reduced scale, which makes resizing 600x450 originals several times faster.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ham_utils.config import RESIZE_MODES
from ham_utils.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# Refuse images of more than 100 MP (300 MB as 8-bit RGB) before decoding them: far above any
# dermatoscope or phone photo. Pillow's own bomb check only warns up to ~179 MP and refuses
# above; both end in the same message.
MAX_PIXELS = 100_000_000

UINT16_MAX = 65535

ImageSource = str | os.PathLike[str] | bytes


DATASET_FIX = "replace it with an intact JPEG/PNG or remove its metadata row"


def open_rgb(
    source: ImageSource, draft_size: int | None = None, fix: str = DATASET_FIX
) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB, applying its EXIF orientation.

    16-bit, CMYK, grayscale, palette and RGBA images are converted (alpha is composited on
    white). Raises :class:`DataError` naming the file for anything that is not a readable
    image: empty, truncated, corrupt, or too large; ``fix`` ends the message of a corrupt one.
    """
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        if isinstance(source, bytes) and not source:
            raise DataError(f"{name} is empty (0 bytes); upload a JPEG, PNG, BMP or TIFF image")
        if not isinstance(source, bytes) and os.path.getsize(source) == 0:
            raise DataError(f"{name} is empty (0 bytes); replace it with the original image")
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP; the size is checked here against MAX_PIXELS instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
        with im:
            if im.width * im.height > MAX_PIXELS:
                raise DataError(
                    f"{name} is {im.width}x{im.height} pixels, more than {MAX_PIXELS:,}; "
                    "downscale it before use"
                )
            if draft_size and im.format == "JPEG":
                # Decode at the smallest JPEG scale still at least draft_size on each side.
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{name} has more than {MAX_PIXELS:,} pixels ({e}); downscale it before use"
        ) from e
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
    ) as e:
        # Pillow's message names the file object (unreadable for uploaded bytes).
        detail = (
            "unknown format"
            if isinstance(e, UnidentifiedImageError)
            else f"{type(e).__name__}: {e}"
        )
        raise DataError(f"{name} is not a readable image ({detail}); {fix}") from e


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale the type's range 0..65535 to 0..255 (Pillow would clip at
        # 255), not the image's own maximum, which would brighten a dark image. Mode "I"
        # (32-bit) is how some files and older Pillow versions hold 16-bit data; values
        # outside 0..65535 are clipped.
        arr = np.clip(np.asarray(im, dtype=np.float64), 0, UINT16_MAX)
        im = Image.fromarray((arr * (255.0 / UINT16_MAX)).round().astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def resize_square(im: Image.Image, size: int, mode: str = "squash") -> np.ndarray:
    """Resize to ``size`` x ``size`` and return a uint8 HxWx3 array.

    ``squash`` scales the whole frame (aspect ratio not kept); ``center_crop`` cuts the
    largest centred square first, as the ISIC 2018 challenge images were prepared.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if mode == "center_crop":
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
    im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(im, dtype=np.uint8)


def load_image(source: ImageSource, size: int, mode: str = "squash") -> np.ndarray:
    """Decode, orient and resize one image to a uint8 ``size`` x ``size`` x 3 array."""
    return resize_square(open_rgb(source, draft_size=size), size, mode)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
