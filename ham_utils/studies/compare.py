"""Compare runs on the same test images: ``python -m ham_utils compare RUN RUN ...``.

For each run: the parameters that differ from the others, and its headline test metrics
with 95% bootstrap intervals. For each pair: the difference in balanced accuracy, macro ROC
AUC and melanoma sensitivity (at the argmax decision, and at 90% specificity), with a paired
bootstrap interval and a two-sided p-value.

Paired means one set of resamples of the test images is drawn and every run is scored on
each of them, so the difference's interval reflects only how the runs disagree, not how
hard the test set happens to be (which moves both runs together).

The p-value belongs to the percentile interval: twice the smaller share of resampled
differences on either side of zero, with the add-one correction of Davison & Hinkley
(Bootstrap Methods and their Application, 1997, eq. 4.11), so p < 0.05 exactly when the 95%
interval excludes zero. Holm's step-down adjustment over the pairs of each metric is given
beside it, for a reader looking at many pairs at once.

Runs trained or evaluated on different data or splits are refused: their test images, and
so their numbers, are not comparable.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ham_utils.data.split import read_splits
from ham_utils.errors import DataError
from ham_utils.evaluation.bootstrap import (
    LEVEL,
    RESAMPLES,
    SEED,
    percentile_interval,
    resample_counts,
)
from ham_utils.evaluation.bootstrap import weighted_metrics as bootstrap_metrics
from ham_utils.runs import (
    SPLIT_INFO_FILE,
    SPLITS_FILE,
    Run,
    list_runs,
    open_run,
    portable_settings,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The headline metrics of a comparison, most telling first, with their labels.
METRICS: dict[str, str] = {
    "balanced_accuracy": "balanced accuracy",
    "macro_roc_auc": "macro ROC AUC",
    "melanoma_sensitivity": "melanoma sensitivity",
    # On the ROC curve: whether melanomas are ranked better, not merely called more often.
    "melanoma_sensitivity_at_specificity_0.90": "melanoma sensitivity at 90% specificity",
    "macro_f1": "macro F1",
    "accuracy": "accuracy",
}
# The metrics whose paired differences are tested.
DIFFERENCE_METRICS: tuple[str, ...] = (
    "balanced_accuracy",
    "macro_roc_auc",
    "melanoma_sensitivity",
    "melanoma_sensitivity_at_specificity_0.90",
)
# Settings that neither change a model nor its evaluation: never a "difference" of two runs.
NOT_COMPARED: tuple[str, ...] = ("run_name", "workers", "loader", "track", "external_dir")


class NotComparable(DataError):
    """Runs that cannot be compared (different data, split or test images); says why."""


@dataclass(frozen=True)
class ScoredRun:
    """A run's test predictions, in the order of its ``predictions.csv``."""

    label: str
    run: Run
    image_ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    tta_views: int | None

    @property
    def data_name(self) -> str:
        """The data folder's name: the same images under another path on another machine."""
        return self.run.params.resolved_data_dir.name


def scored_run(run: Run | str | Path, which: str = "best", label: str = "") -> ScoredRun:
    """Read a run's test predictions (``evaluate`` writes them); a clear error if it has none."""
    from ham_utils.evaluation.evaluate import read_predictions

    run = run if isinstance(run, Run) else open_run(run)
    evaluation = run.evaluation(which)
    path = evaluation.predictions_file()
    if not path.is_file():
        raise DataError(
            f"{run.path} has no test predictions of its {which!r} model ({path} not found); "
            f"run `python -m ham_utils evaluate --run {run.path} --which {which}` first"
        )
    ids, labels, probs = read_predictions(path, run.classes)
    metrics = evaluation.metrics() or {}
    return ScoredRun(label or run.name, run, ids, labels, probs, metrics.get("tta_views"))


def aligned(scored: ScoredRun, image_ids: np.ndarray) -> ScoredRun:
    """``scored`` with its predictions in the order of ``image_ids`` (the same images). The
    first run's order is every run's, so that the resamples equal those of its evaluation
    and its intervals here are those of its ``metrics.json``."""
    position = {image_id: i for i, image_id in enumerate(scored.image_ids)}
    order = np.array([position[image_id] for image_id in image_ids])
    return dataclasses.replace(
        scored,
        image_ids=scored.image_ids[order],
        labels=scored.labels[order],
        probs=scored.probs[order],
    )


