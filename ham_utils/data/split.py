"""Lesion-aware, class-stratified train/val/test split.

HAM10000 has ~1.3 images per lesion; splitting by image puts photos of one lesion on both
sides and inflates every metric. Here whole lesions go to one split (grouped by
``lesion_id``) while each class keeps its overall share in every split (stratified by
``dx``), using scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ham_utils.config import CLASS_NAMES, CLASSES
from ham_utils.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Extra images of val/test lesions when only one image per lesion is evaluated. They stay
# in splits.csv (nothing is lost) but no step trains or evaluates on them.
EXTRA_SUFFIX = "_extra"
MAX_FOLDS = 100
FOLD_ORDER_CANDIDATES = 200
FRACTIONS = "val_fraction and test_fraction"
# The fractions suggested when the data is too small for the folds of the ones given.
FEWER_FOLDS_FRACTIONS = (0.2, 0.2)


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
    source: str = "the metadata",
) -> pd.DataFrame:
    """Return ``metadata`` with a ``split`` column: train, val, test (and ``*_extra``).

    The data is cut into ``n`` stratified, lesion-grouped folds (``n`` from the fractions,
    20 for 70/15/15); ``n * test_fraction`` folds form the test split and
    ``n * val_fraction`` the validation split. With ``one_image_per_lesion_eval`` a seeded
    random image of each val/test lesion is kept and the others are marked
    ``val_extra``/``test_extra``, so that every evaluated lesion counts once.

    Data too small for the folds (fewer lesions than folds, or a split left empty) is a
    :class:`DataError` that names ``source``, the lesions per class and what to change.
    """
    for column in ("lesion_id", "dx"):
        if column not in metadata.columns:
            raise ValueError(f"metadata has no {column!r} column; cannot split without it")
    n_folds = fold_count(val_fraction, test_fraction)
    n_test, n_val = round(test_fraction * n_folds), round(val_fraction * n_folds)
    too_small = _TooSmall(metadata, n_folds, val_fraction, test_fraction, source)
    if not _enough_for(metadata, n_folds):
        raise too_small.error(
            f"{n_folds} folds need at least {n_folds} lesions and a class with at least "
            f"{n_folds} images"
        )

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(metadata), dtype=int)
    with warnings.catch_warnings():
        # Classes with fewer lesions than folds are expected (df, vasc on small data).
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        try:
            for i, (_, fold_index) in enumerate(
                splitter.split(
                    np.zeros(len(metadata)), metadata["dx"], groups=metadata["lesion_id"]
                )
            ):
                fold[fold_index] = i
        except ValueError as e:  # scikit-learn's own size checks, should ours miss one
            raise too_small.error(str(e)) from e
    order = _best_fold_order(fold, metadata["dx"].to_numpy(), n_folds, n_val, n_test, seed)
    role = np.array(["train"] * n_folds, dtype=object)
    role[order[:n_test]] = "test"
    role[order[n_test : n_test + n_val]] = "val"

    out = metadata.copy()
    out["split"] = role[fold]
    empty = [s for s in SPLITS if not (out["split"] == s).any()]
    if empty:
        raise too_small.error(f"the {' and '.join(empty)} split(s) got no lesion")
    if one_image_per_lesion_eval:
        out = _mark_extra_images(out, seed)
    return out


def _enough_for(metadata: pd.DataFrame, n_folds: int) -> bool:
    """Whether ``n_folds`` lesion-grouped folds can all be filled: at least one lesion per
    fold, and (scikit-learn's condition) a class with at least ``n_folds`` images."""
    return (
        metadata["lesion_id"].nunique() >= n_folds  # also rules out empty metadata
        and int(metadata["dx"].value_counts().max()) >= n_folds
    )


@dataclass
class _TooSmall:
    """The error for data too small to split: what it has, what the fractions need, the fix."""

    metadata: pd.DataFrame
    n_folds: int
    val_fraction: float
    test_fraction: float
    source: str

    def error(self, detail: str) -> DataError:
        m = self.metadata
        per_class = m.groupby("dx")["lesion_id"].agg(["nunique", "size"])
        per_class = per_class.reindex(list(CLASSES), fill_value=0)
        listed = ", ".join(f"{dx} {r['nunique']} ({r['size']})" for dx, r in per_class.iterrows())
        val, test = FEWER_FOLDS_FRACTIONS
        fewer = fold_count(val, test)
        if self.n_folds > fewer and _enough_for(m, fewer):
            fix = (
                f"use larger fractions that need fewer folds, e.g. --set val_fraction={val} "
                f"--set test_fraction={test} ({fewer} folds), or add images"
            )
        else:
            fix = (
                f"add images: at least {self.n_folds} lesions, and several of every class so "
                "that each class reaches train, validation and test (HAM10000 has 7,470 "
                "lesions)"
            )
        return DataError(
            f"{self.source} is too small to split: {len(m)} images of "
            f"{m['lesion_id'].nunique()} lesions, and {detail}. Lesions (images) per class: "
            f"{listed}. val_fraction={self.val_fraction} and test_fraction="
            f"{self.test_fraction} cut the data into {self.n_folds} lesion-grouped folds; "
            f"{fix}"
        )


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


def max_share_deviation(df: pd.DataFrame, include_extra: bool = False) -> float:
    """Largest gap (percentage points) between a class's share in a split and overall, over
    the same rows as :func:`class_table` with the same ``include_extra``: by default the
    images that are trained and evaluated on, without the ``*_extra`` ones."""
    table = class_table(df, include_extra=include_extra).drop(index="total")
    overall = table["all %"]
    return float(max((table[f"{s} %"] - overall).abs().max() for s in SPLITS))


def coverage_problems(df: pd.DataFrame) -> list[str]:
    """One sentence per class that has no images in the data, or none in train, val or
    test (``*_extra`` images not counted), saying what follows and what to change."""
    table = class_table(df)
    base = df.assign(split=df["split"].str.removesuffix(EXTRA_SUFFIX))
    lesions = base.groupby(["dx", "split"])["lesion_id"].nunique().unstack()
    lesions = lesions.reindex(index=list(CLASSES), columns=list(SPLITS)).fillna(0).astype(int)
    problems = []
    for dx in CLASSES:
        name = f"class {dx} ({CLASS_NAMES[dx]})"
        if table.loc[dx, "all"] == 0:
            problems.append(
                f"{name} has no images in the data: the model cannot learn it, its metrics are "
                "undefined and training refuses to start; add images of this class"
            )
            continue
        missing = [s for s in SPLITS if table.loc[dx, s] == 0]
        if not missing:
            continue
        counts = ", ".join(f"{s} {lesions.loc[dx, s]}" for s in SPLITS)
        if "train" in missing:
            follows = "training refuses to start without training images of every class"
            fix = f"add lesions of this class, or re-split with smaller {FRACTIONS}"
        else:
            follows = (
                "its recall and AUC there are undefined and balanced accuracy averages over "
                "fewer classes"
            )
            fix = f"add lesions of this class, or re-split with larger {FRACTIONS}"
        problems.append(
            f"{name} has no images in {' and '.join(missing)} (lesions per split: {counts}): "
            f"{follows}; {fix}"
        )
    return problems


def require_training_images(df: pd.DataFrame, source: Path | str) -> None:
    """Refuse (:class:`DataError`) a split where a class has no training images: the model
    has an output for every class and could never learn that one."""
    train = df.loc[df["split"] == "train", "dx"]
    missing = [dx for dx in CLASSES if not (train == dx).any()]
    if missing:
        other = df.loc[df["dx"].isin(missing), "dx"].value_counts()
        listed = ", ".join(
            f"{dx} ({CLASS_NAMES[dx]}; {int(other.get(dx, 0))} images in val/test)"
            for dx in missing
        )
        raise DataError(
            f"{source}: no training images of class(es) {listed}; the model cannot learn a "
            "class it never sees. Add images of these classes to the data and re-run "
            "`python -m ham_utils split` (a class with only a few lesions may also need "
            "smaller val_fraction and test_fraction)"
        )


def split_info_path(path: Path) -> Path:
    """The ``splits.json`` beside a ``splits.csv``."""
    return Path(path).with_suffix(".json")


def write_splits(df: pd.DataFrame, path: Path, info: dict[str, Any]) -> None:
    """Write ``splits.csv`` and, beside it, ``splits.json`` with the settings and counts.

    Both are written to temporary files first, so a failure leaves neither half-written.
    """
    counts = df["split"].value_counts().reindex([*SPLITS, *(s + EXTRA_SUFFIX for s in SPLITS[1:])])
    summary = {
        **info,
        "images": len(df),
        "lesions": int(df["lesion_id"].nunique()),
        "images_per_split": {k: int(v) for k, v in counts.fillna(0).items()},
        "max_class_share_deviation_pp": round(max_share_deviation(df), 3),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    json_path = split_info_path(path)
    tmp_csv, tmp_json = path.with_suffix(".csv.tmp"), json_path.with_suffix(".json.tmp")
    try:
        df.to_csv(tmp_csv, index=False)
        tmp_json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        tmp_json.replace(json_path)
        tmp_csv.replace(path)
    finally:
        tmp_csv.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)


def read_splits(path: Path, data_dir: Path | None = None) -> pd.DataFrame:
    """Read a ``splits.csv``; a missing file is an error that says which command writes it.

    Image paths are stored relative to the data folder; with ``data_dir`` they come back
    resolved against it (paths of older files, stored absolute, stay as they are)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; write it with `python -m ham_utils split` (or `make split`)"
        )
    splits = pd.read_csv(path, dtype={"lesion_id": str, "image_id": str, "path": str})
    if data_dir is not None:
        splits["path"] = [str(data_dir / p) for p in splits["path"]]
    return splits


def relative_paths(splits: pd.DataFrame, data_dir: Path) -> pd.DataFrame:
    """``splits`` with its image paths relative to ``data_dir``, as ``splits.csv`` stores them
    (images outside the data folder, e.g. under a separate ``metadata_csv``, stay absolute)."""
    out = splits.copy()
    out["path"] = [
        os.path.relpath(p, data_dir) if Path(p).is_relative_to(data_dir) else p
        for p in splits["path"]
    ]
    return out


def check_images_found(splits: pd.DataFrame, data_dir: Path, where: Path) -> None:
    """Raise a :class:`DataError` naming the folder to point at when images of ``splits``
    (paths already resolved) are not where ``data_dir`` says."""
    from ham_utils.errors import DataError

    missing = [p for p in splits["path"] if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(splits)} images listed in {where} are not under {data_dir} "
            f"(first: {missing[0]}); point data_dir at the folder holding them, e.g. "
            "`--set data_dir=/path/to/HAM10000` or `DATA_DIR=...`"
        )


def read_split_info(path: Path) -> dict[str, Any]:
    """The ``splits.json`` written beside a ``splits.csv``."""
    return json.loads(split_info_path(path).read_text())
