import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from scipy.special import softmax

from ham_utils.config import CLASSES
from ham_utils.evaluation.scoring import (
    evaluation_metrics,
    expected_calibration_error,
    reliability_table,
)
from ham_utils.figures import evaluation as plots
from ham_utils.figures.training import plot_training_curves
from ham_utils.report.eda import plot_class_distribution


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASSES), 120)
    y[y == CLASSES.index("df")] = 0  # one class without images: must be skipped, not crash
    logits = rng.normal(size=(120, len(CLASSES)))
    logits[np.arange(120), y] += 1.0
    return y, softmax(logits, axis=1)


def history(phases, drop=()):
    rng = np.random.default_rng(1)
    n = len(phases)
    table = pd.DataFrame({"epoch": range(n), "phase": phases})
    table["learning_rate"] = np.where(table["phase"] == 1, 1e-3, np.geomspace(1e-4, 1e-6, n))
    for name in ("loss", "accuracy", "balanced_accuracy", "macro_f1"):
        table[name] = rng.uniform(0, 1, n)
        table[f"val_{name}"] = rng.uniform(0, 1, n)
    return table.drop(columns=list(drop))


def assert_png(fig, path):
    assert isinstance(fig, Figure)
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"


@pytest.mark.parametrize(
    "table",
    [
        history([1, 1, 2, 2, 2]),
        history([2, 2, 2], drop=["val_macro_f1"]),
        history([1, 2], drop=["val_balanced_accuracy", "learning_rate", "macro_f1"]),
    ],
    ids=["both-phases", "phase2-no-val-f1", "sparse"],
)
def test_training_curves(tmp_path, table):
    path = tmp_path / "nested" / "curves.png"
    assert_png(plot_training_curves(table, path=path), path)


def test_confusion_matrices(tmp_path, predictions):
    cm = evaluation_metrics(*predictions)["confusion_matrix"]
    path = tmp_path / "cm.png"
    assert_png(plots.plot_confusion_matrices(cm, CLASSES, path=path), path)


@pytest.mark.parametrize("plot", [plots.plot_roc_curves, plots.plot_pr_curves])
def test_one_vs_rest_curves_skip_empty_class(tmp_path, predictions, plot):
    path = tmp_path / "curves.png"
    fig = plot(*predictions, CLASSES, path=path)
    assert_png(fig, path)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("df:") and "skipped" in t for t in legend)
    assert sum("AUC" in t or "AP" in t for t in legend) == len(CLASSES) - 1


def test_reliability(tmp_path, predictions):
    path = tmp_path / "reliability.png"
    table = reliability_table(*predictions, bins=12)
    ece = expected_calibration_error(*predictions, bins=12)
    fig = plots.plot_reliability(table, ece, path=path)
    assert_png(fig, path)
    assert fig.axes[0].get_title() == f"Reliability (ECE {ece:.3f}, 12 bins)"


def test_per_class_f1(tmp_path, predictions):
    path = tmp_path / "f1.png"
    assert_png(plots.plot_per_class_f1(evaluation_metrics(*predictions), path=path), path)


@pytest.mark.parametrize(
    "counts",
    [
        pd.Series([327, 514, 1099, 115, 1113, 6705, 142], index=CLASSES),
        pd.DataFrame({"train": [200, 300], "val": [40, 60], "test": [41, 59]}, index=["a", "b"]),
    ],
    ids=["series", "frame"],
)
def test_class_distribution(tmp_path, counts):
    path = tmp_path / "dist.png"
    assert_png(plot_class_distribution(counts, path=path), path)


def test_figure_renders_itself_for_notebooks(predictions):
    png = plots.plot_confusion_matrices(np.eye(len(CLASSES)))._repr_png_()
    assert png.startswith(b"\x89PNG")


def test_training_curves_note_a_metric_not_recorded():
    fig = plot_training_curves(history([1, 2, 2], drop=["macro_f1", "val_macro_f1"]))
    macro_f1 = next(ax for ax in fig.axes if ax.get_title() == "Macro F1")
    assert [t.get_text() for t in macro_f1.texts] == ["not recorded"]
