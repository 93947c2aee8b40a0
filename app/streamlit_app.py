"""Streamlit app: classify one dermatoscopic image with a trained run, and show how the run
performed on its test split.

Start it with ``make app`` (``streamlit run app/streamlit_app.py`` from the project folder,
which also reads ``.streamlit/config.toml``: upload size limit, no usage statistics).
"""

from __future__ import annotations

import logging
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from ham_utils import config
from ham_utils.config import CLASS_DESCRIPTIONS, CLASS_NAMES, RISK_GROUPS, RISK_OF_CLASS
from ham_utils.data.images import IMAGE_SUFFIXES
from ham_utils.errors import DataError
from ham_utils.evaluation.bootstrap import with_interval
from ham_utils.evaluation.ood import OOD_MESSAGE
from ham_utils.runs import CURVES_FILE, EXTERNAL_SET, Run, list_runs, open_run
from ham_utils.serve.predict import Prediction, Predictor

log = logging.getLogger("ham_utils.app")

RISK_COLOURS = {"high": "#c0392b", "moderate": "#d68910", "low": "#1e8449"}
PAGES = ("Classify an image", "Run performance")
DISCLAIMER = (
    "**Research software, not a medical device.** The model gives statistical guesses "
    "from one picture and is often wrong; it has not been validated for clinical use. Do "
    "not use it to diagnose, to decide on treatment, or to be reassured: show any new, "
    "changing, bleeding or unusual skin lesion to a doctor."
)
HEADLINE_METRICS = (
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("macro_roc_auc", "Macro ROC AUC"),
    ("accuracy", "Accuracy"),
)
FIGURE_CAPTIONS = {
    CURVES_FILE: "Training curves (both phases)",
    "confusion_matrix.png": "Confusion matrices (counts and row-normalised)",
    "per_class_f1.png": "Per-class F1",
    "roc.png": "ROC curves, one class against the rest",
    "precision_recall.png": "Precision-recall curves",
    "reliability.png": "Reliability diagram (calibration)",
}


@st.cache_resource(max_entries=2, show_spinner=False)
def load_predictor(run_dir: str) -> Predictor:
    """The run's model, loaded once per run and shared by every session."""
    predictor = Predictor(open_run(run_dir))
    predictor.warm_up()
    return predictor


@st.cache_data(max_entries=32, show_spinner=False)
def predict_upload(run_dir: str, data: bytes, name: str, explain_class: str | None) -> Prediction:
    return load_predictor(run_dir).predict(data, name, explain_class)


def choose_run() -> Run | None:
    """The run picked in the sidebar (the most recently finished by default)."""
    runs = list_runs(config.runs_root())
    if not runs:
        return None
    labels = {str(p): run_label(p) for p in runs}
    chosen = st.sidebar.selectbox(
        "Run", list(labels), format_func=labels.get, help=f"finished runs in {config.runs_root()}"
    )
    return open_run(chosen)


def run_label(path: Path) -> str:
    try:
        synthetic = open_run(path).synthetic
    except DataError:
        return f"{path.name} (unreadable)"
    return f"{path.name} (synthetic demo data)" if synthetic else path.name


def risk_legend() -> None:
    st.sidebar.markdown(
        "**Risk levels**: the group of the most probable class; **high** also when the "
        "high-risk group's probability reaches the threshold chosen on the run's validation "
        "split"
    )
    for level, classes in RISK_GROUPS.items():
        names = ", ".join(f"{CLASS_NAMES[c]} ({c})" for c in classes)
        st.sidebar.markdown(f":{_colour_name(level)}[**{level}**]: {names}")


def _colour_name(level: str) -> str:
    return {"high": "red", "moderate": "orange", "low": "green"}[level]


def class_definitions() -> None:
    with st.expander("What the seven classes mean"):
        table = pd.DataFrame(
            {
                "class": list(CLASS_NAMES),
                "name": list(CLASS_NAMES.values()),
                "risk": [RISK_OF_CLASS[c] for c in CLASS_NAMES],
                "description": [CLASS_DESCRIPTIONS[c] for c in CLASS_NAMES],
            }
        )
        st.table(table.set_index("class"))