def why_not_comparable(a: ScoredRun, b: ScoredRun) -> str | None:
    """Why two runs' test results cannot be compared, or None when they can."""
    if a.run.classes != b.run.classes:
        return f"{a.label} predicts {a.run.classes}, {b.label} {b.run.classes}"
    if a.run.synthetic != b.run.synthetic or a.data_name != b.data_name:
        return (
            f"{a.label} was trained on {a.data_name!r}, {b.label} on {b.data_name!r}: "
            "different data"
        )
    if not np.array_equal(np.sort(a.image_ids), np.sort(b.image_ids)):
        shared = len(np.intersect1d(a.image_ids, b.image_ids))
        return (
            f"{a.label} was tested on {len(a.image_ids)} images, {b.label} on "
            f"{len(b.image_ids)}, {shared} of them shared: different splits (runs compare only "
            "with the same data, seed, val_fraction, test_fraction and "
            "one_image_per_lesion_eval)"
        )
    b_labels = aligned(b, a.image_ids).labels
    if not np.array_equal(a.labels, b_labels):
        differ = int((a.labels != b_labels).sum())
        return f"{differ} test images have different labels in {a.label} and {b.label}"
    return None


def _labels(runs: Sequence[Run]) -> list[str]:
    """Each run's ``run_name`` when those tell the runs apart, else its folder name, else (the
    same folder in two places, e.g. a copy) the end of its path that tells it apart."""
    names = [r.params.run_name for r in runs]
    if all(names) and len(set(names)) == len(names):
        return names
    parts = [r.path.parts for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r.path) for r in runs]


