"""Small helpers that keep the numbered notebooks short: set-up, banners, summary tables."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

# A notebook keeps every progress-bar update as output: update every 10 s, not 10 times a
# second. tqdm reads TQDM_* variables as its defaults when it is first imported, so this
# comes before anything that imports it.
os.environ.setdefault("TQDM_MININTERVAL", "10")

import pandas as pd
from tqdm import TqdmWarning

from ham_utils.config import (
    PARAMETER_NAMES,
    Params,
    ParamsError,
    figures_root,
    load_params,
    resolve_path,
)
from ham_utils.errors import capture_warnings, filter_native_noise
from ham_utils.evaluation.bootstrap import headline_rows, screening_cell, with_interval
from ham_utils.runs import Run

__all__ = ["FIGURES_DIR", "setup"]

# A notebook's kernel works in one project folder, fixed when it starts.
FIGURES_DIR = figures_root()

log = logging.getLogger("ham_utils")

SYNTHETIC_WARNING = (
    "**SYNTHETIC DEMO DATA.** These images are generated drawings in the HAM10000 layout, "
    "made to exercise the pipeline. Nothing here says anything about skin lesions; no "
    "medical conclusion may be drawn from it."
)


def _show_markdown(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def named_parameters(namespace: dict[str, Any]) -> dict[str, Any]:
    """The parameters a notebook's namespace sets by name: what ``papermill -p image_size 96``
    or ``-f params/b3.yaml`` inject after the parameters cell. The notebooks never assign a
    parameter's name themselves (a test checks), so every such name was injected."""
    return {name: namespace[name] for name in PARAMETER_NAMES if name in namespace}


def setup(
    params_file: str,
    overrides: dict[str, Any] | None = None,
    namespace: dict[str, Any] | None = None,
) -> Params:
    """Log to the notebook, read the parameters, and flag synthetic data loudly.

    ``params_file`` gives the recipe; ``overrides`` (what ``make all`` passes) and the
    parameters set by name in ``namespace`` (the notebook's ``globals()``) change single keys.
    A key given both ways with different values is an error, not a silent choice.
    """
    if "ipykernel" in sys.modules:  # a kernel shows native output in the notebook
        filter_native_noise()
        # tqdm.auto (imported by MLflow and others) falls back to text bars in a kernel
        # without ipywidgets, and says so on import: true, and no news in a report.
        warnings.filterwarnings("ignore", "IProgress not found", TqdmWarning)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", force=True)
    capture_warnings()  # one line per warning, without Python's source line
    overrides = dict(overrides or {})
    named = named_parameters(namespace or {})
    clash = sorted(k for k in named.keys() & overrides.keys() if named[k] != overrides[k])
    if clash:
        raise ParamsError(
            f"{clash} given both by name and in `overrides`, with different values; give each once"
        )
    params = load_params(resolve_path(params_file) if params_file else None, overrides | named)
    if named:
        log.info("parameters set by name over %s: %s", params_file or "the defaults", named)
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    if params.uses_demo_data:
        _show_markdown(SYNTHETIC_WARNING)
    return params


def read_dataset(params: Params) -> Any:
    """The dataset these parameters use (the demo dataset is generated once if needed)."""
    from ham_utils.data.metadata import read_ham10000
    from ham_utils.data.prepare import ensure_demo_data

    metadata_csv = resolve_path(params.metadata_csv) if params.metadata_csv else None
    return read_ham10000(ensure_demo_data(params), metadata_csv, params.verify_images)


def describe_recipe(params: Params) -> pd.DataFrame:
    """The settings of the training recipe, grouped, as a table."""
    groups = {
        "model": ("backbone", "weights", "image_size", "head", "dropout"),
        "imbalance": (
            "loss",
            "focal_gamma",
            "focal_alpha",
            "class_weight_power",
            "class_weight_cap",
            "oversampling",
        ),
        "augmentation": ("augment", "rand_augment", "mixup_prob", "cutmix_prob"),
        "schedule": (
            "batch_size",
            "warmup_epochs",
            "warmup_lr",
            "finetune_epochs",
            "finetune_lr",
            "unfreeze",
            "lr_schedule",
            "monitor",
            "patience",
        ),
        "runtime": ("mixed_precision", "jit_compile", "track"),
    }
    rows = [(group, key, getattr(params, key)) for group, keys in groups.items() for key in keys]
    return pd.DataFrame(rows, columns=["group", "setting", "value"]).set_index(["group", "setting"])


def open_params_run(params: Params) -> Run:
    """The finished run these parameters train (``03_training`` makes it), with this
    notebook's evaluation settings and data folder (the run may come from another machine)."""
    from ham_utils.config import runs_root
    from ham_utils.runs import EVALUATION_SETTINGS, open_run, run_id

    run = open_run(runs_root() / run_id(params))
    return run.with_settings(**{key: getattr(params, key) for key in EVALUATION_SETTINGS})


