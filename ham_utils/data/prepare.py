"""The data steps in order, each reusing what is already on disk: demo data, split, cache.

Notebooks and the command line call these; each step reads its input from disk, so every
notebook can run on its own.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd

from ham_utils.config import Params
from ham_utils.data.cache import CachedSplit, build_split_cache
from ham_utils.data.split import (
    SPLITS,
    coverage_problems,
    leaked_lesions,
    lesion_split,
    read_splits,
    relative_paths,
    require_training_images,
    split_info_path,
    write_splits,
)
from ham_utils.errors import DataError, DataWarning

log = logging.getLogger("ham_utils")


def ensure_demo_data(params: Params, progress: bool = True) -> Path:
    """Generate the synthetic demo dataset once, when the parameters use it; return the data dir."""
    if not params.uses_demo_data:
        return params.resolved_data_dir
    from ham_utils.data.synthetic import MARKER_FILE, generate_dataset

    out = params.demo_data_dir
    if (out / MARKER_FILE).is_file():
        log.info("demo dataset already there: %s", out)
        return out
    log.info("generating the SYNTHETIC demo dataset in %s", out)
    return generate_dataset(
        out,
        n_images=params.demo_images,
        width=params.demo_width,
        height=params.demo_height,
        seed=params.demo_seed,
        progress=progress,
    )


def prepare_splits(params: Params, progress: bool = True) -> Path:
    """Read and validate the data, split it by lesion, write splits.csv; return its path.

    The previous split's files are removed first, so a split that fails leaves none for
    ``cache`` or ``train`` to use. Classes missing from the data or from a split are
    announced with a :class:`DataWarning` each.
    """
    from ham_utils.data.metadata import DROPPED_CSV_NAME, read_ham10000

    dropped_csv = params.processed_dir / DROPPED_CSV_NAME
    _remove_previous_split(params, dropped_csv)
    data_dir = ensure_demo_data(params, progress)
    metadata_csv = Path(params.metadata_csv) if params.metadata_csv else None
    dataset = read_ham10000(
        data_dir, metadata_csv, verify_images=params.verify_images, progress=progress
    )
    params.processed_dir.mkdir(parents=True, exist_ok=True)
    dataset.write_dropped(dropped_csv)

    splits = lesion_split(
        dataset.metadata,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        seed=params.seed,
        one_image_per_lesion_eval=params.one_image_per_lesion_eval,
        source=str(dataset.source),
    )
    leaks = leaked_lesions(splits)
    if (
        leaks
    ):  # cannot happen with grouped folds; checked because everything downstream relies on it
        raise AssertionError(f"lesions in more than one split: {leaks[:10]}")
    write_splits(
        relative_paths(splits, data_dir),
        params.splits_csv,
        info={
            "data_dir": str(data_dir),
            "metadata_csv": str(dataset.source),
            "synthetic": dataset.synthetic,
            "seed": params.seed,
            "val_fraction": params.val_fraction,
            "test_fraction": params.test_fraction,
            "one_image_per_lesion_eval": params.one_image_per_lesion_eval,
            "dropped_rows": len(dataset.dropped),
            "dropped_rows_csv": str(dropped_csv),
        },
    )
    for problem in coverage_problems(splits):
        warnings.warn(f"{params.splits_csv}: {problem}", DataWarning, stacklevel=2)
    return params.splits_csv


def _remove_previous_split(params: Params, dropped_csv: Path) -> None:
    for path in (params.splits_csv, split_info_path(params.splits_csv), dropped_csv):
        if path.is_file():
            log.info("removing the previous %s before splitting again", path)
            path.unlink()


def require_every_class_in_train(params: Params) -> None:
    """Refuse to train (:class:`DataError`) when a class has no training images."""
    require_training_images(load_splits(params), params.splits_csv)


def load_splits(params: Params) -> pd.DataFrame:
    """The split table written by :func:`prepare_splits`."""
    return read_splits(params.splits_csv, params.resolved_data_dir)


def cached_split(params: Params, split: str, progress: bool = True) -> CachedSplit:
    """The images and labels of one split at ``params.image_size``, from the cache."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    splits = load_splits(params)
    rows = splits[splits["split"] == split]
    if rows.empty:
        raise DataError(f"{params.splits_csv} has no {split!r} rows; re-run the split step")
    return build_split_cache(
        rows, split, params.cache_dir, params.image_size, params.resize_mode, progress=progress
    )
