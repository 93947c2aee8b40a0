import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ham_utils.config import load_params
from ham_utils.data.prepare import cached_split, prepare_splits
from ham_utils.data.split import (
    EXTRA_SUFFIX,
    SPLITS,
    class_table,
    coverage_problems,
    fold_count,
    leaked_lesions,
    lesion_split,
    max_share_deviation,
    write_splits,
)
from ham_utils.data.synthetic import generate_metadata
from ham_utils.errors import DataError, DataWarning

REAL_METADATA = (
    Path(__file__).resolve().parents[2] / "shared/data/ham10000_200x150/HAM10000_metadata.csv"
)
TOLERANCE_PP = 1.5  # each class's share in every split vs overall, in percentage points


@pytest.fixture(scope="module")
def ham_scale() -> pd.DataFrame:
    """A metadata table of HAM10000's size, imbalance and images-per-lesion."""
    return generate_metadata(10_015, seed=3)


@pytest.fixture(scope="module")
def ham_scale_split(ham_scale) -> pd.DataFrame:
    return lesion_split(ham_scale, seed=42, one_image_per_lesion_eval=False)


def test_no_lesion_is_in_two_splits(ham_scale_split):
    assert leaked_lesions(ham_scale_split) == []


def test_leak_check_itself_finds_a_planted_leak(ham_scale_split):
    planted = ham_scale_split.copy()
    lesion = planted.loc[planted["split"] == "test", "lesion_id"].iloc[0]
    planted.loc[planted.index[planted["split"] == "train"][0], "lesion_id"] = lesion
    assert leaked_lesions(planted) == [lesion]


def test_class_shares_match_overall_in_every_split(ham_scale_split):
    assert max_share_deviation(ham_scale_split) <= TOLERANCE_PP


def test_split_sizes_follow_the_fractions(ham_scale_split):
    shares = ham_scale_split["split"].value_counts(normalize=True)
    assert shares["val"] == pytest.approx(0.15, abs=0.01)
    assert shares["test"] == pytest.approx(0.15, abs=0.01)


@pytest.mark.skipif(not REAL_METADATA.is_file(), reason="real HAM10000 metadata not present")
def test_real_metadata_split_is_leak_free_and_stratified():
    real = pd.read_csv(REAL_METADATA)
    split = lesion_split(real, seed=42, one_image_per_lesion_eval=False)
    assert leaked_lesions(split) == []
    assert max_share_deviation(split) <= TOLERANCE_PP


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate_metadata(1200, seed=11)


def test_one_image_per_lesion_in_val_and_test_keeps_every_row(small):
    plain = lesion_split(small, seed=42, one_image_per_lesion_eval=False)
    deduped = lesion_split(small, seed=42, one_image_per_lesion_eval=True)
    assert len(deduped) == len(small)  # extras are marked, not deleted
    for split in ("val", "test"):
        rows = deduped[deduped["split"] == split]
        assert rows["lesion_id"].is_unique
        # every lesion of the plain split is still evaluated, with exactly one image
        assert set(rows["lesion_id"]) == set(plain.loc[plain["split"] == split, "lesion_id"])
        extras = deduped[deduped["split"] == split + EXTRA_SUFFIX]
        assert len(extras) > 0 and set(extras["lesion_id"]) <= set(rows["lesion_id"])
    pd.testing.assert_series_equal(plain["split"] == "train", deduped["split"] == "train")
    assert leaked_lesions(deduped) == []


def test_same_seed_writes_the_same_file_and_another_seed_a_different_one(small, tmp_path):
    paths = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        path = tmp_path / name / "splits.csv"
        write_splits(lesion_split(small, seed=seed), path, info={"seed": seed})
        paths.append(path)
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b
    assert a != c


def test_every_class_reaches_validation_and_test_on_demo_sized_data(small):
    split = lesion_split(small, seed=42)
    table = class_table(split)
    assert (table.loc[table.index != "total", list(SPLITS)] > 0).all().all()


@pytest.mark.parametrize(
    ("val", "test", "folds"), [(0.15, 0.15, 20), (0.1, 0.2, 10), (0.2, 0.2, 5), (0.125, 0.25, 8)]
)
def test_fold_count_is_the_smallest_exact_one(val, test, folds):
    assert fold_count(val, test) == folds


def test_fractions_that_no_fold_count_fits_are_refused():
    with pytest.raises(ValueError, match="multiples of 1/n"):
        fold_count(0.123, 0.15)


def test_metadata_without_lesion_ids_cannot_be_split(small):
    with pytest.raises(ValueError, match="lesion_id"):
        lesion_split(small.drop(columns="lesion_id"))


# --- small data, missing classes, failed splits -------------------------------------------

# 20 images of 20 lesions: too few for the 20 folds of 70/15/15 (nv, the largest class, has 8).
TWENTY_ROWS = {"akiec": 2, "bcc": 2, "bkl": 3, "df": 1, "mel": 3, "nv": 8, "vasc": 1}
# Splittable into 20 folds, but without vasc, and df's 2 lesions cannot reach all 3 splits.
NO_VASC = {"akiec": 4, "bcc": 4, "bkl": 6, "df": 2, "mel": 6, "nv": 30}


def dataset_table(lesions_per_class: dict[str, int], images_per_lesion: int = 1) -> pd.DataFrame:
    """HAM10000 metadata with the given lesions per class and images per lesion."""
    rows = [
        {"lesion_id": f"HAM_{dx}_{k}", "image_id": f"ISIC_{dx}_{k}_{j}", "dx": dx}
        for dx, n in lesions_per_class.items()
        for k in range(n)
        for j in range(images_per_lesion)
    ]
    return pd.DataFrame(rows)