def synthetic_warning(run: Run) -> None:
    if run.synthetic:
        _show_markdown(SYNTHETIC_WARNING)


def headline_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The headline metrics of one evaluated set, most telling first, each with its 95%
    bootstrap interval (lesions resampled, :mod:`ham_utils.evaluation.bootstrap`)."""
    rows = headline_rows(metrics)
    table = pd.DataFrame(
        {"value [95% interval]": [with_interval(value, interval) for _, value, interval in rows]},
        index=[label for label, _, _ in rows],
    )
    table.index.name = f"{metrics['n_images']} images"
    return table


def per_class_intervals(metrics: dict[str, Any]) -> pd.DataFrame:
    """Recall, precision and ROC AUC of each class with their 95% intervals."""
    intervals = metrics.get("uncertainty", {}).get("intervals", {})
    rows = {}
    for name, row in metrics["per_class"].items():
        rows[name] = {
            "support": row["support"],
            **{
                key: with_interval(row[key], intervals.get(f"{key}_{name}"))
                for key in ("recall", "precision", "roc_auc")
            },
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")


def operating_point_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The screening thresholds chosen on validation, as they did on this set, with 95%
    intervals: one row for melanoma, one for the high-risk group (mel + bcc)."""
    points = metrics["operating_points"]
    intervals = metrics.get("uncertainty", {}).get("intervals", {})
    rows = {}
    for name, label in (("melanoma", "melanoma"), ("high_risk", "high-risk group (mel + bcc)")):
        point = points.get(name)
        if point is None:
            continue
        rows[label] = {
            "threshold (from validation)": round(point["threshold"], 3),
            **{
                column: screening_cell(point, intervals, name, key)
                for key, column in (
                    ("sensitivity", "sensitivity"),
                    ("specificity", "specificity"),
                    ("flagged_per_100", "flagged per 100 lesions"),
                )
            },
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"target sensitivity {points['target_sensitivity']:.0%}"
    return table


def selective_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Accuracy and balanced accuracy on all cases and on the 90% and 80% the model is
    most sure of."""
    selective = metrics["selective"]
    rows = {"100% (all)": (metrics["accuracy"], metrics["balanced_accuracy"])}
    for coverage in sorted(selective["at_coverage"], reverse=True):
        at = selective["at_coverage"][coverage]
        rows[f"{float(coverage):.0%} most confident"] = (at["accuracy"], at["balanced_accuracy"])
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["accuracy", "balanced accuracy"])
    table.index.name = f"coverage (AURC {selective['aurc']:.3f})"
    return table.round(3)


def subgroup_summary(metrics: dict[str, Any]) -> pd.DataFrame:
    """The test split by subgroup (:mod:`ham_utils.evaluation.subgroups`), values with 95%
    intervals."""
    table = pd.DataFrame(metrics["subgroups"])
    shown = pd.DataFrame(
        {
            "images": table["images"],
            "melanomas": table["melanomas"],
            "balanced accuracy": [
                with_interval(v, i)
                for v, i in zip(
                    table["balanced_accuracy"], table["balanced_accuracy_interval"], strict=True
                )
            ],
            "melanoma sensitivity": [
                with_interval(v, i)
                for v, i in zip(
                    table["melanoma_sensitivity"],
                    table["melanoma_sensitivity_interval"],
                    strict=True,
                )
            ],
            "readable": ["too small (< 30 images)" if s else "" for s in table["too_small"]],
        }
    )
    return shown.set_index(pd.MultiIndex.from_frame(table[["variable", "subgroup"]]))


def ood_summary(metrics: dict[str, Any]) -> str:
    """One sentence on the out-of-distribution check of an evaluated set."""
    ood = metrics.get("out_of_distribution")
    if not ood:
        return "no out-of-distribution check was fitted"
    text = (
        f"The check's threshold ({ood['threshold']:.2f}) flags "
        f"{ood['flag_rate_on_validation']:.0%} of the validation lesions by construction; on "
        f"this set it flags {ood['flagged']:.1%}."
    )
    by_class = ood.get("flagged_by_class")
    if by_class:
        counts = ", ".join(f"{c} {v['flagged']} of {v['images']}" for c, v in by_class.items())
        text += f" Withheld by class: {counts}."
    melanoma = ood.get("screening_end_to_end", {}).get("melanoma")
    if melanoma and melanoma["sensitivity"] is not None:
        text += (
            f" Melanoma screening sensitivity with withheld images counted as missed: "
            f"{melanoma['sensitivity']:.3f} ({melanoma['positives_withheld']} of "
            f"{melanoma['positives']} melanomas withheld)."
        )
    return text


def left_out_table(left_out: dict[str, str]) -> None:
    """Show the runs a comparison left out and why (nothing is dropped without a word)."""
    from IPython.display import display

    if left_out:
        _show_markdown(f"**{len(left_out)} finished run(s) left out**, each for the reason given:")
        display(pd.Series(left_out, name="why left out").rename_axis("run").to_frame())
