import numpy as np
import pandas as pd
from conftest import run_cli

TINY_DEMO = ["--set", "demo_images=120", "--set", "demo_width=96", "--set", "demo_height=72"]


def test_help_lists_the_commands(project_root):
    result = run_cli(project_root, "--help")
    assert result.returncode == 0
    for command in ("synth", "split", "cache", "train", "download"):
        assert command in result.stdout


def test_demo_data_split_and_cache_from_the_command_line(project_root):
    split = run_cli(project_root, "split", *TINY_DEMO, "--set", "image_size=32")
    assert split.returncode == 0, split.stderr
    assert "SYNTHETIC" in split.stdout and "no lesion in two splits" in split.stdout
    splits_csv = project_root / split.stdout.strip().splitlines()[-1]
    splits = pd.read_csv(splits_csv)
    assert len(splits) == 120 and set(splits["split"]) >= {"train", "val", "test"}
    assert (splits_csv.parent / "dropped_rows.csv").is_file()

    cache = run_cli(project_root, "cache", *TINY_DEMO, "--set", "image_size=32")
    assert cache.returncode == 0, cache.stderr
    files = sorted((project_root / "data" / "cache").rglob("*.npy"))
    assert [f.name.split("_")[0] for f in files] == ["test", "train", "val"]
    train = np.load(next(f for f in files if f.name.startswith("train")), mmap_mode="r")
    assert train.shape == ((splits["split"] == "train").sum(), 32, 32, 3)

    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = run_cli(project_root, "cache", *TINY_DEMO, "--set", "image_size=32")
    assert again.returncode == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # reused, not rebuilt


def test_a_missing_data_folder_is_one_clear_error_line(project_root, tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run_cli(project_root, "split", "--set", f"data_dir={missing}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: data folder {missing}")
    assert "Traceback" not in result.stderr


def test_an_unknown_parameter_is_refused(project_root):
    result = run_cli(project_root, "split", "--set", "imgae_size=64")
    assert result.returncode == 2 and "unknown parameter" in result.stderr
