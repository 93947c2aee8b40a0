"""Export a run's model as TFLite (LiteRT), ONNX or a TensorFlow SavedModel.

An exported model takes what the Keras model takes: a float32 batch (N, S, S, 3) of RGB pixels
in 0..255 (it rescales inside), resized as the run's images were, and gives the softmax
probabilities in the run's class order. A JSON sidecar next to it says so. The conversion is
Keras' own ``model.export``; after writing, the file is run in its own runtime (the LiteRT
interpreter, ONNX Runtime, TensorFlow) on check images (synthetic demo images and noisy
colours) and compared with the Keras model. A difference of ``TOLERANCE`` or more is an error
and nothing is written.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ham_utils.config import CLASSES, ParamsError
from ham_utils.errors import DataError

if TYPE_CHECKING:
    from ham_utils.runs import Run

FORMATS: tuple[str, ...] = ("tflite", "onnx", "savedmodel")
TOLERANCE = 1e-3  # largest accepted absolute difference of a probability
EXPORT_DIR = "export"
ARTIFACTS = {"tflite": "model.tflite", "onnx": "model.onnx", "savedmodel": "savedmodel"}
KERAS_FORMATS = {"tflite": "litert", "onnx": "onnx", "savedmodel": "tf_saved_model"}
RUNTIMES = {"tflite": "LiteRT interpreter", "onnx": "ONNX Runtime", "savedmodel": "TensorFlow"}
# Modules each format needs beyond TensorFlow, as (module, pip package).
REQUIRED = {"onnx": (("tf2onnx", "tf2onnx"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"))}
PREPROCESSING = (
    "decode as 8-bit RGB with the EXIF orientation applied; resize to image_size x image_size "
    "with Pillow's bicubic filter ('squash': the whole frame; 'center_crop': the largest "
    "centred square first), as ham_utils.data.images.load_image does; feed float32 pixels 0..255"
)


class ExportError(DataError):
    """An export that cannot be written here, or that does not match the Keras model."""


@dataclass(frozen=True)
class Exported:
    """A written export: the model file (or SavedModel folder), its sidecar, and the check."""

    path: Path
    sidecar: Path
    max_difference: float


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ParamsError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``; ``savedmodel/`` -> ``savedmodel.json``."""
    return path.with_name(path.name + ".json")


def format_of(path: Path) -> str:
    """The export format of a written file or folder."""
    if path.is_dir():
        return "savedmodel"
    for fmt in ("tflite", "onnx"):
        if path.suffix == f".{fmt}":
            return fmt
    raise ParamsError(f"{path} is neither a .tflite or .onnx file nor a SavedModel folder")


def demo_images(size: int, seed: int = 0) -> np.ndarray:
    """One synthetic demo image per class, uint8 (7, size, size, 3)."""
    from ham_utils.data.synthetic import render_lesion_image

    rng = np.random.default_rng(seed)
    return np.stack([render_lesion_image(dx, rng, size, size) for dx in CLASSES])


