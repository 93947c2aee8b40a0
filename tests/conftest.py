import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


# Longest first (about 9, 5, 4 and 3.5 minutes on 2 CPU cores, 7 December 2026).
LONGEST_FILES = ("test_report.py", "test_train.py", "test_recipes.py", "test_sweep.py")


def pytest_collection_modifyitems(config, items) -> None:
    """The longest test files first, in that order: run by ``make test`` on two workers (a
    file each at a time), they start early and the short files fill in after."""
    rank = {name: index for index, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


def project_env(root: Path) -> dict[str, str]:
    """This process's environment with every project output under ``root``. Without
    MLFLOW_TRACKING_URI: ``mlflow.set_tracking_uri`` in a test exports it, and a later test's
    subprocess would then track into that test's store."""
    env = {**os.environ, "HAM_PROJECT_ROOT": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_python(
    *argv: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python ARGV`` in the repository folder, output captured as text."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli_process(root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m ham_utils ARGS`` in a new process with every output under ``root``: for
    what needs a process of its own (another process holding a lock, a clean start-up)."""
    return run_python("-m", "ham_utils", *args, env=project_env(root), timeout=timeout)


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the command line ``python -m ham_utils ARGS`` in this process, as a new process would
    run it (in the repository folder, every output under ``root``, INFO lines and warnings on
    stderr), and give back what it returned and printed. A new process would spend about ten
    of its seconds importing TensorFlow on this machine; this one has it already. What the
    command changes for the process (environment, Keras' global precision policy, warning
    filters, logging) is put back afterwards."""
    import contextlib
    import logging
    import traceback
    import warnings

    import keras

    from ham_utils.cli import main

    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    saved_policy = keras.mixed_precision.global_policy()
    root_logger = logging.getLogger()
    saved_level = root_logger.level
    stdout, stderr = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    os.environ.update(HAM_PROJECT_ROOT=str(root))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(REPO)
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            warnings.resetwarnings()  # a new process's filters: each warning shown again
            warnings.simplefilter("default")
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors and --help
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # what Python prints for an uncaught exception, exit status 1
                traceback.print_exc()
                code = 1
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(saved_level)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        keras.mixed_precision.set_global_policy(saved_policy)
    return subprocess.CompletedProcess(
        ["python", "-m", "ham_utils", *args], code, stdout.getvalue(), stderr.getvalue()
    )


def run_until_killed(
    argv: list[str],
    env: dict[str, str],
    state_files: Callable[[], list[Path]],
    ready: Callable[[dict], bool],
    stderr: Path | None = None,
    timeout: float = 400,
) -> Path | None:
    """Start ``python ARGV``, poll ``state_files()`` (run folders' ``state.json``) until one
    whose state is ``ready``, then kill the process and its children (SIGKILL to its process
    group, as a machine that dies would). The state file that was ready, or None if none got
    there before the process ended or ``timeout`` passed. ``stderr``: a file for its output."""
    with open(stderr or os.devnull, "w") as err:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        found = None
        while found is None and time.monotonic() < deadline and process.poll() is None:
            for path in state_files():
                try:
                    state = json.loads(path.read_text())
                except (OSError, ValueError):  # being written
                    continue
                if ready(state):
                    found = path
                    break
            time.sleep(0.1)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return found


def lesion(width: int = 120, height: int = 90, seed: int = 0) -> np.ndarray:
    """A brown blob on skin tone with noise: image-like, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (0.25 * min(width, height)) ** 2
    image = np.empty((height, width, 3))
    image[:] = rng.uniform(150, 230, 3)
    image[blob] = rng.uniform(40, 120, 3)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype("uint8")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (decoding would need gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture
def project_root(tmp_path) -> Path:
    """An empty project folder for outputs (data/, runs/, mlflow.db)."""
    root = tmp_path / "project"
    root.mkdir()
    return root


def make_tiny_run(
    run_dir: Path, backbone: str = "", weights: str = "none", image_size: int = 32
) -> Path:
    """A finished run folder as training writes it, without minutes of training: the model of
    ``params/smoke.yaml`` (or ``backbone``) with a random head.

    Its batch-norm statistics are set from one batch of varied images: with the initial
    statistics a random network gives almost exactly 1/7 for every image, which would hide
    wrong outputs in comparisons. Pretrained backbones keep their own statistics.
    """
    import json

    import keras
    import yaml

    from ham_utils.config import CLASSES, load_params
    from ham_utils.model.build import all_layers, build_model

    overrides = {"image_size": image_size, "track": False, "weights": weights}
    if backbone:
        overrides["backbone"] = backbone
    params = load_params(REPO / "params" / "smoke.yaml", overrides)
    run_dir.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    model = build_model(params.backbone, image_size, weights, params.head, params.dropout)
    if weights == "none":
        rng = np.random.default_rng(0)
        colours = rng.uniform(0, 255, (64, 1, 1, 3))
        noise = rng.normal(0, 40, (64, image_size, image_size, 3))
        images = np.clip(colours + noise, 0, 255).astype("float32")
        norms = [
            layer
            for layer in all_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        for layer in norms:
            layer.momentum, momentum = 0.0, layer.momentum  # next call copies batch statistics
        model(images, training=True)
        for layer in norms:
            layer.momentum = momentum
    logits = model.get_layer("logits")  # soften, so no class takes all the probability
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 0.1, bias])
    model.save(run_dir / "best.keras")
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params.as_dict(), sort_keys=False))
    (run_dir / "classes.json").write_text(json.dumps(list(CLASSES)))
    (run_dir / "splits.json").write_text(json.dumps({"synthetic": True}))
    (run_dir / "state.json").write_text(json.dumps({"finished": True}))
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """An EfficientNetB0 at 32 px with random weights: what the app, ``predict`` and
    ``export`` read. B0, not the demo's Lite0: from random weights, with batch statistics set
    as above, B0 gives images clearly different probabilities and Lite0 almost the same."""
    return make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny", "efficientnetb0")


@pytest.fixture(scope="session")
def tiny_lite_run(tmp_path_factory) -> Path:
    """An EfficientNet-Lite0 at 64 px with its ImageNet backbone and a random head."""
    return make_tiny_run(
        tmp_path_factory.mktemp("runs") / "lite", "efficientnet_lite0", "imagenet", 64
    )


# Images per class; the same number in every split, so that the model is traced for one
# batch shape only.
PER_SPLIT = {"train": 2, "val": 2, "test": 2}


def write_split(run_dir: Path, data_dir: Path) -> None:
    """Images of every class in each split under ``data_dir``, and the run's splits.csv."""
    import pandas as pd

    from ham_utils.config import CLASSES

    images = data_dir / "images"
    images.mkdir(parents=True)
    rows = []
    for split, count in PER_SPLIT.items():
        for label, dx in enumerate(CLASSES):
            for i in range(count):
                image_id = f"ISIC_{len(rows):07d}"
                Image.fromarray(lesion(40, 30, seed=len(rows))).save(images / f"{image_id}.jpg")
                rows.append(
                    {
                        "lesion_id": f"HAM_{len(rows):07d}",
                        "image_id": image_id,
                        "dx": dx,
                        "dx_type": "histo",
                        "age": 30.0 + 5 * i,
                        "sex": ("male", "female")[i % 2],
                        "localization": "back",
                        "label": label,
                        "split": split,
                        "path": f"images/{image_id}.jpg",
                    }
                )
    pd.DataFrame(rows).to_csv(run_dir / "splits.csv", index=False)
