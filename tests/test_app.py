"""The Streamlit app, driven by Streamlit's AppTest (no browser): uploads, bad files, pages."""

import io
import json
import shutil

import pytest
import tomllib
from conftest import REPO, encode, lesion, png_header_only
from PIL import Image
from streamlit.testing.v1 import AppTest

from ham_utils import config
from ham_utils.config import CLASS_NAMES, CLASSES
from ham_utils.runs import open_run

APP = str(REPO / "app" / "streamlit_app.py")
TIMEOUT = 120  # the first upload loads the model


def start(runs_root, monkeypatch) -> AppTest:
    monkeypatch.setattr(config, "runs_root", lambda: runs_root)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    at.file_uploader[0].set_value((name, data, mime))
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def vega_charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


@pytest.fixture
def app(tiny_run, monkeypatch) -> AppTest:
    return start(tiny_run.parent, monkeypatch)


def test_no_run_yet_says_how_to_make_one(tmp_path, monkeypatch):
    at = start(tmp_path / "runs", monkeypatch)
    (info,) = at.info
    assert "No trained run" in info.value and "make all" in info.value
    assert not at.file_uploader


def test_disclaimer_synthetic_warning_risk_groups_and_class_definitions(app):
    assert "not a medical device" in app.warning[0].value
    assert any("SYNTHETIC" in e for e in texts(app.error))
    legend = " ".join(texts(app.sidebar.markdown))
    for level, classes in config.RISK_GROUPS.items():
        assert level in legend and all(f"({c})" in legend for c in classes)
    (table,) = app.table
    shown = table.value
    assert list(shown.index) == list(CLASSES)
    assert set(shown["name"]) == set(CLASS_NAMES.values())


def test_upload_shows_risk_top3_sorted_chart_and_gradcam(app):
    upload(app, "lesion.png", encode(Image.fromarray(lesion(seed=11)), "PNG"), "image/png")
    assert not [e for e in texts(app.error) if "SYNTHETIC" not in e]
    markdown = texts(app.markdown)
    (risk,) = [m for m in markdown if m.startswith("### Risk level")]
    top3 = [m for m in markdown if m[:3] in ("1. ", "2. ", "3. ")]
    assert len(top3) == 3
    percents = [float(m.rsplit(": ", 1)[1].rstrip("%")) for m in top3]
    assert percents == sorted(percents, reverse=True)
    predicted = next(c for c in CLASSES if f"({c}):" in top3[0])
    assert CLASS_NAMES[predicted] in top3[0]
    assert config.RISK_OF_CLASS[predicted].upper() in risk
    (chart,) = vega_charts(app)
    spec = json.loads(chart.proto.spec)
    assert spec["encoding"]["y"]["sort"] == "-x"  # bars sorted by probability
    assert app.slider[0].label == "Grad-CAM opacity"
    assert any(c.label == "Grad-CAM of class" for c in app.selectbox)


def images(at: AppTest) -> dict[str, str]:
    """Caption -> media URL of every image shown (the URL changes with the content)."""
    return {i.caption: i.url for element in at.get("image") for i in element.proto.imgs}


def test_opacity_and_explained_class_change_the_overlay(app):
    upload(app, "lesion.jpg", encode(Image.fromarray(lesion(seed=12)), "JPEG"))
    before = images(app)
    (overlay_caption,) = [c for c in before if c.startswith("Grad-CAM for")]
    picture_caption = "lesion.jpg, as the model frames it"
    app.slider[0].set_value(0.9).run()
    assert not app.exception
    after = images(app)
    assert after[overlay_caption] != before[overlay_caption]
    assert after[picture_caption] == before[picture_caption]
    chooser = next(c for c in app.selectbox if c.label == "Grad-CAM of class")
    other = chooser.options[1].split(":")[0]
    chooser.set_value(other).run()
    assert not app.exception
    assert f"Grad-CAM for {other}" in images(app)


def _rotated_jpeg() -> bytes:
    image = Image.fromarray(lesion(160, 90, seed=13))
    exif = image.getexif()
    exif[0x0112] = 8
    return encode(image, "JPEG", exif=exif)


