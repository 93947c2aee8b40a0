"""Performance by patient and lesion subgroup: for whom does the model fail?

HAM10000's metadata gives each image the patient's sex and age, the body site and how the
diagnosis was confirmed (``dx_type``). Each subgroup gets its size, balanced accuracy and
melanoma sensitivity with 95% bootstrap intervals (resampled within the subgroup); groups of
fewer than :data:`MIN_READABLE` images are flagged as too small to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ham_utils.config import CLASSES
from ham_utils.evaluation.bootstrap import bootstrap_intervals
from ham_utils.evaluation.scoring import evaluation_metrics

MIN_READABLE = 30
UNKNOWN = "unknown"
AGE_BANDS: tuple[tuple[float, float, str], ...] = (
    (0, 30, "under 30"),
    (30, 50, "30-49"),
    (50, 70, "50-69"),
    (70, np.inf, "70 and over"),
)
# HAM10000's 15 localization values in six sites; hands, feet and "acral" (palms and soles)
# together, as dermoscopy of acral skin differs from the rest (parallel-ridge patterns).
BODY_SITES: dict[str, tuple[str, ...]] = {
    "head and neck": ("face", "scalp", "ear", "neck"),
    "trunk": ("back", "chest", "abdomen", "trunk"),
    "upper extremity": ("upper extremity",),
    "lower extremity": ("lower extremity",),
    "acral (hand, foot)": ("acral", "hand", "foot"),
    "genital": ("genital",),
}
SITE_OF = {value: site for site, values in BODY_SITES.items() for value in values}
DX_TYPES: dict[str, str] = {
    "histo": "histopathology",
    "follow_up": "follow-up",
    "consensus": "expert consensus",
    "confocal": "confocal microscopy",
}
# Each variable's subgroups in reading order.
ORDER: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male", UNKNOWN),
    "age band": (*(label for _, _, label in AGE_BANDS), UNKNOWN),
    "body site": (*BODY_SITES, UNKNOWN),
    "diagnosis confirmed by": (*DX_TYPES.values(), UNKNOWN),
}
VARIABLES = tuple(ORDER)


def age_band(age: float | None) -> str:
    if age is None or pd.isna(age):
        return UNKNOWN
    return next(label for low, high, label in AGE_BANDS if low <= float(age) < high)


def subgroup_labels(metadata: pd.DataFrame) -> pd.DataFrame:
    """Each image's subgroup under each variable (:data:`VARIABLES`), missing as unknown."""

    def clean(column: str) -> pd.Series:
        values = metadata.get(column, pd.Series(index=metadata.index, dtype=object))
        return values.fillna(UNKNOWN).astype(str).str.strip().str.lower().replace("", UNKNOWN)

    sex = clean("sex").where(lambda s: s.isin(["male", "female"]), UNKNOWN)
    return pd.DataFrame(
        {
            "sex": sex,
            "age band": [age_band(a) for a in metadata.get("age", [None] * len(metadata))],
            "body site": clean("localization").map(SITE_OF).fillna(UNKNOWN),
            "diagnosis confirmed by": clean("dx_type").map(DX_TYPES).fillna(UNKNOWN),
        },
        index=metadata.index,
    )


def subgroup_table(
    metadata: pd.DataFrame,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str] = CLASSES,
    groups: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """One row per (variable, subgroup): images, melanomas, balanced accuracy and melanoma
    sensitivity with their 95% intervals (None where undefined), and ``too_small``."""
    labels = subgroup_labels(metadata.reset_index(drop=True))
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    mel = list(classes).index("mel")
    rows = []
    for variable in VARIABLES:
        found = labels.groupby(variable).indices
        for name in (n for n in ORDER[variable] if n in found):
            index = found[name]
            y, p = y_true[index], probs[index]
            point = evaluation_metrics(y, p, classes)
            lesions = None if groups is None else np.asarray(groups)[index]
            intervals = bootstrap_intervals(y, p, classes, lesions)["intervals"]
            rows.append(
                {
                    "variable": variable,
                    "subgroup": name,
                    "images": len(index),
                    "melanomas": int((y == mel).sum()),
                    "balanced_accuracy": point["balanced_accuracy"],
                    "balanced_accuracy_interval": intervals["balanced_accuracy"],
                    "melanoma_sensitivity": point["melanoma"]["sensitivity"],
                    "melanoma_sensitivity_interval": intervals["melanoma_sensitivity"],
                    "too_small": len(index) < MIN_READABLE,
                }
            )
    return pd.DataFrame(rows)


def as_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as JSON-ready rows: undefined values (NaN) as None."""
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")