def check_images(size: int, seed: int = 0) -> np.ndarray:
    """The default check inputs, uint8 (15, size, size, 3): the demo images, and the 8 corners
    of the RGB cube with noise, on which even an untrained model's outputs differ."""
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
    noise = np.random.default_rng(seed).normal(0, 40, (8, size, size, 3))
    noisy = np.clip(corners[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return np.concatenate([demo_images(size, seed), noisy])


def _require(fmt: str) -> None:
    missing = [pkg for module, pkg in REQUIRED.get(fmt, ()) if not importlib.util.find_spec(module)]
    if missing:
        raise ExportError(
            f"{fmt} export needs the package(s) {', '.join(missing)}; install them with "
            f"`pip install {' '.join(missing)}` (see requirements.txt)"
        )


class ExportedModel:
    """An exported model loaded in its own runtime."""

    def __init__(self, path: Path, fmt: str | None = None) -> None:
        self.path = Path(path)
        self.format = check_format(fmt) if fmt else format_of(self.path)
        _require(self.format)
        loader = {"tflite": _load_tflite, "onnx": _load_onnx, "savedmodel": _load_savedmodel}
        self.input_name, self.output_name, self._predict = loader[self.format](self.path)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, K) of a batch of (N, S, S, 3) pixels in 0..255 (uint8 or float)."""
        return np.asarray(self._predict(np.asarray(images, dtype=np.float32)))


Loaded = tuple[str, str, Callable[[np.ndarray], Any]]


def _tflite_interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TF 2.21 still has tf.lite.Interpreter, deprecated in favour of LiteRT
        import tensorflow as tf

        Interpreter = getattr(tf.lite, "Interpreter", None)
        if Interpreter is None:
            raise ExportError(
                "running a .tflite model needs the LiteRT interpreter: pip install ai-edge-litert"
            ) from None
    return Interpreter(model_path=str(path))


def _load_tflite(path: Path) -> Loaded:
    runner = _tflite_interpreter(path).get_signature_runner()
    (input_name,) = runner.get_input_details()
    (output_name,) = runner.get_output_details()
    return input_name, output_name, lambda x: runner(**{input_name: x})[output_name]


def _load_onnx(path: Path) -> Loaded:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(
            f"{path} has inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in outputs]}; expected one image input and one output"
        )
    input_name, output_name = inputs[0].name, outputs[0].name
    return input_name, output_name, lambda x: session.run([output_name], {input_name: x})[0]


def _load_savedmodel(path: Path) -> Loaded:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    (input_name,) = serve.structured_input_signature[1]
    (output_name,) = serve.structured_outputs

    def predict(x: np.ndarray) -> Any:
        # Refers to `loaded`: the function's variables live only as long as that object.
        return loaded.signatures["serving_default"](**{input_name: tf.constant(x)})[output_name]

    return input_name, output_name, predict


def keras_probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    """The Keras model's probabilities (N, K) of (N, S, S, 3) pixels in 0..255."""
    return np.asarray(model(np.asarray(images, dtype=np.float32), training=False))


def max_difference(model: Any, exported: ExportedModel, images: np.ndarray) -> float:
    """Largest absolute difference between the Keras model's and the export's probabilities."""
    return float(np.abs(exported.predict(images) - keras_probabilities(model, images)).max())


def compute_in_float32(model: Any) -> None:
    """Switch every layer of ``model`` to float32 computation, in place.

    A run trained under mixed precision computes in float16/bfloat16, which ONNX and LiteRT
    kernels mostly lack; its variables are float32 already, so only the compute type changes.
    """
    from ham_utils.model.build import all_layers

    for layer in all_layers(model):
        if layer.dtype_policy.name != "float32":
            layer.dtype_policy = "float32"


@contextmanager
def _normalization_as_constants(model: Any) -> Iterator[None]:
    """Hold the fixed mean and variance of Normalization layers as NumPy arrays while tracing.

    EfficientNets normalise with a Normalization layer built from the ImageNet statistics,
    which it keeps as eager tensors. A traced function captures those as extra inputs, and
    tf2onnx (``from_function``, used by Keras) turns every captured tensor into an ONNX graph
    input that the caller would have to feed. As NumPy arrays they are traced as constants.
    """
    import keras

    from ham_utils.model.build import all_layers

    saved = []
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            saved.append((layer, layer.mean, layer.variance))
            layer.mean, layer.variance = np.asarray(layer.mean), np.asarray(layer.variance)
    try:
        yield
    finally:
        for layer, mean, variance in saved:
            layer.mean, layer.variance = mean, variance


def _write(model: Any, fmt: str, path: Path) -> None:
    if fmt != "onnx":
        model.export(str(path), format=KERAS_FORMATS[fmt], verbose=False)
        return
    tf2onnx_log = logging.getLogger("tf2onnx")
    level = tf2onnx_log.level
    tf2onnx_log.setLevel(logging.WARNING)  # it logs every optimiser pass at INFO
    try:
        with _normalization_as_constants(model), warnings.catch_warnings():
            # Keras' patch of tf2onnx for NumPy 2 probes np.object, which NumPy warns about.
            warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
            model.export(str(path), format=KERAS_FORMATS[fmt], verbose=False)
    finally:
        tf2onnx_log.setLevel(level)


def check_destination(out_dir: Path) -> None:
    """Make sure the export can be written into the folder ``out_dir`` (created if missing):
    a file of that name, or a folder that cannot be written, is an :class:`ExportError`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(
            f"{out_dir} is a file, not a folder; give --out a folder (created if missing), "
            "into which the model and its sidecar are written"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".export-probe-"):
            pass
    except OSError as e:
        raise ExportError(
            f"cannot write the export into {out_dir} ({e.strerror or e}); give --out a folder "
            "you can write to"
        ) from None


def _replace(src: Path, dst: Path) -> None:
    if dst.is_dir():
        shutil.rmtree(dst)
    os.replace(src, dst)


def export_run(
    run: Run,
    fmt: str,
    out: Path | None = None,
    which: str = "best",
    images: np.ndarray | None = None,
    model: Any = None,
) -> Exported:
    """Export the ``which`` model of ``run`` into the folder ``out`` (default ``run/export``).

    Writes ``model.tflite``, ``model.onnx`` or ``savedmodel/``, plus a ``.json`` sidecar, and
    returns their paths with the largest probability difference to the Keras model measured on
    ``images`` (uint8 (N, S, S, 3); default :func:`check_images`). ``model``: the run's model
    if already loaded; it is switched to float32 computation.
    """
    import keras

    check_format(fmt)
    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"export converts through TensorFlow, but the Keras backend is "
            f"{keras.backend.backend()!r}; run it with KERAS_BACKEND=tensorflow"
        )
    _require(fmt)
    out_dir = Path(out) if out is not None else run.path / EXPORT_DIR
    check_destination(out_dir)  # before minutes of loading and converting
    size = run.params.image_size
    images = check_images(size) if images is None else np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"images must have shape (N, {size}, {size}, 3), got {images.shape}")
    if model is None:
        model = run.load_model(which)
    compute_in_float32(model)
    expected = keras_probabilities(model, images)  # a model must have been called to export

    target = out_dir / ARTIFACTS[fmt]
    # Written and checked in a temporary folder first: a failed export leaves nothing behind.
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        written = Path(tmp) / target.name
        _write(model, fmt, written)
        try:
            exported = ExportedModel(written, fmt)
            difference = float(np.abs(exported.predict(images) - expected).max())
        except ExportError:
            raise
        except Exception as err:  # each runtime has its own exception types for a bad model
            raise ExportError(
                f"the {fmt} export of {run.path.name} does not run in the {RUNTIMES[fmt]} "
                f"({type(err).__name__}: {err}); it was not written"
            ) from err
        if not difference < TOLERANCE:  # also catches NaN
            raise ExportError(
                f"the {fmt} export of {run.path.name} differs from the Keras model by up to "
                f"{difference:.2g} in probability (limit {TOLERANCE:g}) in the "
                f"{RUNTIMES[fmt]}; it was not written"
            )
        info = _sidecar(run, which, fmt, target, exported, difference, len(images))
        del exported  # release the runtime first: the LiteRT interpreter keeps the file mapped
        _replace(written, target)
    sidecar = sidecar_path(target)
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    return Exported(target, sidecar, difference)


def _sidecar(
    run: Run,
    which: str,
    fmt: str,
    target: Path,
    exported: ExportedModel,
    difference: float,
    n_images: int,
) -> dict[str, Any]:
    size = run.params.image_size
    return {
        "format": fmt,
        "model": target.name,
        "run": run.name,
        "which": which,
        "classes": list(run.classes),
        "image_size": size,
        "resize_mode": run.params.resize_mode,
        "input": {
            "name": exported.input_name,
            "shape": [None, size, size, 3],
            "dtype": "float32",
            "channels": "RGB",
            "range": [0, 255],
        },
        "output": {
            "name": exported.output_name,
            "shape": [None, len(run.classes)],
            "values": "softmax probabilities in the order of classes",
        },
        "preprocessing": PREPROCESSING,
        "runtime": RUNTIMES[fmt],
        "max_abs_difference": difference,
        "checked_images": n_images,
        "trained_on_synthetic_data": run.synthetic,
    }
