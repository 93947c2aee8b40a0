import os
import textwrap

import keras
import numpy as np
import pytest
from conftest import REPO, run_python
from matplotlib.figure import Figure

from ham_utils.explain.gradcam import GradCam, gradcam_grid, overlay
from ham_utils.model.build import build_model, feature_layer_name

SIZE = 64
TINY = 32
SQUARE = 8
CLASSES = 4  # of the tiny model


def tiny_model(logits_name: str = "logits") -> keras.Model:
    """A hand-wired classifier: class 1's logit is the mean of a "bright pixels" channel.

    conv1 has a bright detector (mean 3x3 brightness above 0.5) and a dark detector;
    ``features`` passes them on at a quarter of the resolution (8x8). Class 0's logit reads the
    dark channel, class 1's the bright one, class 2's nothing (its gradient is zero), class 3's
    bright minus dark (negative evidence everywhere but the square). The Dense layer is named
    ``logits_name``.
    """
    inputs = keras.Input((TINY, TINY, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(2, 3, strides=2, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(CLASSES, name=logits_name)(x)
    probabilities = keras.layers.Activation("softmax", name="probabilities")(logits)
    model = keras.Model(inputs, probabilities)

    mean = np.full((3, 3, 3), 1.0 / 27.0, dtype="float32")
    model.get_layer("conv1").set_weights(
        [np.stack([mean, -mean], axis=-1), np.array([-0.5, 0.5], dtype="float32")]
    )
    identity = np.zeros((3, 3, 2, 2), dtype="float32")
    identity[1, 1] = np.eye(2)
    model.get_layer("features").set_weights([identity, np.zeros(2, dtype="float32")])
    dense = np.array([[0.0, 4.0, 0.0, 4.0], [4.0, 0.0, 0.0, -4.0]], dtype="float32")
    model.get_layer(logits_name).set_weights([dense, np.zeros(CLASSES, dtype="float32")])
    return model


def square_images() -> np.ndarray:
    """Dark noisy images with a bright square: top-left in the first, bottom-right in the second."""
    rng = np.random.default_rng(0)
    images = rng.uniform(20, 60, (2, TINY, TINY, 3)).astype("float32")
    images[0, 2 : 2 + SQUARE, 2 : 2 + SQUARE] = 255.0
    images[1, -2 - SQUARE : -2, -2 - SQUARE : -2] = 255.0
    return images


def peak_quadrant(heatmap: np.ndarray) -> tuple[int, int]:
    """(row half, column half) of the heatmap's maximum: 0 top/left, 1 bottom/right."""
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return int(row >= heatmap.shape[0] / 2), int(col >= heatmap.shape[1] / 2)


def check_maps(heatmaps: np.ndarray, count: int, spatial: tuple[int, int]) -> None:
    assert heatmaps.shape == (count, *spatial)
    assert heatmaps.dtype == np.float32
    assert np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0
    assert heatmaps.max() <= 1.0


@pytest.fixture(scope="module")
def b0() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model("efficientnetb0", SIZE, weights="none")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def mixed_policy(request) -> str:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_efficientnet_heatmaps(b0, pixels):
    cam = GradCam(b0)
    assert cam.layer_name == "top_activation"
    spatial = tuple(b0.get_layer(feature_layer_name(b0)).output.shape[1:3])
    heatmaps, probabilities, classes = cam.heatmaps(pixels)
    check_maps(heatmaps, len(pixels), spatial)
    assert heatmaps.max() == pytest.approx(1.0)
    assert probabilities.shape == (len(pixels), 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, keras.ops.convert_to_numpy(b0(pixels)), atol=1e-5)
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=1))


def test_chosen_class_changes_the_map(b0, pixels):
    cam = GradCam(b0)
    maps_0, _, classes_0 = cam.heatmaps(pixels, 0)
    maps_3, _, classes_3 = cam.heatmaps(pixels, [3, 3, 3, 3])
    assert classes_0.tolist() == [0] * 4
    assert classes_3.tolist() == [3] * 4
    assert not np.allclose(maps_0, maps_3, atol=1e-3)


def test_grad_cam_finds_the_bright_square():
    heatmaps, probabilities, classes = GradCam(tiny_model()).heatmaps(square_images(), 1)
    check_maps(heatmaps, 2, (TINY // 4, TINY // 4))
    assert classes.tolist() == [1, 1]
    assert peak_quadrant(heatmaps[0]) == (0, 0)
    assert peak_quadrant(heatmaps[1]) == (1, 1)
    # Only the square lights up: the opposite quadrant stays cold.
    assert heatmaps[0, TINY // 8 :, TINY // 8 :].max() < 0.1
    assert heatmaps[1, : TINY // 8, : TINY // 8].max() < 0.1
    assert (probabilities[:, 0] > probabilities[:, 1]).all()  # the dark background wins


def test_negative_evidence_is_cut_by_relu():
    heatmaps, _, _ = GradCam(tiny_model()).heatmaps(square_images(), 3)
    assert peak_quadrant(heatmaps[0]) == (0, 0)
    # The background counts against class 3: zero after the ReLU, not a bright |negative|.
    np.testing.assert_array_equal(heatmaps[0, TINY // 8 :, :], 0.0)


def test_zero_gradient_gives_zero_map_and_dark_class_avoids_the_square():
    cam = GradCam(tiny_model())
    images = square_images()
    zero, _, _ = cam.heatmaps(images, 2)
    np.testing.assert_array_equal(zero, 0.0)
    dark, _, _ = cam.heatmaps(images, 0)
    assert dark[0, 0, 0] < 0.1  # the square's cell
    assert dark[0, -1, -1] > 0.5


def test_class_index_is_checked():
    cam = GradCam(tiny_model())
    with pytest.raises(ValueError, match="one index or 2"):
        cam.heatmaps(square_images(), [1, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cam.heatmaps(square_images(), CLASSES)


def test_model_without_logits_layer_uses_its_output():
    model = tiny_model(logits_name="scores")
    cam = GradCam(model)
    assert not cam.uses_logits
    assert cam.layer_name == "features"
    heatmaps, probabilities, _ = cam.heatmaps(square_images(), 1)
    assert peak_quadrant(heatmaps[0]) == (0, 0)
    assert peak_quadrant(heatmaps[1]) == (1, 1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_mixed_precision_heatmaps_are_finite(mixed_policy, pixels):
    keras.utils.set_random_seed(0)
    model = build_model("efficientnetb0", SIZE, weights="none")
    assert model.get_layer("top_activation").compute_dtype == mixed_policy.removeprefix("mixed_")
    heatmaps, probabilities, _ = GradCam(model).heatmaps(pixels)
    check_maps(heatmaps, len(pixels), (2, 2))
    assert heatmaps.max() > 0.0
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)


def test_overlay():
    image = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    heatmap = np.linspace(0, 1, 20, dtype="float32").reshape(4, 5)
    blended = overlay(image, heatmap)
    assert blended.shape == image.shape
    assert blended.dtype == np.uint8
    assert not np.array_equal(blended, image)
    np.testing.assert_array_equal(overlay(image, heatmap, alpha=0.0), image)


def test_overlay_is_rgb():
    black = np.zeros((8, 8, 3), dtype=np.uint8)
    hot = overlay(black, np.ones((2, 2), dtype="float32"), alpha=1.0)
    assert hot[..., 0].min() > 100  # JET's top is red: R high, B low, in RGB order
    assert hot[..., 2].max() < 50


def test_gradcam_grid_writes_png(tmp_path):
    images = square_images().astype(np.uint8)
    heatmaps, _, _ = GradCam(tiny_model()).heatmaps(images, 1)
    path = tmp_path / "grid.png"
    figure = gradcam_grid([*images, images[0]], [*heatmaps, heatmaps[0]], ["a", "b", "c"], 2, path)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 4
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


JAX_SCRIPT = textwrap.dedent(
    """
    import sys

    import keras
    import numpy as np

    tests_dir, weights, images, out = sys.argv[1:]
    sys.path.insert(0, tests_dir)
    from test_gradcam import tiny_model

    from ham_utils.explain.gradcam import GradCam

    assert keras.backend.backend() == "jax", keras.backend.backend()
    model = tiny_model()
    model.load_weights(weights)
    cam = GradCam(model)
    maps, probabilities, classes = cam.heatmaps(np.load(images), 1)
    predicted, _, predicted_classes = cam.heatmaps(np.load(images))
    np.savez(
        out,
        maps=maps,
        probabilities=probabilities,
        predicted=predicted,
        predicted_classes=predicted_classes,
    )
    """
)


def test_jax_backend_matches_tensorflow(tmp_path):
    model = tiny_model()
    rng = np.random.default_rng(3)
    # Perturb the hand-set weights so that every weight shapes the gradients.
    model.set_weights(
        [w + rng.normal(0, 0.02, w.shape).astype("float32") for w in model.get_weights()]
    )
    weights = tmp_path / "tiny.weights.h5"
    model.save_weights(weights)
    images = square_images()
    np.save(tmp_path / "images.npy", images)
    cam = GradCam(model)
    maps, probabilities, _ = cam.heatmaps(images, 1)
    predicted, _, predicted_classes = cam.heatmaps(images)

    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    out = tmp_path / "jax.npz"
    args = [str(REPO / "tests"), str(weights), str(tmp_path / "images.npy"), str(out)]
    result = run_python("-c", JAX_SCRIPT, *args, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    jax = np.load(out)
    check_maps(jax["maps"], 2, (TINY // 4, TINY // 4))
    assert peak_quadrant(jax["maps"][0]) == (0, 0)
    assert peak_quadrant(jax["maps"][1]) == (1, 1)
    np.testing.assert_allclose(jax["maps"], maps, atol=1e-4)
    np.testing.assert_allclose(jax["probabilities"], probabilities, atol=1e-5)
    np.testing.assert_array_equal(jax["predicted_classes"], predicted_classes)
    np.testing.assert_allclose(jax["predicted"], predicted, atol=1e-4)
