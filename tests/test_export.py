import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from ham_utils.config import CLASSES, ParamsError
from ham_utils.runs import open_run
from ham_utils.serve.export import (
    ARTIFACTS,
    FORMATS,
    ExportError,
    check_images,
    export_run,
    sidecar_path,
)


@pytest.fixture(scope="module")
def run(tiny_run):
    return open_run(tiny_run)


@pytest.fixture(scope="module")
def model(run):
    return run.load_model()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """The export's own check images, uint8 (15, 32, 32, 3): demo images, on which the tiny
    model's probabilities are all near 1/7, and noisy colours, on which they range from ~0 to
    ~0.99. Other seeds can draw a colour on which this random-weight model is so sensitive
    that float32 rounding alone moves a probability by about 1e-3: there, even its SavedModel
    run by TensorFlow itself differs from Keras by 7e-4."""
    return check_images(32)


@pytest.fixture(scope="module")
def expected(model, images) -> np.ndarray:
    return np.asarray(model(images.astype(np.float32), training=False))


def run_tflite(path: Path, pixels: np.ndarray) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], pixels)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    return session.run(None, {inp.name: pixels})[0]


def run_savedmodel(path: Path, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    (probabilities,) = serve(**{name: tf.constant(pixels)}).values()
    return probabilities.numpy()


RUNTIMES = {"tflite": run_tflite, "onnx": run_onnx, "savedmodel": run_savedmodel}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_export_gives_the_keras_probabilities_in_its_runtime(
    fmt, run, model, images, expected, tmp_path
):
    exported = export_run(run, fmt, tmp_path, model=model)
    assert exported.path == tmp_path / ARTIFACTS[fmt] and exported.path.exists()
    assert exported.max_difference < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [exported.path.name, exported.sidecar.name]
    )  # no temporary folder left behind

    probabilities = RUNTIMES[fmt](exported.path, images.astype(np.float32))
    assert probabilities.shape == (len(images), len(CLASSES))
    assert np.abs(probabilities - expected).max() < 1e-3
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The check means something only when the images get clearly different probabilities.
    assert np.ptp(probabilities, axis=0).max() > 0.5

    info = json.loads(sidecar_path(exported.path).read_text())
    assert info["classes"] == list(run.classes) and info["image_size"] == 32
    assert info["input"]["range"] == [0, 255] and info["input"]["dtype"] == "float32"
    assert info["resize_mode"] == run.params.resize_mode and info["format"] == fmt
    assert info["max_abs_difference"] == exported.max_difference


def test_an_export_that_does_not_match_is_refused_and_not_written(
    run, model, images, expected, tmp_path, monkeypatch
):
    class Off:  # an export whose probabilities are 0.002 off
        def __init__(self, path, fmt):
            self.input_name = self.output_name = "x"

        def predict(self, pixels):
            return expected[: len(pixels)] + 0.002

    monkeypatch.setattr("ham_utils.serve.export._write", lambda model, fmt, path: path.touch())
    monkeypatch.setattr("ham_utils.serve.export.ExportedModel", Off)
    with pytest.raises(ExportError, match=r"differs from the Keras model by up to 0\.002"):
        export_run(run, "onnx", tmp_path, model=model, images=images[:2])
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_is_refused_with_the_choices(run):
    with pytest.raises(ParamsError, match="choose one of tflite, onnx, savedmodel"):
        export_run(run, "pb")


def test_the_command_line_refuses_an_unknown_format(capsys):
    from ham_utils.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["export", "--format", "pb"])
    assert exit_info.value.code == 2 and "invalid choice: 'pb'" in capsys.readouterr().err


def test_check_images_of_the_wrong_size_are_refused(run, model):
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
        export_run(run, "onnx", model=model, images=np.zeros((2, 64, 64, 3), np.uint8))


def test_a_mixed_precision_model_is_exported_computing_in_float32(run, tmp_path):
    # ONNX Runtime refuses the bfloat16 graph of a model left in mixed precision.
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, dtype="mixed_bfloat16")(inputs)
    x = keras.layers.GlobalAveragePooling2D(dtype="mixed_bfloat16")(x)
    outputs = keras.layers.Dense(7, activation="softmax", dtype="mixed_bfloat16")(x)
    model = keras.Model(inputs, outputs)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.uint8)
    assert model(pixels).dtype == "bfloat16"
    small = dataclasses.replace(run, params=dataclasses.replace(run.params, image_size=8))
    exported = export_run(small, "onnx", tmp_path, model=model, images=pixels)
    assert model(pixels).dtype == "float32" and exported.max_difference < 1e-3
    assert all(w.dtype == "float32" for w in model.weights)


@pytest.mark.slow
def test_export_from_the_command_line(tiny_run, tmp_path):
    result = run_cli(tmp_path, "export", "--run", str(tiny_run), "--format", "onnx")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == tiny_run / "export" / "model.onnx" and path.is_file()
    assert sidecar_path(path).is_file()
    assert "max abs difference to the Keras model" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_pretrained_lite_run_exports_with_the_keras_probabilities(fmt, tiny_lite_run, tmp_path):
    lite_run = open_run(tiny_lite_run)
    exported = export_run(lite_run, fmt, tmp_path)
    assert exported.max_difference < 1e-3
    pixels = check_images(64).astype(np.float32)
    expected = np.asarray(lite_run.load_model()(pixels, training=False))
    assert np.abs(RUNTIMES[fmt](exported.path, pixels) - expected).max() < 1e-3


def test_a_destination_that_cannot_be_written_is_refused_before_the_model_is_loaded(
    tiny_run, tmp_path, monkeypatch, capsys
):
    from ham_utils.cli import main
    from ham_utils.runs import Run

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(Run, "load_model", no_loading)
    existing = tmp_path / "model.tflite"
    existing.write_bytes(b"an earlier export")
    args = ["export", "--run", str(tiny_run), "--format", "tflite", "--out"]
    assert main([*args, str(existing)]) == 2
    assert f"{existing} is a file, not a folder" in capsys.readouterr().err
    assert existing.read_bytes() == b"an earlier export"
    assert main([*args, str(existing / "inside")]) == 2
    assert f"cannot write the export into {existing / 'inside'}" in capsys.readouterr().err
