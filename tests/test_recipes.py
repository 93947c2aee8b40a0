"""The GPU recipes (``params/b3.yaml``, ``params/b4.yaml``) in miniature on the CPU.

Each recipe runs as a user runs it on Colab: ``train``, ``evaluate`` and ``gradcam`` on the
command line, with every setting of its file except the size (random weights, as ImageNet
weights cannot be downloaded here; 32 px; 60 synthetic images; one epoch per phase). Once
under ``mixed_bfloat16`` and once with XLA: what the A100 turns on and a CPU run leaves off.
Tracing an EfficientNet-B3/B4 backward pass takes minutes on 2 CPU cores: ``make test`` runs
the B3 recipe under ``mixed_bfloat16`` with EfficientNetB0 in place of B3 (the same Keras
application, scaled down: every other setting of the file, in about half the time), and
``make check-recipes`` the four as they are.
"""

import json
import math
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli
from PIL import Image

from ham_utils.config import load_params
from ham_utils.evaluation.evaluate import FIGURES
from ham_utils.runs import METRICS_FILE, PREDICTIONS_FILE, evaluation_at

RECIPES = ("b3", "b4")
# What `make test` runs of them: the B3 recipe on the smallest backbone of its family. The rest
# only in `make check-recipes` (the `recipes` marker): minutes each.
IN_MAKE_TEST = pytest.param("b3", {"backbone": "efficientnetb0"}, id="b3-on-b0")
MINIATURE = {
    "weights": "none",
    "demo_images": 60,
    "demo_width": 48,
    "demo_height": 36,
    "image_size": 32,
    "batch_size": 16,
    "warmup_epochs": 1,
    "finetune_epochs": 1,
}


def cli_overrides(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def train_evaluate_explain(root: Path, recipe: str, **settings: str) -> Path:
    """Train the miniature recipe, evaluate it, draw its Grad-CAM grids; check what each
    step wrote and return the run folder."""
    overrides = {**MINIATURE, **settings}
    recipe_file = f"params/{recipe}.yaml"
    trained = run_cli(root, "train", "--params", recipe_file, *cli_overrides(overrides))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = Path(trained.stdout.strip().splitlines()[-1])
    assert run_dir.parent == root / "runs"
    written = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert written == load_params(REPO / recipe_file, overrides).as_dict()
    check_training(run_dir)

    evaluated = run_cli(root, "evaluate", "--run", str(run_dir))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    check_evaluation(run_dir)

    explained = run_cli(root, "gradcam", "--run", str(run_dir))
    assert explained.returncode == 0, explained.stderr[-3000:]
    check_gradcam(run_dir, [Path(line) for line in explained.stdout.split()])
    return run_dir


def check_training(run_dir: Path) -> None:
    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["epochs_done"] == 2
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert history["phase"].tolist() == [1, 2]
    assert np.isfinite(history[["loss", "val_loss", "val_balanced_accuracy"]]).all().all()
    assert (run_dir / "best.keras").is_file() and (run_dir / "last.keras").is_file()


def check_evaluation(run_dir: Path) -> None:
    evaluation = evaluation_at(run_dir, "best").root
    metrics = json.loads((evaluation / METRICS_FILE).read_text())
    splits = pd.read_csv(run_dir / "splits.csv")
    assert metrics["n_images"] == (splits["split"] == "test").sum()
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "temperature"):
        assert math.isfinite(metrics[name]), name
    predictions = pd.read_csv(evaluation / PREDICTIONS_FILE)
    probabilities = predictions.filter(like="p_").to_numpy()
    assert len(predictions) == metrics["n_images"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    for figure in FIGURES:
        assert (evaluation / "figures" / f"{figure}.png").is_file(), figure


def check_gradcam(run_dir: Path, printed: list[Path]) -> None:
    """One grid per class of the test split, each a readable image."""
    predictions = pd.read_csv(evaluation_at(run_dir, "best").predictions_file())
    grids = evaluation_at(run_dir, "best").gradcam_dir
    expected = {grids / f"gradcam_{name}.png" for name in predictions["true"]}
    assert set(printed) == expected
    for path in printed:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 100


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "backbone"),
    [IN_MAKE_TEST, *(pytest.param(r, {}, marks=pytest.mark.recipes, id=r) for r in RECIPES)],
)
def test_recipe_runs_in_mixed_bfloat16(project_root, recipe, backbone):
    from ham_utils.model.build import load_model

    run_dir = train_evaluate_explain(
        project_root, recipe, mixed_precision="mixed_bfloat16", **backbone
    )
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["precision_policy"] == "mixed_bfloat16"

    model = load_model(run_dir / "best.keras")  # under this process's float32 global policy
    top_conv = model.get_layer("top_conv")
    assert top_conv.dtype_policy.name == "mixed_bfloat16"
    assert (top_conv.compute_dtype, top_conv.variable_dtype) == ("bfloat16", "float32")
    assert model.get_layer("top_activation").output.dtype == "bfloat16"
    for name in ("logits", "probabilities"):
        assert model.get_layer(name).output.dtype == "float32", name
    assert keras.ops.convert_to_numpy(model(np.zeros((1, 32, 32, 3)))).dtype == np.float32


@pytest.mark.slow
@pytest.mark.recipes
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_with_xla(project_root, recipe):
    run_dir = train_evaluate_explain(project_root, recipe, jit_compile="true")
    with zipfile.ZipFile(run_dir / "last.keras") as saved:
        compiled = json.loads(saved.read("config.json"))["compile_config"]
    assert compiled["jit_compile"] is True