def probability_chart(prediction: Prediction) -> alt.Chart:
    ranked = pd.DataFrame(prediction.ranked(), columns=["class", "probability"])
    ranked["name"] = ranked["class"].map(CLASS_NAMES)
    ranked["risk"] = ranked["class"].map(RISK_OF_CLASS)
    colours = alt.Scale(domain=list(RISK_COLOURS), range=list(RISK_COLOURS.values()))
    return (
        alt.Chart(ranked)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            y=alt.Y("class:N", sort="-x", title=None),
            color=alt.Color("risk:N", scale=colours, title="risk"),
            tooltip=["name", alt.Tooltip("probability:Q", format=".1%"), "risk"],
        )
        .properties(height=240)
    )


def show_prediction(run: Run, upload) -> None:
    data = upload.getvalue()
    with st.spinner("Classifying and computing Grad-CAM ..."):
        prediction = predict_upload(str(run.path), data, upload.name, None)
    ranked = prediction.ranked()
    level = prediction.risk
    if level is None:  # flagged by the out-of-distribution check
        st.warning(
            f"{upload.name}: {OOD_MESSAGE}. How unusual it is for this model: "
            f"{prediction.ood_score:.2f}; images above {prediction.ood_threshold:.2f} are "
            f"withheld (a threshold set to withhold {run.params.ood_flag_rate:.0%} of the "
            "run's validation lesions). "
            "The probabilities below are shown for study only."
        )
    else:
        st.markdown(
            f"### Risk level: :{_colour_name(level)}[{level.upper()}]\n"
            f"Why {prediction.risk_rule()}.\n\n"
            f"Most probable: **{CLASS_NAMES[prediction.predicted]}** ({prediction.predicted}), "
            f"{ranked[0][1]:.1%}. Probability of the high-risk group (melanoma, basal cell "
            f"carcinoma): {prediction.risk_probabilities()['high']:.1%}."
        )
    screening = prediction.screening()
    if screening is not None and level is not None:
        melanoma = screening["melanoma"]
        if melanoma["threshold"] is not None:
            side = "above" if melanoma["above"] else "below"
            st.markdown(
                f"Melanoma probability {melanoma['probability']:.1%}: **{side}** the research "
                f"threshold of {melanoma['threshold']:.1%}, chosen on the run's validation "
                f"split to catch {prediction.operating_points['target_sensitivity']:.0%} of "
                "its melanomas. A research output about this model, not advice."
            )
    picture, explanation = st.columns(2)
    with picture:
        st.image(prediction.display, caption=f"{upload.name}, as the model frames it")
    with explanation:
        explain = st.selectbox(
            "Grad-CAM of class",
            [c for c, _ in ranked],
            format_func=lambda c: f"{c}: {CLASS_NAMES[c]}",
            help="where the network found evidence for this class",
        )
        opacity = st.slider("Grad-CAM opacity", 0.0, 1.0, 0.4, 0.05)
        if explain != prediction.explained_class:
            with st.spinner("Computing Grad-CAM ..."):
                prediction = predict_upload(str(run.path), data, upload.name, explain)
        st.image(prediction.overlay(opacity), caption=f"Grad-CAM for {explain}")
    st.markdown("#### Top 3")
    for rank, (name, probability) in enumerate(ranked[:3], start=1):
        st.markdown(f"{rank}. **{CLASS_NAMES[name]}** ({name}): {probability:.1%}")
    st.markdown("#### All seven classes")
    st.altair_chart(probability_chart(prediction), width="stretch")
    if prediction.temperature is not None:
        st.caption(
            f"Probabilities calibrated with temperature {prediction.temperature:.2f}, fitted on "
            "the run's validation split for single-view outputs like this one."
        )


def classify_page(run: Run) -> None:
    # Load and trace the model now, before anything is uploaded: the first upload is then
    # as fast as the next ones, and the page says what it is waiting for.
    with st.status(f"Loading the model of run {run.name} ...", expanded=False) as status:
        predictor = load_predictor(str(run.path))
        calibrated = "calibrated" if predictor.temperature is not None else "uncalibrated"
        status.update(label=f"Model of run {run.name} ready ({calibrated})", state="complete")
    if predictor.missing:
        st.warning(predictor.missing)
    suffixes = [s.lstrip(".") for s in IMAGE_SUFFIXES]
    upload = st.file_uploader(
        "Dermatoscopic image", type=suffixes, help="JPEG, PNG, BMP or TIFF; one image at a time"
    )
    if upload is None:
        st.info("Drag and drop a dermatoscopic image above, or browse for one.")
    else:
        try:
            show_prediction(run, upload)
        except DataError as e:
            st.error(f"Cannot use this file: {e}")
        except MemoryError:
            st.error(f"{upload.name} is too large to decode here; downscale it and try again.")
        except Exception as e:  # the app shows a message, never a stack trace
            log.exception("prediction failed for %s", upload.name)
            st.error(f"Could not classify {upload.name} ({type(e).__name__}: {e}).")
    class_definitions()