def differing_parameters(runs: Sequence[ScoredRun]) -> pd.DataFrame:
    """The parameters (and evaluation settings) whose values differ between the runs: one
    row per parameter, one column per run."""
    table = {}
    for scored in runs:
        values = portable_settings(scored.run.params)
        for key in NOT_COMPARED:
            values.pop(key, None)
        values["tta views (evaluated)"] = scored.tta_views
        table[scored.label] = values
    frame = pd.DataFrame(table)
    differ = frame.astype(str).nunique(axis=1) > 1
    return frame[differ]


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a zero difference (see the module's docstring)."""
    d = differences[np.isfinite(differences)]
    if not len(d):
        return float("nan")
    below = (np.sum(d <= 0) + 1) / (len(d) + 1)
    above = (np.sum(d >= 0) + 1) / (len(d) + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979). A missing p-value (NaN, a metric that
    could not be computed) stays NaN and is not counted among the tests. Written out: a few
    lines, where statsmodels would be a dependency for this one function."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(p[finite])]):
        running = max(running, (len(finite) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


@dataclass(frozen=True)
class Comparison:
    runs: tuple[ScoredRun, ...]
    parameters: pd.DataFrame  # differing parameters: index parameter, one column per run
    metrics: pd.DataFrame  # run, metric, value, low, high
    recall: pd.DataFrame  # run, class, value, low, high
    differences: pd.DataFrame  # a, b, metric, difference (b - a), low, high, p_value, p_holm
    resamples: int
    seed: int
    level: float
    n_images: int

    def metrics_table(self) -> pd.DataFrame:
        """One row per run, one column per metric: ``value [low, high]``."""
        from ham_utils.evaluation.bootstrap import with_interval

        values = self.metrics[["value", "low", "high"]].to_numpy()
        cells = self.metrics.assign(cell=[with_interval(v, [lo, hi]) for v, lo, hi in values])
        table = cells.pivot(index="run", columns="metric", values="cell")
        return table.loc[[r.label for r in self.runs], list(METRICS)].rename(columns=METRICS)

    def plot(self, path: str | Path | None = None) -> Figure:
        """Each run's headline test metrics and per-class recall with their 95% intervals."""
        from ham_utils.figures.comparison import plot_comparison

        return plot_comparison(self.metrics, self.recall, METRICS, self.n_images, path)

    def plot_differences(self, path: str | Path | None = None) -> Figure:
        """The paired differences with their 95% intervals, one panel per metric."""
        from ham_utils.figures.comparison import plot_differences

        return plot_differences(self.differences, METRICS, path)

    def differences_table(self) -> pd.DataFrame:
        """One row per pair and metric: ``difference [low, high]``, p and Holm's p."""
        d = self.differences
        return pd.DataFrame(
            {
                "comparison": d["b"] + " - " + d["a"],
                "metric": d["metric"].map(METRICS),
                "difference [95% interval]": [
                    f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                    for v, lo, hi in d[["difference", "low", "high"]].to_numpy()
                ],
                "p": d["p_value"].map(lambda p: format_p(p, self.resamples)),
                "p (Holm)": d["p_holm"].map(lambda p: f"{p:.3f}"),
            }
        )


def smallest_p(resamples: int) -> float:
    """The smallest p-value :func:`paired_p_value` can give with ``resamples`` resamples."""
    return 2 / (resamples + 1)


def format_p(p: float, resamples: int) -> str:
    """``p`` with three decimals; at the test's floor ``≤ floor``, since the bootstrap cannot
    tell a smaller p from it."""
    floor = smallest_p(resamples)
    return f"≤ {floor:.3f}" if p <= floor * (1 + 1e-9) else f"{p:.3f}"


def compare(
    runs: Sequence[Run | str | Path],
    which: str = "best",
    reference: str = "",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Comparison:
    """Compare the test results of ``runs``; refuse (:class:`NotComparable`) runs on
    different data or splits. ``reference``: a run's label or folder name to compare every
    other run against (default: every pair)."""
    opened = [r if isinstance(r, Run) else open_run(r) for r in runs]
    if len(opened) < 1:
        raise DataError("give at least one run to compare")
    if len({r.path for r in opened}) < len(opened):
        raise DataError("the same run is named twice")
    scored = [scored_run(r, which, label) for r, label in zip(opened, _labels(opened), strict=True)]
    for other in scored[1:]:
        reason = why_not_comparable(scored[0], other)
        if reason:
            raise NotComparable(f"cannot compare: {reason}")
    scored = [scored[0], *(aligned(s, scored[0].image_ids) for s in scored[1:])]

    first = scored[0]
    counts = resample_counts(len(first.labels), resamples, seed, _test_lesions(first))
    ones = np.ones((1, len(first.labels)))
    points, draws = {}, {}
    for s in scored:
        point = bootstrap_metrics(s.labels, s.probs, ones, s.run.classes)
        points[s.label] = {k: float(v[0]) for k, v in point.items()}
        draws[s.label] = bootstrap_metrics(s.labels, s.probs, counts, s.run.classes)

    def rows(keys: dict[str, str]) -> list[dict]:
        out = []
        for s in scored:
            for key, name in keys.items():
                low, high = percentile_interval(draws[s.label][key], level) or [np.nan] * 2
                value = points[s.label][key]
                out.append(
                    {"run": s.label, "metric": name, "value": value, "low": low, "high": high}
                )
        return out

    metrics = pd.DataFrame(rows({k: k for k in METRICS}))
    recall = pd.DataFrame(rows({f"recall_{c}": c for c in first.run.classes})).rename(
        columns={"metric": "class"}
    )
    differences = _differences(scored, points, draws, reference, level)
    return Comparison(
        tuple(scored),
        differing_parameters(scored),
        metrics,
        recall,
        differences,
        len(counts),
        seed,
        level,
        len(first.labels),
    )


def _test_lesions(scored: ScoredRun) -> np.ndarray | None:
    """The lesion of each test image when a lesion has several (then lesions are drawn,
    as in the evaluation's own intervals); None when each image is its own lesion."""
    lesion_of = read_splits(scored.run.path / SPLITS_FILE).set_index("image_id")["lesion_id"]
    lesions = lesion_of.reindex(scored.image_ids).to_numpy()
    if pd.isna(lesions).any() or len(set(lesions)) == len(lesions):
        return None
    return lesions


def _differences(
    scored: Sequence[ScoredRun],
    points: dict[str, dict[str, float]],
    draws: dict[str, dict[str, np.ndarray]],
    reference: str,
    level: float,
) -> pd.DataFrame:
    labels = [s.label for s in scored]
    if reference:
        matches = [s.label for s in scored if reference in (s.label, s.run.name, str(s.run.path))]
        if not matches:
            raise DataError(f"reference {reference!r} is none of the compared runs {labels}")
        pairs = [(matches[0], other) for other in labels if other != matches[0]]
    else:
        pairs = list(itertools.combinations(labels, 2))
    out = []
    for metric in DIFFERENCE_METRICS:
        for a, b in pairs:
            delta = draws[b][metric] - draws[a][metric]
            low, high = percentile_interval(delta, level) or [np.nan] * 2
            out.append(
                {
                    "a": a,
                    "b": b,
                    "metric": metric,
                    "difference": points[b][metric] - points[a][metric],
                    "low": low,
                    "high": high,
                    "p_value": paired_p_value(delta),
                }
            )
    frame = pd.DataFrame(out, columns=["a", "b", "metric", "difference", "low", "high", "p_value"])
    frame["p_holm"] = np.nan
    for _, group in frame.groupby("metric"):
        frame.loc[group.index, "p_holm"] = holm(group["p_value"].to_numpy())
    return frame


def comparable_runs(
    reference: Run | str | Path, which: str = "best", runs_root: Path | None = None
) -> tuple[list[Path], dict[str, str]]:
    """Every finished run that can be compared with ``reference`` (itself first), and the
    others with the reason each was left out."""
    ref = scored_run(reference, which)
    kept, left_out = [ref.run.path], {}
    for path in list_runs(runs_root):
        if path == ref.run.path:
            continue
        try:
            reason = why_not_comparable(ref, scored_run(path, which))
        except DataError as e:
            reason = str(e)
        if reason:
            left_out[path.name] = reason
        else:
            kept.append(path)
    return kept, left_out


def data_note(runs: Sequence[ScoredRun]) -> str:
    """What the compared runs were tested on, in words (and a warning for synthetic data)."""
    first = runs[0]
    info_file = first.run.path / SPLIT_INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    note = f"{len(first.labels)} test images of {first.data_name}"
    if info.get("synthetic", first.run.synthetic):
        note += " (SYNTHETIC demo data: these numbers mean nothing medically)"
    return note
