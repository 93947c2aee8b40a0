"""Bootstrap intervals: the vectorised weighted metrics equal the plain ones on resampled
data, and the intervals behave as intervals should (exact binomial case, coverage, lesions)."""

import numpy as np
import pytest
from scipy.stats import binomtest

from ham_utils.config import CLASSES
from ham_utils.evaluation.bootstrap import (
    bootstrap_intervals,
    percentile_interval,
    resample_counts,
    weighted_metrics,
)
from ham_utils.evaluation.scoring import evaluation_metrics


def _predictions(n: int, seed: int = 0, skill: float = 2.0):
    """Labels with HAM10000-like imbalance and probabilities that favour the true class,
    with ties (rounded scores) so that tie handling is exercised."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(CLASSES), n, p=[0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
    logits = rng.normal(0, 1, (n, len(CLASSES)))
    logits[np.arange(n), y] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, np.round(probs, 2) / np.round(probs, 2).sum(1, keepdims=True)


def _flat(metrics: dict) -> dict:
    melanoma = metrics["melanoma"]
    flat = {k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                    "macro_roc_auc", "ece")}  # fmt: skip
    flat["melanoma_sensitivity"] = melanoma["sensitivity"]
    flat["melanoma_specificity"] = melanoma["specificity"]
    for target, point in melanoma["sensitivity_at_specificity"].items():
        flat[f"melanoma_sensitivity_at_specificity_{target}"] = point["sensitivity"]
    aps = [c["average_precision"] for c in metrics["per_class"].values()]
    flat["macro_average_precision"] = np.mean([a for a in aps if a is not None])
    for name, row in metrics["per_class"].items():
        flat[f"recall_{name}"] = row["recall"] if row["support"] else None
        flat[f"precision_{name}"] = row["precision"]
        flat[f"roc_auc_{name}"] = row["roc_auc"]
    return flat


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_metrics_equal_the_plain_metrics_of_the_resampled_rows(seed):
    y, probs = _predictions(300, seed)
    counts = resample_counts(len(y), resamples=4, seed=seed)
    vectorised = weighted_metrics(y, probs, counts)
    for row, w in enumerate(counts):
        drawn = np.repeat(np.arange(len(y)), w)
        expected = _flat(evaluation_metrics(y[drawn], probs[drawn]))
        for name, value in expected.items():
            got = vectorised[name][row]
            if value is None:
                assert np.isnan(got), name
            else:
                assert got == pytest.approx(value, abs=1e-9), name


def test_the_interval_of_a_proportion_matches_the_exact_binomial_interval():
    n, hits = 400, 300
    y = np.zeros(n, dtype=int)
    probs = np.zeros((n, len(CLASSES)))
    probs[:hits, 0] = 1.0
    probs[hits:, 1] = 1.0
    interval = bootstrap_intervals(y, probs)["intervals"]["accuracy"]
    exact = binomtest(hits, n).proportion_ci(0.95, method="exact")
    assert interval[0] == pytest.approx(exact.low, abs=0.01)
    assert interval[1] == pytest.approx(exact.high, abs=0.01)


def test_intervals_cover_the_true_value_about_95_percent_of_the_time():
    """Simulated test sets of 1,500 from one fixed model: the share of 95% intervals that
    contain the population value. Near 0.95 for accuracy; lower for balanced accuracy, whose
    percentile interval is too narrow when a class has a dozen cases (df at 1%, as in
    HAM10000: about 0.86 here), which the README says."""
    population_y, population_probs = _predictions(200_000, seed=99)
    truth = weighted_metrics(population_y, population_probs, np.ones((1, len(population_y))))
    rng = np.random.default_rng(5)
    covered = {"accuracy": [], "balanced_accuracy": []}
    for trial in range(100):
        pick = rng.choice(len(population_y), 1500, replace=False)
        result = bootstrap_intervals(
            population_y[pick], population_probs[pick], resamples=300, seed=trial
        )
        for name, hits in covered.items():
            low, high = result["intervals"][name]
            hits.append(low <= truth[name][0] <= high)
    assert 0.9 <= np.mean(covered["accuracy"]) <= 1.0, np.mean(covered["accuracy"])
    assert 0.8 <= np.mean(covered["balanced_accuracy"]) <= 0.97, np.mean(
        covered["balanced_accuracy"]
    )


def test_lesions_are_resampled_whole_when_they_have_several_images():
    """Four identical images per lesion carry the information of one: resampling lesions
    gives the interval of the lesions alone, resampling images one about half as wide."""
    y, probs = _predictions(300, seed=3)
    lesions = np.arange(len(y))
    by_lesion = bootstrap_intervals(y, probs)["intervals"]["accuracy"]
    y4, probs4, lesions4 = np.repeat(y, 4), np.repeat(probs, 4, axis=0), np.repeat(lesions, 4)
    grouped = bootstrap_intervals(y4, probs4, groups=lesions4)
    naive = bootstrap_intervals(y4, probs4)["intervals"]["accuracy"]
    width = by_lesion[1] - by_lesion[0]
    assert grouped["unit"] == "lesion"
    assert grouped["intervals"]["accuracy"][1] - grouped["intervals"]["accuracy"][0] == (
        pytest.approx(width, rel=0.15)
    )
    assert naive[1] - naive[0] == pytest.approx(width / 2, rel=0.2)


def test_seeded_and_none_for_what_no_resample_defines():
    y, probs = _predictions(200, seed=4)
    assert bootstrap_intervals(y, probs, seed=7) == bootstrap_intervals(y, probs, seed=7)
    assert bootstrap_intervals(y, probs, seed=7) != bootstrap_intervals(y, probs, seed=8)
    no_df = y != CLASSES.index("df")
    intervals = bootstrap_intervals(y[no_df], probs[no_df])["intervals"]
    assert intervals["recall_df"] is None and intervals["roc_auc_df"] is None
    assert percentile_interval(np.array([np.nan, np.nan])) is None


def test_bands_hold_the_curves_they_describe():
    from ham_utils.evaluation.bootstrap import reliability_bands, roc_bands
    from ham_utils.evaluation.scoring import reliability_table
    from ham_utils.figures.evaluation import ROC_BAND_GRID

    y, probs = _predictions(1500, seed=6)
    counts = resample_counts(len(y), resamples=300)
    roc = roc_bands(y, probs, counts, ROC_BAND_GRID)
    assert roc.shape == (len(CLASSES), len(ROC_BAND_GRID), 2)
    assert (roc[..., 0] <= roc[..., 1]).all() and (np.diff(roc[..., 0], axis=1) >= 0).all()
    # The observed melanoma curve lies inside its band nearly everywhere.
    from sklearn.metrics import roc_curve

    mel = CLASSES.index("mel")
    fpr, tpr, _ = roc_curve(y == mel, probs[:, mel])
    observed = tpr[np.searchsorted(fpr, ROC_BAND_GRID, side="right") - 1]
    inside = (roc[mel, :, 0] - 1e-9 <= observed) & (observed <= roc[mel, :, 1] + 1e-9)
    assert inside.mean() >= 0.9
    wide = roc[CLASSES.index("df"), 10, 1] - roc[CLASSES.index("df"), 10, 0]
    narrow = roc[CLASSES.index("nv"), 10, 1] - roc[CLASSES.index("nv"), 10, 0]
    assert wide > narrow  # 15 df lesions against 1,000 nv

    reliability = reliability_bands(y, probs, counts)
    accuracy = reliability_table(y, probs)["accuracy"].to_numpy()
    filled = np.isfinite(accuracy) & np.isfinite(reliability).all(axis=1)
    assert filled.sum() >= 5
    assert (
        (reliability[filled, 0] <= accuracy[filled]) & (accuracy[filled] <= reliability[filled, 1])
    ).all()
