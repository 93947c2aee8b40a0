"""Predicting single images: every kind of input file, calibration, and the predict command."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import encode, lesion, png_header_only, run_cli
from PIL import Image

from ham_utils.config import CLASSES, RISK_OF_CLASS
from ham_utils.data.images import MAX_PIXELS
from ham_utils.errors import DataError
from ham_utils.runs import open_run
from ham_utils.serve.predict import Predictor, predict_paths


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor(open_run(tiny_run))


def test_prediction_has_probabilities_risk_and_gradcam(predictor):
    prediction = predictor.predict(encode(Image.fromarray(lesion()), "JPEG"), "blob.jpg")
    assert prediction.probabilities.shape == (len(CLASSES),)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    ranked = prediction.ranked()
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert prediction.predicted == ranked[0][0] == prediction.explained_class
    assert prediction.risk == RISK_OF_CLASS[prediction.predicted]
    assert sum(prediction.risk_probabilities().values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.heatmap.min() >= 0.0 and prediction.heatmap.max() <= 1.0
    assert prediction.display.shape == (256, 256, 3) and prediction.display.dtype == np.uint8
    faint, strong = prediction.overlay(0.1), prediction.overlay(0.9)
    assert faint.shape == strong.shape == prediction.display.shape
    assert (
        np.abs(faint.astype(int) - prediction.display).mean()
        < np.abs(strong.astype(int) - prediction.display).mean()
    )
    record = prediction.as_record()
    assert record["image"] == "blob.jpg" and list(record["probabilities"]) == list(CLASSES)
    assert json.loads(json.dumps(record)) == record


def test_another_class_can_be_explained(predictor):
    data = encode(Image.fromarray(lesion(seed=3)), "PNG")
    own = predictor.predict(data)
    other = next(c for c, _ in own.ranked()[1:])
    explained = predictor.predict(data, explain_class=other)
    assert explained.explained_class == other and explained.predicted == own.predicted
    np.testing.assert_allclose(explained.probabilities, own.probabilities, atol=1e-6)
    with pytest.raises(ValueError, match="explain_class"):
        predictor.predict(data, explain_class="melanoma")


def _variants() -> dict[str, bytes]:
    rgb = Image.fromarray(lesion(seed=5))
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype="uint16") * 200)
    rgba = rgb.convert("RGBA")
    return {
        "rgb.png": encode(rgb, "PNG"),
        "rgba_opaque.png": encode(rgba, "PNG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "gray.jpg": encode(rgb.convert("L"), "JPEG", quality=95),
        "gray16.png": encode(gray16, "PNG"),
        "palette.bmp": encode(rgb.convert("P"), "BMP"),
        "rgb.tiff": encode(rgb, "TIFF"),
    }


def test_every_image_mode_is_converted_and_predicted(predictor):
    predictions = {name: predictor.predict(data, name) for name, data in _variants().items()}
    reference = predictions["rgb.png"].probabilities
    # Opaque alpha changes nothing; the other conversions change pixels, not the pipeline.
    np.testing.assert_allclose(predictions["rgba_opaque.png"].probabilities, reference, atol=1e-6)
    for name, prediction in predictions.items():
        assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5), name


def test_exif_orientation_is_applied(predictor):
    pixels = np.zeros((60, 120, 3), dtype="uint8")
    pixels[:, :60] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 60:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    prediction = predictor.predict(encode(image, "JPEG", exif=exif, quality=95))
    top, bottom = (
        prediction.display[:100].mean(axis=(0, 1)),
        prediction.display[-100:].mean(axis=(0, 1)),
    )
    assert top[0] > 200 and top[2] < 60, top  # the red half is on top once turned
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_a_very_large_photo_is_predicted(predictor):
    big = Image.fromarray(lesion(800, 600, seed=2)).resize((8000, 6000))
    prediction = predictor.predict(encode(big, "JPEG", quality=80), "big.jpg")
    assert prediction.display.shape == (256, 256, 3)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"GIF89a but not really", "not a readable image"),
        (encode(Image.fromarray(lesion()), "JPEG")[:600], "not a readable image"),
        (png_header_only(15_000, 10_000), f"more than {MAX_PIXELS:,}"),
        (png_header_only(20_000, 10_000), f"more than {MAX_PIXELS:,}"),
    ],
    ids=["empty", "not-an-image", "truncated", "150-megapixels", "200-megapixels"],
)
def test_bad_uploads_are_refused_with_the_file_name(predictor, data, message):
    with pytest.raises(DataError, match=message) as error:
        predictor.predict(data, "upload.jpg")
    assert "upload.jpg" in str(error.value)


def test_calibrated_probabilities_when_the_run_has_a_temperature(tiny_run, tmp_path, predictor):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    # Fitted for 2-view TTA outputs (0.5) and for the single view predict makes (3.0).
    open_run(run_dir).evaluation("best").write_calibration({1: 3.0, 2: 0.5}, n_images=10)
    calibrated = Predictor(open_run(run_dir), model=predictor.explainer.model)
    data = encode(Image.fromarray(lesion(seed=9)), "PNG")
    raw, hot = predictor.predict(data), calibrated.predict(data)
    assert predictor.temperature is None and calibrated.temperature == 3.0
    assert hot.predicted == raw.predicted
    assert hot.probabilities.max() < raw.probabilities.max()  # T > 1 flattens
    expected = np.exp(np.log(raw.probabilities) / 3.0)
    np.testing.assert_allclose(hot.probabilities, expected / expected.sum(), atol=1e-5)


def test_a_temperature_fitted_for_other_outputs_is_refused(tiny_run, tmp_path, predictor):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    run = open_run(run_dir)
    run.evaluation("best").write_calibration({4: 0.8}, n_images=10)  # TTA outputs only
    with pytest.raises(DataError, match="not the 1-view outputs"):
        Predictor(run, model=predictor.explainer.model)
    # The last model has no calibration of its own: uncalibrated, not the best model's.
    assert Predictor(run, "last", model=predictor.explainer.model).temperature is None
    moved = run.evaluation("last")
    shutil.copytree(run.evaluation("best").root, moved.root)
    with pytest.raises(DataError, match="fitted for the 'best' model"):
        Predictor(run, "last", model=predictor.explainer.model)


def test_the_risk_level_follows_the_validation_threshold_on_the_high_risk_probability(
    tiny_run, tmp_path, predictor
):
    """A prediction whose top class is low-risk but whose high-risk probability reaches the
    threshold chosen on validation is shown as high risk, and says so as a research output."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    for seed in range(40):  # an image whose top class alone would not say "high"
        data = encode(Image.fromarray(lesion(seed=seed)), "PNG")
        raw = predictor.predict(data)
        if raw.predicted not in ("mel", "bcc"):
            break
    assert raw.predicted not in ("mel", "bcc") and raw.risk != "high"
    assert raw.operating_points is None and raw.as_record()["screening"] is None
    high = raw.risk_probabilities()["high"]
    mel = float(raw.probabilities[list(raw.classes).index("mel")])
    evaluation = open_run(run_dir).evaluation("best")
    below = {"melanoma": mel + 0.01, "high_risk": high + 0.01}
    above = {"melanoma": mel - 0.01, "high_risk": high - 0.01}
    for thresholds, expected in ((below, raw.risk), (above, "high")):
        evaluation.write_operating_points(0.9, {1: thresholds, 2: below}, False, n_images=10)
        shown = Predictor(open_run(run_dir), model=predictor.explainer.model).predict(data)
        assert shown.risk == expected
        rule = shown.as_record()["risk_rule"]
        if expected == "high":  # the rule that fired, with its threshold
            assert rule.startswith("high: the high-risk group's probability")
            assert f"{thresholds['high_risk']:.1%}, chosen on the run's validation" in rule
        else:
            group = f"{expected}-risk group"
            assert (
                rule == f"{expected}: the most probable class, {shown.predicted}, is in the {group}"
            )
        screening = shown.as_record()["screening"]
        assert screening["melanoma"]["above"] is (thresholds is above)
        assert screening["high_risk"]["threshold"] == pytest.approx(thresholds["high_risk"])
        assert "not a diagnosis or advice" in screening["note"] and "90%" in screening["note"]


