import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli, run_python
from test_split import NO_VASC, TWENTY_ROWS, write_dataset

from ham_utils.data.split import SPLITS, class_table

TINY_DEMO = ["--set", "demo_images=120", "--set", "demo_width=96", "--set", "demo_height=72"]


def test_help_lists_the_commands(project_root):
    result = run_cli(project_root, "--help")
    assert result.returncode == 0
    for command in ("synth", "split", "cache", "train", "download"):
        assert command in result.stdout
    assert result.stderr == ""  # nothing of TensorFlow's start-up


# Runs the command line in-process and prints what it imported of TensorFlow and Keras.
IMPORTS_OF = """
import sys
from ham_utils.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["predict", "--help"], ["export", "--help"], ["export", "--format", "pdf"]],
    ids=["help", "predict-help", "export-help", "argument-error"],
)
def test_help_and_argument_errors_answer_without_importing_tensorflow(project_root, args):
    env = {**os.environ, "HAM_PROJECT_ROOT": str(project_root)}
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF, *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


# Native lines as TensorFlow writes them to file descriptor 2, a real one between them, and a
# Python message just before the process ends without flushing anything.
NATIVE_LINES = r"""
import os, sys
from ham_utils.errors import filter_native_noise
filter_native_noise()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written\n")
os.write(2, b"I0000 00:00:17 1 cudart_stub.cc:31] Could not find cuda drivers\n")
os.write(2, b"E0000 00:00:17 1 allocator.cc:9] a real native error\n")
os.write(2, b"Memory patch applied: M_TRIM_THRESHOLD=128 kb was set.\n")
print("python says goodbye", file=sys.stderr, flush=True)
if sys.argv[1] == "exit":
    raise SystemExit(3)
os._exit(4)
"""


@pytest.mark.parametrize("ending", ["exit", "os._exit"])
def test_native_start_up_noise_is_dropped_and_everything_else_kept(ending):
    result = run_python("-c", NATIVE_LINES, ending)
    assert result.returncode == (3 if ending == "exit" else 4)
    lines = result.stderr.splitlines()
    assert "python says goodbye" in lines
    if ending == "exit":  # an ordinary exit drains the filter; os._exit may cut it short
        real = "E0000 00:00:17 1 allocator.cc:9] a real native error"
        assert sorted(lines) == sorted([real, "python says goodbye"])  # Python's comes direct
    for noise in ("absl::InitializeLog", "cudart_stub", "Memory patch"):
        assert noise not in result.stderr


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


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING: ")]


def test_split_warnings_are_one_line_each_and_a_failed_split_leaves_nothing_for_cache(
    project_root, tmp_path
):
    data = write_dataset(tmp_path / "data", NO_VASC, images_per_lesion=2)
    (data / "images" / "ISIC_nv_0_1.jpg").unlink()  # one row dropped: a DataWarning
    args = ("--set", f"data_dir={data}")
    split = run_cli(project_root, "split", *args)
    assert split.returncode == 0, split.stderr
    warned = _warning_lines(split.stderr)
    assert any(
        line.startswith("WARNING: DataWarning: ") and "1 of 104 rows" in line for line in warned
    )
    assert any("class vasc (Vascular lesion) has no images in the data" in line for line in warned)
    # Only the message: no "file.py:123:" location and no source line under it.
    assert "warnings.warn(" not in split.stderr and ".py:" not in split.stderr
    assert not [line for line in split.stderr.splitlines() if line.startswith(" ")]

    # The printed gap is the one of the printed table (which leaves out the *_extra images).
    gap = float(re.search(r"largest class-share gap to overall\D*([\d.]+) pp", split.stdout)[1])
    splits = pd.read_csv(project_root / split.stdout.strip().splitlines()[-1])
    assert splits["split"].str.endswith("_extra").any()
    table = class_table(splits).drop(index="total")
    assert gap == pytest.approx(
        max((table[f"{s} %"] - table["all %"]).abs().max() for s in SPLITS), abs=0.005
    )

    write_dataset(data, TWENTY_ROWS)  # the metadata now lists 20 images of 20 lesions
    failed = run_cli(project_root, "split", *args)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {data / 'HAM10000_metadata.csv'} is too small to split")
    assert "nv 8 (8)" in error and "--set val_fraction=0.2 --set test_fraction=0.2" in error
    assert not list((project_root / "data" / "processed").rglob("splits.*"))

    cache = run_cli(project_root, "cache", *args)
    assert cache.returncode == 2 and "Traceback" not in cache.stderr
    assert "splits.csv not found; write it with `python -m ham_utils split`" in cache.stderr


def test_notebook_setup_shows_warnings_as_one_line(project_root):
    code = (
        "import warnings\n"
        "from ham_utils.errors import DataWarning\n"
        "from ham_utils.report.notebook import setup\n"
        "setup('')\n"
        "for _ in range(2):\n"  # a cell run twice shows its warning twice
        "    warnings.warn('3 of 9 rows dropped', DataWarning)\n"
    )
    env = {**os.environ, "HAM_PROJECT_ROOT": str(project_root)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert _warning_lines(result.stderr) == ["WARNING: DataWarning: 3 of 9 rows dropped"] * 2
