"""The out-of-distribution check: its threshold flags the share of validation images it is
set to, and it flags photographs that are not lesions, noise and flat colours."""

import numpy as np
import pytest

from ham_utils.evaluation.ood import FeatureExtractor, OodDetector, fit_detector, stage_layers

SIZE = 64


def test_the_threshold_flags_the_share_of_validation_images_it_is_set_to(tmp_path):
    rng = np.random.default_rng(0)
    train = [rng.normal(0, 1, (500, 8)), rng.normal(5, 2, (500, 4))]
    val = [rng.normal(0, 1, (400, 8)), rng.normal(5, 2, (400, 4))]
    detector = fit_detector(train, val, flag_rate=0.05)
    assert detector.flags(val).mean() == pytest.approx(0.05, abs=1 / 400)
    far = [np.full((3, 8), 6.0), np.full((3, 4), 5.0)]  # far in the first layer only
    assert detector.flags(far).all()
    detector.save(tmp_path / "ood.npz")
    again = OodDetector.load(tmp_path / "ood.npz")
    np.testing.assert_allclose(again.scores(val), detector.scores(val))
    assert OodDetector.load(tmp_path / "missing.npz") is None


def _lesions(n: int, seed: int) -> np.ndarray:
    from PIL import Image

    from ham_utils.config import CLASSES
    from ham_utils.data.images import resize_square
    from ham_utils.data.synthetic import render_lesion_image

    rng = np.random.default_rng(seed)
    return np.stack([
        resize_square(Image.fromarray(render_lesion_image(CLASSES[i % 7], rng, 200, 150)), SIZE)
        for i in range(n)
    ])  # fmt: skip


def _not_lesions() -> dict[str, np.ndarray]:
    from ham_utils.data.images import resize_square
    from ham_utils.evaluation.ood_probes import not_lesions

    return {name: resize_square(picture, SIZE) for name, picture in not_lesions().items()}


def test_photographs_noise_and_flat_colours_are_flagged(tiny_lite_run):
    """EfficientNet-Lite0's ImageNet features, the detector fitted on synthetic lesions."""
    from ham_utils.runs import open_run

    model = open_run(tiny_lite_run).load_model()
    extractor = FeatureExtractor(model)
    names = [layer.name for layer in extractor.layers]
    assert names[0].startswith("block4") and names[-1] == "top_activation", names
    detector = fit_detector(
        extractor.features(_lesions(240, seed=0)),
        extractor.features(_lesions(120, seed=1)),
        0.05,
        extractor,
    )
    others = _not_lesions()
    flagged = detector.flags(extractor.features(np.stack(list(others.values()))))
    assert flagged.all(), [name for name, f in zip(others, flagged, strict=True) if not f]
    assert detector.flags(extractor.features(_lesions(120, seed=2))).mean() < 0.15


def test_stage_layers_end_with_the_grad_cam_feature_map(tiny_run):
    from ham_utils.runs import open_run

    names = [layer.name for layer in stage_layers(open_run(tiny_run).load_model())]
    assert names[0] == "stem_activation" and names[-1] == "top_activation"
    assert len(names) == len(set(names))


def test_the_detector_keeps_the_view_and_stages_it_was_fitted_on(tmp_path):
    rng = np.random.default_rng(0)
    features = [rng.normal(0, 1, (50, 3))]
    detector = fit_detector(features, features, 0.1)
    assert (detector.view_scale, detector.first_stage) == (1, 0)  # no extractor: as before
    from dataclasses import replace

    replace(detector, view_scale=3, first_stage=4).save(tmp_path / "ood.npz")
    again = OodDetector.load(tmp_path / "ood.npz")
    assert (again.view_scale, again.first_stage) == (3, 4)


def test_the_study_fits_both_checks_and_flags_every_probe_set(tiny_lite_run, tmp_path, monkeypatch):
    """The README's table, on a tiny run: every probe set under both checks, the validation
    lesions flagged at the rate the threshold is set to."""
    import shutil

    from conftest import lesion, write_split
    from PIL import Image

    from ham_utils.evaluation.ood_probes import SHIFTS
    from ham_utils.evaluation.ood_study import CHECKS, flag_rates
    from ham_utils.runs import open_run

    monkeypatch.setenv("HAM_PROJECT_ROOT", str(tmp_path))
    run_dir = tmp_path / "runs" / "lite"
    shutil.copytree(tiny_lite_run, run_dir)
    write_split(run_dir, tmp_path / "HAM10000")
    originals = tmp_path / "originals"
    originals.mkdir()
    for seed in range(3):
        Image.fromarray(lesion(600, 450, seed=seed)).save(originals / f"ISIC_{seed:07d}.jpg")
    run = open_run(run_dir).with_settings(data_dir=str(tmp_path / "HAM10000"), ood_flag_rate=0.25)
    table = flag_rates(run, originals, progress=False)
    assert list(table.columns) == ["images", *CHECKS]
    assert [f"lesion photographs, {s}" for s in SHIFTS] == list(table.index[1:-1])
    assert table.loc["pictures that are not lesions", "images"] == 15
    assert table.loc["lesion photographs, as given", "images"] == 3
    # The 75th percentile of 14 scores lies between the 10th and 11th: 4 are above it.
    assert (table.loc["validation lesions", list(CHECKS)] == 4 / 14).all()
    assert table[list(CHECKS)].stack().between(0, 1).all()


def test_stages_are_numbered_on_every_backbone_family():
    from ham_utils.evaluation.ood import _stage_number

    assert [_stage_number(s) for s in ("stem", "block1", "block4", "block14")] == [0, 1, 4, 14]
    assert _stage_number("conv4_block2") == 4  # ResNet50's blocks
