"""Subgroups: each image lands in the right group, small groups are flagged, and a group the
model fails shows it."""

import json

import numpy as np
import pandas as pd
import pytest

from ham_utils.config import CLASSES
from ham_utils.evaluation.subgroups import MIN_READABLE, as_records, subgroup_labels, subgroup_table


def test_each_image_lands_in_its_subgroup():
    metadata = pd.DataFrame(
        {
            "sex": ["male", "female", None, "unknown"],
            "age": [29.0, 30.0, 70.0, np.nan],
            "localization": ["hand", "scalp", "lower extremity", "unknown"],
            "dx_type": ["histo", "follow_up", "consensus", "confocal"],
        }
    )
    labels = subgroup_labels(metadata)
    assert labels["sex"].tolist() == ["male", "female", "unknown", "unknown"]
    assert labels["age band"].tolist() == ["under 30", "30-49", "70 and over", "unknown"]
    assert labels["body site"].tolist() == [
        "acral (hand, foot)", "head and neck", "lower extremity", "unknown"
    ]  # fmt: skip
    assert labels["diagnosis confirmed by"].tolist() == [
        "histopathology", "follow-up", "expert consensus", "confocal microscopy"
    ]  # fmt: skip


def test_a_subgroup_the_model_fails_stands_out_and_small_groups_are_flagged():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, len(CLASSES), n)
    probs = np.full((n, len(CLASSES)), 0.01)
    probs[np.arange(n), y] = 0.94  # right for everyone ...
    sex = np.where(np.arange(n) < 100, "female", "male")
    wrong = np.arange(n) < 100
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)  # ... except the women
    age = np.where(np.arange(n) < n - 10, 45.0, 80.0)  # ten patients of 70 and over
    metadata = pd.DataFrame({"sex": sex, "age": age, "localization": "back", "dx_type": "histo"})
    table = subgroup_table(metadata, y, probs).set_index(["variable", "subgroup"])
    assert table.loc[("sex", "female"), "balanced_accuracy"] == 0
    assert table.loc[("sex", "male"), "balanced_accuracy"] == 1
    low, high = table.loc[("sex", "male"), "balanced_accuracy_interval"]
    assert low == high == 1  # perfect in every resample
    assert table.loc[("age band", "70 and over"), "images"] == 10 < MIN_READABLE
    assert table.loc[("age band", "70 and over"), "too_small"]
    assert not table.loc[("age band", "30-49"), "too_small"]
    assert list(table.loc["age band"].index) == ["30-49", "70 and over"]  # in band order
    records = as_records(table.reset_index())
    json.dumps(records, allow_nan=False)  # JSON-ready: no NaN


def test_groups_without_melanoma_have_no_sensitivity():
    y = np.array([0, 1, 2, 5] * 10)
    probs = np.eye(len(CLASSES))[y] * 0.9 + 0.1 / len(CLASSES)
    metadata = pd.DataFrame({"sex": "male", "age": 50.0, "localization": "face",
                             "dx_type": "histo"}, index=range(len(y)))  # fmt: skip
    table = subgroup_table(metadata, y, probs)
    assert table["melanoma_sensitivity"].isna().all()
    assert pytest.approx(1.0) == table["balanced_accuracy"].iloc[0]
