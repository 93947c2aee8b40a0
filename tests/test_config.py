from pathlib import Path

import pytest

from ham_utils.config import (
    CLASSES,
    RISK_OF_CLASS,
    Params,
    ParamsError,
    dataset_slug,
    load_params,
    parse_override,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_class_has_exactly_one_risk_group():
    assert sorted(RISK_OF_CLASS) == sorted(CLASSES)


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_parameter_files_load(path):
    assert isinstance(load_params(path), Params)


def test_overrides_are_typed_from_their_default(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("image_size: 64\n")
    params = load_params(path, {"seed": "7", "val_fraction": "0.2", "verify_images": "false"})
    assert (params.image_size, params.seed, params.val_fraction) == (64, 7, 0.2)
    assert params.verify_images is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"imge_size": 64}, "unknown parameter"),
        ({"image_size": "big"}, "image_size must be a whole number"),
        ({"image_size": 64.5}, "image_size must be a whole number"),
        ({"verify_images": "maybe"}, "verify_images must be true or false"),
        ({"resize_mode": "stretch"}, "resize_mode must be one of"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "less than 10%"),
    ],
)
def test_bad_parameters_are_refused_with_the_key_named(overrides, message):
    with pytest.raises(ParamsError, match=message):
        load_params(None, overrides)


def test_missing_parameter_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_parse_override_needs_key_and_value():
    assert parse_override("seed=3") == ("seed", "3")
    with pytest.raises(ParamsError):
        parse_override("seed")


def test_dataset_slug_distinguishes_folders_of_the_same_name(tmp_path):
    a, b = tmp_path / "x" / "data", tmp_path / "y" / "data"
    assert dataset_slug(a) != dataset_slug(b)
    assert dataset_slug(a).startswith("data-")


def test_demo_data_dir_names_its_settings_and_says_synthetic():
    params = load_params(None, {"demo_images": 300, "demo_seed": 5})
    assert params.uses_demo_data
    assert "synthetic" in params.resolved_data_dir.name
    assert "n300" in params.resolved_data_dir.name and "seed5" in params.resolved_data_dir.name
