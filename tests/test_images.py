import io

import numpy as np
import pytest
from PIL import Image

from ham_utils.data.images import load_image, open_rgb
from ham_utils.errors import DataError


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _two_halves(width=80, height=40) -> Image.Image:
    """Left half red, right half blue: orientation and cropping are visible."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (30, 20), 128),
        Image.new("CMYK", (30, 20), (0, 255, 255, 0)),
        Image.new("RGBA", (30, 20), (255, 0, 0, 0)),
        Image.new("P", (30, 20), 3),
    ],
    ids=["grayscale", "cmyk", "rgba", "palette"],
)
def test_any_common_mode_becomes_rgb8(image):
    fmt = "TIFF" if image.mode == "CMYK" else "PNG"
    out = open_rgb(_encode(image, fmt))
    assert out.mode == "RGB" and out.size == (30, 20)


def test_transparent_pixels_are_composited_on_white():
    out = np.asarray(open_rgb(_encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG")))
    assert (out == 255).all()


@pytest.mark.parametrize(
    ("dtype", "fmt"), [("<u2", "PNG"), (">u2", "TIFF"), ("<i4", "TIFF")], ids=["I;16", "I;16B", "I"]
)
def test_16_bit_grayscale_is_scaled_by_the_type_range_not_its_own_maximum(dtype, fmt):
    # A dark image (at most 4000 of 65535) stays dark; full scale and half scale map to 255, 128.
    values = np.array([[0, 4000, 32768, 65535]])
    out = np.asarray(open_rgb(_encode(Image.fromarray(values.astype(dtype)), fmt)))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 16, 128, 255]
    dark = np.asarray(open_rgb(_encode(Image.fromarray(values[:, :2].astype(dtype)), fmt)))
    assert dark[0, :, 0].tolist() == [0, 16]  # not brightened to 255


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = np.asarray(open_rgb(_encode(_two_halves(), "JPEG", exif=exif, quality=95)))
    assert out.shape[:2] == (80, 40)  # portrait after rotation
    top, bottom = out[:20].mean(axis=(0, 1)), out[-20:].mean(axis=(0, 1))
    assert top[0] > 200 > bottom[0]  # red half ends up on top


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"this is not an image", "not a readable image"),
        (_encode(_two_halves(400, 300), "JPEG")[:1500], "not a readable image"),
    ],
    ids=["empty", "text", "truncated-jpeg"],
)
def test_unreadable_input_is_a_data_error(payload, message, tmp_path):
    path = tmp_path / "ISIC_0000001.jpg"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message) as err:
        open_rgb(path)
    assert "ISIC_0000001.jpg" in str(err.value)


def test_huge_images_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr("ham_utils.data.images.MAX_PIXELS", 100)
    with pytest.raises(DataError, match="downscale"):
        open_rgb(_encode(Image.new("RGB", (20, 20)), "PNG"))


def test_center_crop_keeps_the_middle_and_squash_keeps_everything():
    arr = np.zeros((40, 120, 3), np.uint8)
    arr[:, :40] = arr[:, 80:] = (0, 255, 0)  # green outer thirds
    arr[:, 40:60], arr[:, 60:80] = (255, 0, 0), (0, 0, 255)  # red | blue middle
    wide = _encode(Image.fromarray(arr), "PNG")
    squashed, cropped = load_image(wide, 32, "squash"), load_image(wide, 32, "center_crop")
    assert squashed.shape == cropped.shape == (32, 32, 3) and squashed.dtype == np.uint8
    assert squashed[:, 0].mean(axis=0).argmax() == 1  # green edge kept
    assert cropped[:, 0].mean(axis=0).argmax() == 0  # red: the crop starts mid-image
    assert cropped[:, -1].mean(axis=0).argmax() == 2  # blue
    with pytest.raises(ValueError):
        load_image(wide, 32, "stretch")