def training_summary(run: Run) -> str:
    """How the run was trained and where it stopped, from its parameters and state."""
    params, state = run.params, run.state()
    planned = params.warmup_epochs + params.finetune_epochs
    if state.stopped_early:
        stop = (
            f"stopped early after {state.epochs_done} of {planned} planned epochs: "
            f"{params.patience} fine-tuning epochs without a better `{params.monitor}`"
        )
    else:
        stop = f"ran all {planned} planned epochs"
    best = (
        f" The best model is epoch {state.best_epoch + 1} (`{params.monitor}` "
        f"{state.best_score:.3f} on validation)."
        if state.best_epoch >= 0
        else ""
    )
    return (
        f"**{params.backbone}** at {params.image_size} px, weights `{params.weights}`, loss "
        f"`{params.loss}`; {params.warmup_epochs} warm-up + {params.finetune_epochs} fine-tune "
        f"epochs planned, {stop}.{best} Folder: `{run.path}`"
    )


def performance_page(run: Run) -> None:
    st.markdown(training_summary(run))
    evaluation = run.evaluation("best")
    curves = run.path / CURVES_FILE
    if curves.is_file():
        st.image(str(curves), caption=FIGURE_CAPTIONS[CURVES_FILE])
    for set_name in ("test", EXTERNAL_SET):
        metrics = evaluation.metrics(set_name)
        if metrics is None:
            if set_name == "test":
                st.info(
                    "The best model of this run has not been evaluated yet: `python -m "
                    f"ham_utils evaluate --run {run.path}` writes its metrics and figures."
                )
            continue
        title = "Test split" if set_name == "test" else "External set"
        st.subheader(f"{title}: {metrics['n_images']} images")
        st.caption(
            f"Source: {metrics.get('source', 'not recorded')}. Best model, "
            f"{metrics.get('tta_views', 1)} test-time view(s)."
        )
        columns = st.columns(len(HEADLINE_METRICS))
        intervals = metrics.get("uncertainty", {}).get("intervals", {})
        for column, (key, label) in zip(columns, HEADLINE_METRICS, strict=True):
            value = metrics.get(key)
            column.metric(label, "n/a" if value is None else f"{value:.3f}")
            if intervals.get(key):
                column.caption("95% interval [{:.3f}, {:.3f}]".format(*intervals[key]))
        melanoma = metrics["melanoma"]
        st.markdown(
            "Melanoma: sensitivity "
            f"{with_interval(melanoma['sensitivity'], intervals.get('melanoma_sensitivity'))} "
            "at specificity "
            f"{with_interval(melanoma['specificity'], intervals.get('melanoma_specificity'))}. "
            f"Calibration error (ECE) {with_interval(metrics['ece'], intervals.get('ece'))} "
            "(the bracket is a bootstrap range, which runs high for this error)"
            + (
                f", {_fraction(metrics['ece_after_temperature'])} after temperature scaling."
                if metrics.get("ece_after_temperature") is not None
                else "."
            )
        )
        figures = evaluation.figures_dir(set_name)
        for file, caption in FIGURE_CAPTIONS.items():
            if file != CURVES_FILE and (figures / file).is_file():
                st.image(str(figures / file), caption=f"{caption}, {title.lower()}")


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    st.set_page_config(page_title="HAM10000 skin-lesion classifier", layout="wide")
    st.title("Skin-lesion classifier (HAM10000, 7 classes)")
    st.warning(DISCLAIMER)
    try:
        run = choose_run()
    except DataError as e:
        st.error(str(e))
        return
    if run is None:
        st.info(
            f"No trained run in `{config.runs_root()}` yet. Make one with `make all` (demo data, "
            "a few minutes on a CPU) or `python -m ham_utils train --params params/smoke.yaml`, "
            "then reload this page."
        )
        return
    page = st.sidebar.radio("Page", PAGES)
    risk_legend()
    if run.synthetic:
        st.error(
            f"Run {run.name} was trained on SYNTHETIC demo images: its predictions and its "
            "metrics say nothing about real skin lesions."
        )
    if page == PAGES[0]:
        classify_page(run)
    else:
        performance_page(run)


main()
