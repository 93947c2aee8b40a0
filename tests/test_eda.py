import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from ham_utils.config import CLASSES, Params
from ham_utils.data.images import load_image
from ham_utils.data.metadata import read_ham10000
from ham_utils.data.synthetic import generate_dataset
from ham_utils.model.losses import class_weights, focal_alpha
from ham_utils.report import eda

WIDTH, HEIGHT = 96, 72


@pytest.fixture(scope="module")
def metadata(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("eda")
    data_dir = generate_dataset(
        root / "demo", n_images=120, width=WIDTH, height=HEIGHT, seed=1, progress=False
    )
    return read_ham10000(data_dir, verify_images=False, progress=False).metadata


@pytest.fixture(scope="module")
def stats(metadata) -> pd.DataFrame:
    return eda.image_statistics(metadata, sample_per_class=4, seed=3)


def assert_png(fig, path):
    assert isinstance(fig, Figure)
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


def test_class_summary(metadata):
    table = eda.class_summary(metadata)
    assert list(table.index) == list(CLASSES)
    assert table["images"].sum() == len(metadata)
    assert (table["lesions"] <= table["images"]).all()
    assert table.loc[table["images"].idxmax(), "imbalance"] == 1.0
    assert (table["imbalance"] >= 1.0).all()
    assert table["share_pct"].sum() == pytest.approx(100.0)
    assert table.loc["nv", "lesions"] == metadata.loc[metadata["dx"] == "nv", "lesion_id"].nunique()


def test_class_summary_keeps_empty_classes(metadata):
    table = eda.class_summary(metadata[metadata["dx"] != "df"])
    assert table.loc["df", "images"] == 0 and table.loc["df", "lesions"] == 0
    assert np.isnan(table.loc["df", "imbalance"]) and np.isnan(table.loc["df", "images_per_lesion"])
    assert np.isfinite(table.drop(index="df")["imbalance"]).all()


def test_images_per_lesion(metadata):
    counts = eda.images_per_lesion(metadata)
    assert counts.sum() == metadata["lesion_id"].nunique()
    assert (counts.index * counts).sum() == len(metadata)
    assert list(counts.index) == list(range(1, len(counts) + 1))


def test_image_statistics(metadata, stats):
    assert (stats["width"] == WIDTH).all() and (stats["height"] == HEIGHT).all()
    per_class = stats["dx"].value_counts()
    available = metadata["dx"].value_counts()
    for dx in CLASSES:
        assert per_class.get(dx, 0) == min(4, available.get(dx, 0))
    assert stats["image_id"].is_unique
    assert stats["image_id"].isin(metadata["image_id"]).all()
    colours = stats[["mean_r", "mean_g", "mean_b", "std_gray"]]
    assert ((colours >= 0) & (colours <= 255)).all().all()
    assert (stats["std_gray"] > 0).all()
    again = eda.image_statistics(metadata, sample_per_class=4, seed=3)
    pd.testing.assert_frame_equal(stats, again)


@pytest.mark.parametrize(
    ("power", "cap", "mode"),
    [(0.0, 0.0, None), (1.0, 0.0, "inverse_frequency"), (1.5, 3.0, "balanced_sqrt")],
)
def test_weights_table(metadata, power, cap, mode):
    counts = metadata["dx"].value_counts()
    table = eda.weights_table(counts, power, cap, mode)
    ordered = counts.reindex(CLASSES).to_numpy()
    assert list(table.index) == list(CLASSES)
    np.testing.assert_array_equal(table["train_images"], ordered)
    expected = class_weights(ordered, power, cap or None) if power else np.ones(len(CLASSES))
    np.testing.assert_allclose(table["class_weight"], expected)
    alpha = focal_alpha(ordered, mode) if mode else np.ones(len(CLASSES))
    np.testing.assert_allclose(table["focal_alpha"], alpha)
    # The same from a plain array in CLASSES order, and "none" as a string.
    if mode is None:
        plain = eda.weights_table(ordered, power, cap, "none")
        pd.testing.assert_frame_equal(plain, table)


def test_figures_write_pngs(metadata, stats, tmp_path):
    path = tmp_path / "demographics.png"
    assert_png(eda.plot_demographics(metadata, path=path), path)
    path = tmp_path / "colours.png"
    fig = eda.plot_colour_statistics(stats, path=path)
    assert_png(fig, path)
    assert f"{WIDTH}x{HEIGHT} ({len(stats)})" in fig.get_suptitle()
    path = tmp_path / "grid.png"
    fig = eda.plot_sample_grid(metadata, per_class=3, seed=0, size=48, path=path)
    assert_png(fig, path)
    assert len(fig.axes) == 3 * len(CLASSES)
    assert fig.axes[0].get_ylabel().startswith("akiec\n")


def test_demographics_with_missing_values(metadata, tmp_path):
    sparse = metadata.copy()
    sparse.loc[sparse.index[::3], ["age", "sex", "localization"]] = np.nan
    sparse = sparse[sparse["dx"] != "vasc"]  # a class without images
    path = tmp_path / "sparse.png"
    assert_png(eda.plot_demographics(sparse, path=path), path)
    path = tmp_path / "sparse_grid.png"
    assert_png(eda.plot_sample_grid(sparse, per_class=2, size=32, path=path), path)


def test_augmentation_preview(metadata, tmp_path):
    firsts = metadata.groupby("dx").head(1).head(4)  # one image each of four classes
    images = np.stack([load_image(p, 48) for p in firsts["path"]])
    labels = firsts["label"].to_numpy()
    params = Params(seed=5, mixup_alpha=0.4, cutmix_alpha=1.0)
    path = tmp_path / "augmentation.png"
    fig = eda.plot_augmentation_preview(images, labels, params, n=4, path=path)
    assert_png(fig, path)
    assert len(fig.axes) == 5 * 4  # original, two augmented, MixUp, CutMix
    assert [fig.axes[4 * r].get_ylabel() for r in (0, 3, 4)] == ["original", "MixUp", "CutMix"]
    assert [ax.get_title() for ax in fig.axes[:4]] == [CLASSES[k] for k in labels]
    two_classes = 0
    for ax in fig.axes[12:]:
        terms = re.findall(r"(\w+) (\d\.\d\d)", ax.get_title())
        assert 1 <= len(terms) <= 2 and all(dx in CLASSES for dx, _ in terms)
        assert sum(float(w) for _, w in terms) == pytest.approx(1.0, abs=0.015)
        two_classes += len(terms) == 2
    assert two_classes > 0


def test_mix_title():
    label = np.zeros(len(CLASSES))
    label[CLASSES.index("nv")], label[CLASSES.index("mel")] = 0.62, 0.38
    assert eda.mix_title(label) == "nv 0.62 + mel 0.38"
    assert eda.mix_title(np.eye(len(CLASSES))[0]) == "akiec 1.00"