def _gray16_tiff() -> bytes:
    return encode(Image.fromarray(lesion()[..., 0].astype("uint16") * 250), "TIFF")


def _huge_jpeg() -> bytes:
    """8000x6000, as from a large camera."""
    return encode(Image.fromarray(lesion(800, 600)).resize((8000, 6000)), "JPEG")


@pytest.mark.parametrize(
    "name, make",
    [
        ("cmyk.jpg", lambda: encode(Image.fromarray(lesion()).convert("CMYK"), "JPEG")),
        ("gray.png", lambda: encode(Image.fromarray(lesion()).convert("L"), "PNG")),
        ("rgba.png", lambda: encode(Image.fromarray(lesion()).convert("RGBA"), "PNG")),
        (
            "gray16.tif",
            lambda: encode(Image.fromarray(lesion()[..., 0].astype("uint16") * 250), "TIFF"),
        ),
        ("rotated.jpg", _rotated_jpeg),
        (
            "huge.jpg",
            lambda: encode(Image.fromarray(lesion(800, 600)).resize((8000, 6000)), "JPEG"),
        ),
        ("scan.bmp", lambda: encode(Image.fromarray(lesion()), "BMP")),
    ],
)
def test_unusual_images_are_converted_and_predicted(app, name, make):
    upload(app, name, make())
    assert [m for m in texts(app.markdown) if m.startswith("### Risk level")], name
    assert not [e for e in texts(app.error) if "SYNTHETIC" not in e]


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("notes.jpg", b"these are notes, not pixels", "not a readable image"),
        ("empty.png", b"", "empty"),
        ("cut.jpg", encode(Image.fromarray(lesion()), "JPEG")[:500], "not a readable image"),
        ("bomb.png", png_header_only(30_000, 30_000), "more than"),
    ],
)
def test_bad_files_get_a_clear_message_not_a_stack_trace(app, name, data, message):
    upload(app, name, data)
    errors = [e for e in texts(app.error) if "SYNTHETIC" not in e]
    assert len(errors) == 1 and message in errors[0] and name in errors[0], errors
    assert not [m for m in texts(app.markdown) if m.startswith("### Risk level")]


def test_performance_page_shows_metrics_and_figures(tiny_run, tmp_path, monkeypatch):
    runs_root = tmp_path / "runs"
    run_dir = runs_root / tiny_run.name
    shutil.copytree(tiny_run, run_dir)
    evaluation = open_run(run_dir).evaluation("best")
    evaluation.figures_dir().mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(evaluation.figures_dir() / "confusion_matrix.png")
    Image.new("RGB", (40, 30), "white").save(run_dir / "training_curves.png")
    metrics = {
        "n_images": 123,
        "accuracy": 0.71,
        "balanced_accuracy": 0.612,
        "macro_f1": 0.488,
        "macro_roc_auc": None,
        "melanoma": {"sensitivity": 0.46, "specificity": 0.9},
        "ece": 0.13,
        "ece_after_temperature": 0.05,
        "temperature": 0.71,
        "source": "the run's test split",
        "uncertainty": {
            "intervals": {"balanced_accuracy": [0.58, 0.64], "melanoma_sensitivity": [0.3, 0.6]}
        },
    }
    evaluation.metrics_file().write_text(json.dumps(metrics))
    external = {**metrics, "n_images": 45, "source": "ISIC 2018 Task 3 ground truth gt.csv"}
    evaluation.figures_dir("external").mkdir(parents=True)
    evaluation.metrics_file("external").write_text(json.dumps(external))
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(
        json.dumps(
            {**state, "stopped_early": True, "epochs_done": 2, "best_epoch": 0, "best_score": 0.5}
        )
    )
    at = start(runs_root, monkeypatch)
    at.sidebar.radio[0].set_value("Run performance").run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown == {
        "Balanced accuracy": "0.612",
        "Macro F1": "0.488",
        "Macro ROC AUC": "n/a",
        "Accuracy": "0.710",
    }
    assert [s.value for s in at.subheader] == ["Test split: 123 images", "External set: 45 images"]
    assert any(
        "sensitivity 0.460 [0.300, 0.600] at specificity 0.900" in m for m in texts(at.markdown)
    )
    assert "95% interval [0.580, 0.640]" in texts(at.caption)
    assert any("SYNTHETIC" in e for e in texts(at.error))
    captions = texts(at.caption)
    assert any("ISIC 2018 Task 3 ground truth gt.csv" in c for c in captions), captions
    summary = next(m for m in texts(at.markdown) if "planned" in m)
    assert "stopped early after 2 of" in summary and "best model is epoch 1" in summary
    # Training curves once (the run's), the test confusion matrix; nothing repeated for the
    # external set, which has no figures here.
    assert len(at.get("image")) == 2


