"""Lesion-aware, class-stratified train/val/test split.

HAM10000 has ~1.3 images per lesion; splitting by image puts photos of one lesion on both
sides and inflates every metric. Here whole lesions go to one split (grouped by
``lesion_id``) while each class keeps its overall share in every split (stratified by
``dx``), using scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ham_utils.config import CLASSES

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Extra images of val/test lesions when only one image per lesion is evaluated. They stay
# in splits.csv (nothing is lost) but no step trains or evaluates on them.
EXTRA_SUFFIX = "_extra"
MAX_FOLDS = 100
FOLD_ORDER_CANDIDATES = 200


def fold_count(val_fraction: float, test_fraction: float) -> int:
    """The smallest number of equal folds that val and test fractions are whole multiples of."""
    for n in range(2, MAX_FOLDS + 1):
        k_val, k_test = val_fraction * n, test_fraction * n
        if (
            math.isclose(k_val, round(k_val), abs_tol=1e-6)
            and math.isclose(k_test, round(k_test), abs_tol=1e-6)
            and round(k_val) >= 1
            and round(k_test) >= 1
            and n - round(k_val) - round(k_test) >= 1
        ):
            return n
    raise ValueError(
        f"val_fraction={val_fraction} and test_fraction={test_fraction} must be multiples of "
        f"1/n for some n <= {MAX_FOLDS} (e.g. 0.15 and 0.15, or 0.1 and 0.2)"
    )


def lesion_split(
    metadata: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    one_image_per_lesion_eval: bool = True,
) -> pd.DataFrame:
    """Return ``metadata`` with a ``split`` column: train, val, test (and ``*_extra``).

    The data is cut into ``n`` stratified, lesion-grouped folds (``n`` from the fractions,
    20 for 70/15/15); ``n * test_fraction`` folds form the test split and
    ``n * val_fraction`` the validation split. With ``one_image_per_lesion_eval`` a seeded
    random image of each val/test lesion is kept and the others are marked
    ``val_extra``/``test_extra``, so that every evaluated lesion counts once.
    """
    for column in ("lesion_id", "dx"):
        if column not in metadata.columns:
            raise ValueError(f"metadata has no {column!r} column; cannot split without it")
    n_folds = fold_count(val_fraction, test_fraction)
    n_test, n_val = round(test_fraction * n_folds), round(val_fraction * n_folds)

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(metadata), dtype=int)
    with warnings.catch_warnings():
        # Classes with fewer lesions than folds are expected (df, vasc on small data).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for i, (_, fold_index) in enumerate(
            splitter.split(np.zeros(len(metadata)), metadata["dx"], groups=metadata["lesion_id"])
        ):
            fold[fold_index] = i
    order = _best_fold_order(fold, metadata["dx"].to_numpy(), n_folds, n_val, n_test, seed)
    role = np.array(["train"] * n_folds, dtype=object)
    role[order[:n_test]] = "test"
    role[order[n_test : n_test + n_val]] = "val"

    out = metadata.copy()
    out["split"] = role[fold]
    if one_image_per_lesion_eval:
        out = _mark_extra_images(out, seed)
    return out


def _best_fold_order(
    fold: np.ndarray, dx: np.ndarray, n_folds: int, n_val: int, n_test: int, seed: int
) -> np.ndarray:
    """A seeded order of the folds (test first, then val, then train) chosen among
    ``FOLD_ORDER_CANDIDATES`` random ones to make every class's share in val and test as
    close as possible to its overall share, relative to that share. The relative gap
    keeps rare classes in val and test: missing df (1% of the data) is a 100% gap."""
    labels, dx_index = np.unique(dx, return_inverse=True)
    counts = np.zeros((n_folds, len(labels)))
    np.add.at(counts, (fold, dx_index), 1)
    overall = counts.sum(axis=0) / counts.sum()
    rng = np.random.default_rng(seed)
    best, best_gap = None, np.inf
    for _ in range(FOLD_ORDER_CANDIDATES):
        order = rng.permutation(n_folds)
        gap = 0.0
        for chosen in (order[:n_test], order[n_test : n_test + n_val]):
            part = counts[chosen].sum(axis=0)
            gap = max(gap, float(np.max(np.abs(part / part.sum() - overall) / overall)))
        if gap < best_gap:
            best, best_gap = order, gap
    return best


def _mark_extra_images(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    evaluated = df["split"].isin(["val", "test"])
    shuffled = df[evaluated].sample(frac=1.0, random_state=seed)
    extra = shuffled.index[shuffled.duplicated("lesion_id", keep="first")]
    df.loc[extra, "split"] = df.loc[extra, "split"] + EXTRA_SUFFIX
    return df


def leaked_lesions(df: pd.DataFrame) -> list[str]:
    """Lesion ids with images in more than one of train/val/test (extras count as their split)."""
    base = df["split"].str.removesuffix(EXTRA_SUFFIX)
    per_lesion = base.groupby(df["lesion_id"]).nunique()
    return sorted(per_lesion.index[per_lesion > 1].astype(str))


def class_table(df: pd.DataFrame, include_extra: bool = False) -> pd.DataFrame:
    """Images per class and split, with each split's class shares in percent."""
    split = df["split"] if include_extra else df["split"].where(df["split"].isin(SPLITS))
    split = split.str.removesuffix(EXTRA_SUFFIX)
    counts = pd.crosstab(df["dx"], split).reindex(index=list(CLASSES), columns=list(SPLITS))
    counts = counts.fillna(0).astype(int)
    counts["all"] = counts.sum(axis=1)
    shares = (100 * counts / counts.sum()).round(2).add_suffix(" %")
    table = pd.concat([counts, shares], axis=1)
    table.loc["total"] = table.sum().round(2)
    return table


def max_share_deviation(df: pd.DataFrame) -> float:
    """Largest gap (percentage points) between a class's share in a split and overall,
    over train/val/test with extra images counted in their split."""
    table = class_table(df, include_extra=True).drop(index="total")
    overall = table["all %"]
    return float(max((table[f"{s} %"] - overall).abs().max() for s in SPLITS))


def write_splits(df: pd.DataFrame, path: Path, info: dict[str, Any]) -> None:
    """Write ``splits.csv`` and, beside it, ``splits.json`` with the settings and counts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    counts = df["split"].value_counts().reindex([*SPLITS, *(s + EXTRA_SUFFIX for s in SPLITS[1:])])
    summary = {
        **info,
        "images": len(df),
        "lesions": int(df["lesion_id"].nunique()),
        "images_per_split": {k: int(v) for k, v in counts.fillna(0).items()},
        "max_class_share_deviation_pp": round(max_share_deviation(df), 3),
    }
    path.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def read_splits(path: Path) -> pd.DataFrame:
    """Read a ``splits.csv``; a missing file is an error that says which command writes it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; write it with `python -m ham_utils split` (or `make split`)"
        )
    return pd.read_csv(path, dtype={"lesion_id": str, "image_id": str})


def read_split_info(path: Path) -> dict[str, Any]:
    """The ``splits.json`` written beside a ``splits.csv``."""
    return json.loads(path.with_suffix(".json").read_text())