def write_dataset(
    root: Path, lesions_per_class: dict[str, int], images_per_lesion: int = 1
) -> Path:
    """A flat-layout dataset of 8x6 JPEGs under ``root``; returns ``root``."""
    table = dataset_table(lesions_per_class, images_per_lesion)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(table["image_id"]):
        Image.new("RGB", (8, 6), (i % 256, 90, 140)).save(root / "images" / f"{image_id}.jpg")
    table.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture
def params_for(tmp_path, monkeypatch):
    """Parameters reading a given data folder, writing the split under ``tmp_path``."""
    monkeypatch.setenv("HAM_PROJECT_ROOT", str(tmp_path))
    return lambda data_dir: load_params(None, {"data_dir": str(data_dir), "track": False})


def split_quietly(params) -> Path:
    """``prepare_splits`` with its DataWarnings (NO_VASC has several) ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return prepare_splits(params, progress=False)


def test_data_too_small_for_the_folds_says_what_it_has_and_what_to_change():
    with pytest.raises(
        DataError,
        match=r"the metadata is too small to split: 20 images of 20 lesions, and 20 folds need "
        r"at least 20 lesions and a class with at least 20 images\. Lesions \(images\) per "
        r"class: akiec 2 \(2\), bcc 2 \(2\), bkl 3 \(3\), df 1 \(1\), mel 3 \(3\), nv 8 "
        r"\(8\), vasc 1 \(1\)\. val_fraction=0\.15 and test_fraction=0\.15 cut the data into "
        r"20 lesion-grouped folds; use larger fractions that need fewer folds, e\.g\. "
        r"--set val_fraction=0\.2 --set test_fraction=0\.2 \(5 folds\), or add images",
    ):
        lesion_split(dataset_table(TWENTY_ROWS))


def test_data_too_small_even_for_five_folds_asks_for_more_images():
    with pytest.raises(DataError, match=r"4 lesions.*add images: at least 5 lesions"):
        lesion_split(dataset_table({"mel": 1, "nv": 3}), val_fraction=0.2, test_fraction=0.2)


def test_classes_missing_from_the_data_or_a_split_are_warned_about(tmp_path, params_for):
    params = params_for(write_dataset(tmp_path / "data", NO_VASC))
    with pytest.warns(DataWarning) as caught:
        prepare_splits(params, progress=False)
    messages = [str(w.message) for w in caught if w.category is DataWarning]
    assert any(
        m.startswith(f"{params.splits_csv}: class vasc (Vascular lesion) has no images in the data")
        for m in messages
    ), messages
    assert any(
        "class df (Dermatofibroma) has no images in " in m and "lesions per split" in m
        for m in messages
    ), messages
    assert not any("class nv" in m for m in messages)  # 30 lesions: in every split
    assert params.splits_csv.is_file()  # a warning, not an error: evaluation can still run


def test_no_coverage_problem_when_every_class_reaches_every_split(small):
    assert coverage_problems(lesion_split(small, seed=42)) == []


def test_training_refuses_a_class_without_training_images_before_building_a_model(
    tmp_path, params_for, monkeypatch
):
    from ham_utils.model import build as models
    from ham_utils.train.loop import train

    params = params_for(write_dataset(tmp_path / "data", NO_VASC))
    split_quietly(params)
    monkeypatch.setattr(
        "ham_utils.data.prepare.cached_split", lambda *a, **k: pytest.fail("cached")
    )
    monkeypatch.setattr(models, "build_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(
        DataError,
        match=rf"{params.splits_csv}: no training images of class\(es\) .*vasc \(Vascular "
        r"lesion; 0 images in val/test\).*Add images of these classes.*ham_utils split",
    ):
        train(params, runs_root=tmp_path / "runs", progress=False)


def test_a_failed_split_leaves_no_split_for_later_steps(tmp_path, params_for):
    data = write_dataset(tmp_path / "data", NO_VASC)
    params = params_for(data)
    split_quietly(params)
    outputs = [
        params.splits_csv,
        params.splits_csv.with_suffix(".json"),
        params.processed_dir / "dropped_rows.csv",
    ]
    assert all(p.is_file() for p in outputs)
    table = pd.read_csv(data / "HAM10000_metadata.csv")
    table.loc[0, "dx"] = "melanoma"
    table.to_csv(data / "HAM10000_metadata.csv", index=False)
    with pytest.raises(DataError, match="outside the 7 HAM10000 classes"):
        prepare_splits(params, progress=False)
    assert not any(p.exists() for p in outputs)
    with pytest.raises(FileNotFoundError, match=r"splits.csv not found.*ham_utils split"):
        cached_split(params, "train", progress=False)


def test_a_split_too_small_names_the_metadata_file_and_writes_nothing(tmp_path, params_for):
    data = write_dataset(tmp_path / "data", TWENTY_ROWS)
    params = params_for(data)
    with pytest.raises(DataError, match=rf"{data / 'HAM10000_metadata.csv'} is too small"):
        prepare_splits(params, progress=False)
    assert not params.splits_csv.exists()
    assert not params.splits_csv.with_suffix(".json").exists()


def test_the_share_gap_describes_the_rows_of_the_class_table(small, tmp_path):
    split = lesion_split(small, seed=42)
    assert split["split"].str.endswith(EXTRA_SUFFIX).any()
    table = class_table(split).drop(index="total")
    in_table = max((table[f"{s} %"] - table["all %"]).abs().max() for s in SPLITS)
    assert max_share_deviation(split) == pytest.approx(in_table, abs=1e-9)
    write_splits(split, tmp_path / "splits.csv", info={})
    summary = json.loads((tmp_path / "splits.json").read_text())
    assert summary["max_class_share_deviation_pp"] == pytest.approx(in_table, abs=1e-3)