def test_the_model_is_loaded_before_anything_is_uploaded(app):
    """The classify page warms the model on its first render and says when it is ready."""
    labels = [s.label for s in app.get("status")]
    assert labels == ["Model of run tiny ready (uncalibrated)"], labels
    order = [child.type for child in app.main.children.values()]
    assert order.index("status") < order.index("file_uploader"), order


def test_a_run_without_its_fitted_files_says_what_its_predictions_lack(app, tiny_run):
    (warning,) = [w.value for w in app.warning if "has not been evaluated" in w.value]
    assert "uncalibrated" in warning and "no out-of-distribution check" in warning
    assert f"evaluate --run {tiny_run}" in warning


def test_performance_page_of_an_unevaluated_run_says_how_to_evaluate(app):
    app.sidebar.radio[0].set_value("Run performance").run()
    assert any("python -m ham_utils evaluate" in i.value for i in app.info)


def test_upload_limit_is_50_mb_in_the_app_config_as_the_readme_says():
    settings = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["maxUploadSize"] == 50  # megabytes: an 8000x6000 JPEG fits
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "Uploads are limited to 50 MB (`.streamlit/config.toml`)" in readme
    assert settings["browser"]["gatherUsageStats"] is False


def test_uploaded_bytes_are_what_the_app_predicts(app, tiny_run):
    """The app shows the same probabilities as the predict module for the same file."""
    from ham_utils.runs import open_run
    from ham_utils.serve.predict import Predictor

    data = io.BytesIO()
    Image.fromarray(lesion(seed=21)).save(data, format="PNG")
    upload(app, "same.png", data.getvalue(), "image/png")
    expected = Predictor(open_run(tiny_run)).predict(data.getvalue()).ranked()[:3]
    top3 = [m for m in texts(app.markdown) if m[:3] in ("1. ", "2. ", "3. ")]
    for line, (name, probability) in zip(top3, expected, strict=True):
        assert f"({name}): {probability:.1%}" in line


def test_the_model_loads_once_per_run(tiny_run, tmp_path, monkeypatch):
    from ham_utils.serve.predict import Predictor

    run_dir = tmp_path / "runs" / "fresh"  # a path no earlier test has cached
    shutil.copytree(tiny_run, run_dir)
    loads = []
    original = Predictor.__init__

    def counting_init(self, *args, **kwargs):
        loads.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "__init__", counting_init)
    at = start(run_dir.parent, monkeypatch)
    upload(at, "one.png", encode(Image.fromarray(lesion(seed=41)), "PNG"), "image/png")
    upload(at, "two.png", encode(Image.fromarray(lesion(seed=42)), "PNG"), "image/png")
    second = start(run_dir.parent, monkeypatch)  # another browser session
    upload(second, "three.png", encode(Image.fromarray(lesion(seed=43)), "PNG"), "image/png")
    assert len(loads) == 1


def test_a_pretrained_lite_run_is_served_with_its_gradcam(tiny_lite_run, monkeypatch):
    at = start(tiny_lite_run.parent, monkeypatch)
    upload(at, "lesion.png", encode(Image.fromarray(lesion(seed=14)), "PNG"), "image/png")
    assert any(m.startswith("### Risk level") for m in texts(at.markdown))
    assert any(caption.startswith("Grad-CAM for") for caption in images(at))
