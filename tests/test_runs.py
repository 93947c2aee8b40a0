"""The run folder: its id, the paths it stores and the checks made when it is opened."""

import json
import shutil

import pandas as pd
import pytest

from ham_utils.config import load_params
from ham_utils.data.split import check_images_found, read_splits, relative_paths
from ham_utils.errors import DataError
from ham_utils.runs import SPLITS_FILE, open_run, run_id


def test_the_run_id_keeps_the_data_folders_name_not_where_it_lies():
    colab = load_params(None, {"data_dir": "/content/drive/MyDrive/HAM10000"})
    laptop = load_params(None, {"data_dir": "/home/me/data/HAM10000"})
    other = load_params(None, {"data_dir": "/home/me/data/HAM10000_cleaned"})
    assert run_id(colab) == run_id(laptop) != run_id(other)


def test_splits_store_paths_relative_to_the_data_folder(tmp_path):
    colab, laptop = tmp_path / "colab" / "ham", tmp_path / "laptop" / "ham"
    for root in (colab, laptop):
        (root / "part_1").mkdir(parents=True)
        (root / "part_1" / "ISIC_1.jpg").write_bytes(b"x")
    splits = pd.DataFrame(
        {"image_id": ["ISIC_1"], "path": [str(colab / "part_1" / "ISIC_1.jpg")], "split": "train"}
    )
    relative_paths(splits, colab).to_csv(tmp_path / SPLITS_FILE, index=False)
    assert pd.read_csv(tmp_path / SPLITS_FILE)["path"].tolist() == ["part_1/ISIC_1.jpg"]
    moved = read_splits(tmp_path / SPLITS_FILE, laptop)
    assert moved["path"].tolist() == [str(laptop / "part_1" / "ISIC_1.jpg")]
    check_images_found(moved, laptop, tmp_path / SPLITS_FILE)
    shutil.rmtree(laptop)
    with pytest.raises(DataError, match=r"1 of 1 images .* point data_dir at the folder"):
        check_images_found(moved, laptop, tmp_path / SPLITS_FILE)


def test_a_run_without_classes_json_is_an_error_not_a_default(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "classes.json").unlink()
    with pytest.raises(DataError, match=r"classes\.json is missing"):
        open_run(run_dir)


def test_train_refuses_a_run_folder_of_another_split(tmp_path, monkeypatch):
    from ham_utils.train.loop import _check_same_split

    monkeypatch.setenv("HAM_PROJECT_ROOT", str(tmp_path))
    params = load_params(None, {"data_dir": str(tmp_path / "HAM10000")})
    rows = pd.DataFrame(
        {"image_id": ["a", "b"], "lesion_id": ["l1", "l2"], "dx": ["nv", "mel"],
         "split": ["train", "val"], "path": ["a.jpg", "b.jpg"]}
    )  # fmt: skip
    params.splits_csv.parent.mkdir(parents=True)
    rows.to_csv(params.splits_csv, index=False)
    run_dir = tmp_path / "runs" / run_id(params)
    run_dir.mkdir(parents=True)
    rows.to_csv(run_dir / SPLITS_FILE, index=False)
    _check_same_split(run_dir, params)  # the same split: fine
    rows.assign(split=["val", "train"]).to_csv(run_dir / SPLITS_FILE, index=False)
    with pytest.raises(DataError, match="trained on another split"):
        _check_same_split(run_dir, params)


def test_evaluation_settings_and_the_data_folder_can_change_after_training(tiny_run):
    run = open_run(tiny_run).with_settings(tta=4, data_dir="/elsewhere/HAM10000")
    assert (run.params.tta, run.params.data_dir) == (4, "/elsewhere/HAM10000")
    assert run.evaluation("last").root == tiny_run / "evaluation" / "last"
    with pytest.raises(ValueError, match="which must be one of"):
        run.evaluation("final")
    assert json.loads((tiny_run / "classes.json").read_text()) == list(run.classes)


def test_the_external_set_is_this_machines_setting_and_never_travels_with_a_run(tiny_run, tmp_path):
    import yaml

    from ham_utils.runs import EVALUATION_SETTINGS, stored_settings

    params = load_params(None, {"external_dir": "/content/drive/ISIC2018"})
    assert stored_settings(params)["external_dir"] == ""  # what params.yaml keeps
    run_dir = tmp_path / "from_colab"
    shutil.copytree(tiny_run, run_dir)
    stored = yaml.safe_load((run_dir / "params.yaml").read_text())
    stored["external_dir"] = "/content/drive/ISIC2018"  # as a run folder of before kept it
    (run_dir / "params.yaml").write_text(yaml.safe_dump(stored))
    assert open_run(run_dir).params.external_dir == ""
    assert {"external_dir", "data_dir", "track"} <= set(EVALUATION_SETTINGS)


def test_a_folder_swap_cut_off_between_its_renames_is_restored(tmp_path):
    from ham_utils.runs import replace_folder, restore_interrupted, staging_dir

    target = tmp_path / "evaluation" / "best"
    (target / "gradcam").mkdir(parents=True)
    (target / "metrics.json").write_text("old")
    (target / "gradcam" / "grid.png").write_text("overlay")
    new = staging_dir(target)
    new.mkdir()
    (new / "metrics.json").write_text("new")
    replace_folder(new, target, keep=("gradcam",))
    assert (target / "metrics.json").read_text() == "new"
    assert (target / "gradcam" / "grid.png").read_text() == "overlay"
    assert sorted(p.name for p in target.parent.iterdir()) == ["best"]

    target.rename(target.with_name(".best.previous"))  # stopped between the two renames
    restore_interrupted(target)
    assert (target / "metrics.json").read_text() == "new"