def test_an_image_the_ood_check_flags_gets_a_warning_instead_of_a_risk_level(
    tiny_run, tmp_path, predictor
):
    from dataclasses import replace

    from ham_utils.evaluation.ood import OOD_MESSAGE, FeatureExtractor, fit_detector

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    run = open_run(run_dir)
    extractor = FeatureExtractor(predictor.explainer.model)
    size = run.params.image_size
    images = np.stack([lesion(size, size, seed=s) for s in range(60)])
    features = extractor.features(images[:40]), extractor.features(images[40:])
    detector = fit_detector(*features, 0.1, extractor)
    data = encode(Image.fromarray(lesion(seed=9)), "PNG")
    for threshold, flagged in ((np.inf, False), (-1.0, True)):
        replace(detector, threshold=threshold).save(run.evaluation("best").ood_file)
        shown = Predictor(run, model=predictor.explainer.model).predict(data)
        record = shown.as_record()
        assert record["out_of_distribution"]["flagged"] is flagged
        assert (record["risk"] is None) is flagged and (
            record.get("warning") == OOD_MESSAGE
        ) is flagged
    assert predictor.predict(data).as_record()["out_of_distribution"] is None  # no detector


def test_predict_paths_reports_each_bad_file_and_never_overwrites_overlays(predictor, tmp_path):
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    Image.fromarray(lesion(seed=1)).save(folder / "a.jpg")
    Image.fromarray(lesion(seed=2)).save(folder / "more" / "a.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image, and not an image suffix: skipped")
    out = tmp_path / "overlays"
    records = list(
        predict_paths(predictor, [folder, folder / "more" / "a.png", tmp_path / "gone.jpg"], out)
    )
    images = [r["image"] for r in records]
    assert images == [
        str(folder / "a.jpg"),
        str(folder / "broken.png"),
        str(folder / "more" / "a.png"),
        str(tmp_path / "gone.jpg"),
    ]
    assert ["error" in r for r in records] == [False, True, False, True]
    assert sorted(p.name for p in out.iterdir()) == ["a_2_gradcam.png", "a_gradcam.png"]
    assert Image.open(records[0]["gradcam"]).size == (256, 256)


