import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ham_utils.data import cache as cache_module
from ham_utils.data.cache import build_split_cache
from ham_utils.data.images import load_image
from ham_utils.errors import DataError


@pytest.fixture
def rows(tmp_path) -> pd.DataFrame:
    """Eight 60x45 JPEGs of different flat colours, as one split."""
    folder = tmp_path / "images"
    folder.mkdir()
    records = []
    for i in range(8):
        path = folder / f"IMG_{i}.jpg"
        Image.new("RGB", (60, 45), (30 * i, 255 - 30 * i, 100)).save(path, quality=95)
        records.append({"image_id": f"IMG_{i}", "label": i % 7, "path": str(path)})
    return pd.DataFrame(records)


def test_cache_holds_the_decoded_images_in_row_order(rows, tmp_path):
    cached = build_split_cache(rows, "train", tmp_path / "cache", size=24, progress=False)
    assert cached.images.shape == (8, 24, 24, 3) and cached.images.dtype == np.uint8
    assert isinstance(cached.images, np.memmap)
    assert list(cached.image_ids) == list(rows["image_id"])
    assert list(cached.labels) == list(rows["label"])
    for i in (0, 5):
        np.testing.assert_array_equal(cached.images[i], load_image(rows["path"][i], 24))


def test_unchanged_inputs_reuse_the_cache(rows, tmp_path, monkeypatch):
    first = build_split_cache(rows, "val", tmp_path, size=24, progress=False)
    monkeypatch.setattr(cache_module, "load_image", lambda *a: pytest.fail("cache was rebuilt"))
    again = build_split_cache(rows, "val", tmp_path, size=24, progress=False)
    assert again.path == first.path


def test_changed_image_rebuilds_and_removes_the_stale_file(rows, tmp_path):
    first = build_split_cache(rows, "test", tmp_path, size=24, progress=False)
    path = rows["path"][3]
    Image.new("RGB", (60, 45), (0, 0, 0)).save(path)
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock says
    second = build_split_cache(rows, "test", tmp_path, size=24, progress=False)
    assert second.path != first.path and not first.path.exists()
    assert second.images[3].max() < 10  # the new, black image


def test_size_mode_and_labels_are_part_of_the_key(rows, tmp_path):
    base = build_split_cache(rows, "train", tmp_path, size=24, progress=False).path
    other_size = build_split_cache(rows, "train", tmp_path, size=32, progress=False).path
    other_mode = build_split_cache(rows, "train", tmp_path, 24, "center_crop", progress=False).path
    relabelled = rows.assign(label=(rows["label"] + 1) % 7)
    other_labels = build_split_cache(relabelled, "train", tmp_path, size=24, progress=False).path
    assert len({base, other_size, other_mode, other_labels}) == 4
    assert other_size.exists() and other_mode.exists()  # other sizes and modes are not stale


def test_corrupt_image_names_the_file_and_leaves_no_partial_cache(rows, tmp_path):
    bad = rows["path"][6]
    with open(bad, "r+b") as f:
        f.truncate(200)
    with pytest.raises(DataError, match=r"IMG_6\.jpg"):
        build_split_cache(rows, "train", tmp_path / "c", size=24, progress=False)
    assert not list((tmp_path / "c").glob("*.npy*"))


def test_missing_image_is_a_clear_error(rows, tmp_path):
    os.remove(rows["path"][2])
    with pytest.raises(DataError, match=r"IMG_2\.jpg.*is gone"):
        build_split_cache(rows, "train", tmp_path, size=24, progress=False)


def test_empty_split_is_refused(rows, tmp_path):
    with pytest.raises(DataError, match="no images"):
        build_split_cache(rows.iloc[:0], "val", tmp_path, size=24, progress=False)
