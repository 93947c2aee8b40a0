from pathlib import Path

import pandas as pd
import pytest

from ham_utils.split import (
    EXTRA_SUFFIX,
    SPLITS,
    class_table,
    fold_count,
    leaked_lesions,
    lesion_split,
    max_share_deviation,
    write_splits,
)
from ham_utils.synthetic import generate_metadata

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