@pytest.mark.slow
def test_predict_command_prints_json_lines_and_fails_when_any_image_fails(
    tiny_run, project_root, tmp_path
):
    Image.fromarray(lesion(seed=4)).save(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    good = run_cli(project_root, "predict", "--run", str(tiny_run), str(tmp_path / "ok.jpg"))
    assert good.returncode == 0, good.stderr[-2000:]
    (line,) = good.stdout.strip().splitlines()
    record = json.loads(line)
    assert record["predicted"] in CLASSES and record["risk"] == RISK_OF_CLASS[record["predicted"]]
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)

    mixed = run_cli(
        project_root,
        "predict",
        "--run",
        str(tiny_run),
        str(tmp_path),
        "--gradcam",
        str(tmp_path / "cams"),
    )
    assert mixed.returncode == 1
    records = [json.loads(x) for x in mixed.stdout.strip().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["bad.jpg", "ok.jpg"]
    assert "not a readable image" in records[0]["error"] and "bad.jpg" in records[0]["error"]
    assert (tmp_path / "cams" / "ok_gradcam.png").is_file()
    assert "1 image(s) could not be predicted" in mixed.stderr


def test_a_pretrained_lite_run_predicts_and_explains_from_its_last_feature_map(tiny_lite_run):
    lite_predictor = Predictor(open_run(tiny_lite_run))
    assert lite_predictor.explainer.cam.layer_name == "top_activation"
    prediction = lite_predictor.predict(encode(Image.fromarray(lesion(seed=21)), "PNG"))
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    # 64 px gives a 2x2 feature map: an explanation that is not one flat value
    assert prediction.heatmap.max() == pytest.approx(1.0) and np.ptp(prediction.heatmap) > 0.1


def test_predict_names_what_a_folder_held_besides_images_and_refuses_no_image_at_all(
    tiny_run, tmp_path, monkeypatch, capsys, caplog
):
    from ham_utils.cli import main

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no image here")
    monkeypatch.setattr(Predictor, "__init__", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["predict", "--run", str(tiny_run), str(empty)]) == 2
    assert f"no image files in {empty}" in capsys.readouterr().err
    assert "skipped 2 entries that are not image files (notes.txt, sub/)" in caplog.text
    monkeypatch.undo()

    caplog.clear()
    mixed = tmp_path / "Läsionen"
    (mixed / "older").mkdir(parents=True)
    Image.fromarray(lesion(seed=5)).save(mixed / "naevus_ü.png")
    (mixed / "notes.txt").write_text("not an image")
    assert main(["predict", "--run", str(tiny_run), str(mixed)]) == 0
    out = capsys.readouterr().out
    assert f'"image": "{mixed / "naevus_ü.png"}"' in out  # written as it is, not \\u-escaped
    assert "skipped 2 entries that are not image files (notes.txt, older/)" in caplog.text
