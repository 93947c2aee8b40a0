import keras
import numpy as np
import pytest

from ham_utils.train.augment import MixUpCutMix, RandomAffine, build_augmenter

NUM_CLASSES = 7


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def images() -> np.ndarray:
    """Eight 32x32 images with structure (a gradient plus noise) in 0..255."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 32, dtype="float32")
    base = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((32, 32), 128.0)], axis=-1)
    noise = rng.normal(0, 20, (8, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype("float32")


def _flat_images(batch: int, size: int = 16) -> np.ndarray:
    """Image i is a flat grey of value 10 * (i + 1), so every pasted pixel can be traced."""
    values = 10.0 * np.arange(1, batch + 1, dtype="float32")
    return np.broadcast_to(values[:, None, None, None], (batch, size, size, 3)).copy()


def _one_hot(batch: int) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype="float32")[np.arange(batch) % NUM_CLASSES]


@pytest.mark.parametrize("rand_augment", [False, True])
def test_augmenter_keeps_shape_dtype_and_range_and_changes_images(images, rand_augment):
    augmenter = build_augmenter(rand_augment=rand_augment, seed=1)
    out = _np(augmenter(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3
    assert np.abs(out - images).mean() > 1.0
    np.testing.assert_array_equal(_np(augmenter(images, training=False)), images)


def test_zero_and_false_leave_layers_out():
    layers = build_augmenter(rotation=0, contrast=0).layers
    assert [type(layer).__name__ for layer in layers] == ["RandomAffine", "RandomBrightness"]
    geometry = layers[0].get_config()
    assert geometry["flip"] is True and geometry["rotation"] == 0.0
    assert geometry["zoom"] == 0.15 and geometry["shift"] == 0.1
    off = build_augmenter(flip=False, rotation=0, zoom=0, shift=0, brightness=0, contrast=0)
    assert off.layers == []
    for setting in ({"flip": True}, {"rotation": 0.1}, {"zoom": 0.1}, {"shift": 0.1}):
        only = {"flip": False, "rotation": 0, "zoom": 0, "shift": 0, **setting}
        names = [
            type(layer).__name__
            for layer in build_augmenter(**only, brightness=0, contrast=0).layers
        ]
        assert names == ["RandomAffine"], setting


@pytest.mark.parametrize(
    "settings",
    [
        {"flip": True},
        {"flip": False, "rotation": 0.25},
        {"flip": False, "zoom": 0.3},
        {"flip": False, "shift": 0.1},
    ],
)
def test_a_zero_setting_leaves_its_part_out_of_the_matrix(settings):
    """Each part of the affine matrix is drawn in range, and only where it is asked for."""
    layer = RandomAffine(**settings, seed=0)
    height, width = 20, 30
    a0, a1, a2, b0, b1, b2, c0, c1 = _np(layer.transform_matrices(256, height, width)).T
    np.testing.assert_array_equal(c0, 0.0)
    np.testing.assert_array_equal(c1, 0.0)
    linear = np.stack([[a0, a1], [b0, b1]]).transpose(2, 0, 1)
    if settings.get("rotation"):
        angle = np.arctan2(b0, b1)
        assert np.abs(angle).max() <= settings["rotation"] * 2 * np.pi + 1e-6
        assert np.abs(angle).max() > 0.8 * settings["rotation"] * 2 * np.pi
        np.testing.assert_allclose(np.linalg.det(linear), 1.0, atol=1e-5)
    else:
        np.testing.assert_array_equal(a1, 0.0)
        np.testing.assert_array_equal(b0, 0.0)
    if settings.get("zoom"):
        zoom = settings["zoom"]
        np.testing.assert_allclose(a0, b1)
        assert a0.min() >= 1 - zoom - 1e-6 and a0.max() <= 1 + zoom + 1e-6
        assert a0.max() - a0.min() > zoom
    elif not settings.get("rotation"):
        np.testing.assert_array_equal(np.abs(a0), 1.0)
        np.testing.assert_array_equal(np.abs(b1), 1.0)
    if settings.get("flip"):
        assert {-1.0, 1.0} == set(a0) == set(b1)  # both axes, both ways
        assert set(a2) == {0.0, width - 1.0} and set(b2) == {0.0, height - 1.0}
    elif settings.get("shift"):
        shift = settings["shift"]
        assert np.abs(a2).max() <= shift * width + 1e-4 and np.abs(a2).max() > shift * width / 2
        assert np.abs(b2).max() <= shift * height + 1e-4 and np.abs(b2).max() > shift * height / 2
    else:
        np.testing.assert_array_equal(np.abs(a0), np.abs(b1))


def _square(batch: int, size: int = 33, half: int = 4) -> np.ndarray:
    """A centred bright square (side 2 * half + 1) on black: its centre is pixel (16, 16)."""
    images = np.zeros((batch, size, size, 3), "float32")
    centre = size // 2
    images[:, centre - half : centre + half + 1, centre - half : centre + half + 1] = 255.0
    return images


def _centroid_and_mass(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weight = images[..., 0]
    grid = np.indices(weight.shape[1:], dtype="float64")
    mass = weight.sum(axis=(1, 2))
    centroid = np.stack([(weight * grid[0]).sum(axis=(1, 2)), (weight * grid[1]).sum(axis=(1, 2))])
    return centroid.T / mass[:, None], mass


def test_rotation_turns_a_centred_square_about_the_centre():
    images = _square(16)
    out = _np(RandomAffine(flip=False, rotation=0.25, seed=4)(images, training=True))
    centroid, mass = _centroid_and_mass(out)
    np.testing.assert_allclose(centroid, 16.0, atol=0.05)
    np.testing.assert_allclose(mass, images[..., 0].sum(axis=(1, 2)), rtol=0.05)  # area kept
    turned = [not np.allclose(o, i, atol=1.0) for o, i in zip(out, images, strict=True)]
    assert sum(turned) >= 14  # only a turn by a multiple of 90 degrees maps the square on itself


def test_zoom_resizes_a_centred_square_about_the_centre():
    images = _square(16)
    out = _np(RandomAffine(flip=False, zoom=0.3, seed=5)(images, training=True))
    centroid, mass = _centroid_and_mass(out)
    np.testing.assert_allclose(centroid, 16.0, atol=0.05)
    scale = mass / images[..., 0].sum(axis=(1, 2))  # area changes by 1 / zoom factor squared
    assert scale.min() >= 1 / 1.3**2 - 0.05 and scale.max() <= 1 / 0.7**2 + 0.05
    assert scale.min() < 0.85 and scale.max() > 1.15  # both zooming in and out


def test_shift_moves_a_square_without_resizing_it():
    images = _square(16)
    out = _np(RandomAffine(flip=False, shift=0.1, seed=6)(images, training=True))
    centroid, mass = _centroid_and_mass(out)
    offset = centroid - 16.0
    assert np.abs(offset).max() <= 0.1 * 33 + 1e-3
    assert (np.abs(offset) > 0.5).any(axis=0).all()  # moves along both axes
    np.testing.assert_allclose(mass, images[..., 0].sum(axis=(1, 2)), rtol=1e-3)


def test_affine_keeps_dtype_range_and_shape_and_is_identity_outside_training(images):
    layer = RandomAffine(flip=True, rotation=0.25, zoom=0.15, shift=0.1, seed=7)
    out = _np(layer(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3
    np.testing.assert_array_equal(_np(layer(images, training=False)), images)
    single = _np(layer(images[0], training=True))  # an unbatched image works too
    assert single.shape == images[0].shape
    again = RandomAffine.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_geometric_augmentation_is_more_than_flips(images):
    augmenter = build_augmenter(brightness=0, contrast=0, seed=8)
    batch = np.repeat(images[:1], 16, axis=0)
    out = _np(augmenter(batch, training=True))
    image = images[0]
    flips = [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
    for o in out:
        assert min(np.abs(o - f).mean() for f in flips) > 1.0
    assert len({o.tobytes() for o in out}) == len(out)  # drawn per image


def test_flips_go_both_ways(images):
    flip_only = build_augmenter(rotation=0, zoom=0, shift=0, brightness=0, contrast=0, seed=3)
    batch = np.repeat(images[:1], 32, axis=0)
    out = _np(flip_only(batch, training=True))
    image = images[0]
    seen = {
        name: any(np.array_equal(o, variant) for o in out)
        for name, variant in {
            "up-down": image[::-1],
            "left-right": image[:, ::-1],
            "both": image[::-1, ::-1],
            "none": image,
        }.items()
    }
    assert all(seen.values()), seen


@pytest.mark.parametrize("mixup_prob, cutmix_prob", [(1.0, 0.0), (0.0, 1.0)])
def test_mixed_labels_sum_to_one_and_probability_one_always_mixes(images, mixup_prob, cutmix_prob):
    mixer = MixUpCutMix(mixup_prob=mixup_prob, cutmix_prob=cutmix_prob, seed=5)
    labels = _one_hot(len(images))
    for _ in range(5):
        out_images, out_labels = (_np(t) for t in mixer(images, labels))
        assert out_images.dtype == np.float32 and out_images.shape == images.shape
        np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, rtol=1e-6)
        assert not np.array_equal(out_images, images)
        assert not np.array_equal(out_labels, labels)


def test_probability_zero_and_inference_leave_the_batch_unchanged(images):
    labels = _one_hot(len(images))
    for mixer, kwargs in (
        (MixUpCutMix(mixup_prob=0.0, cutmix_prob=0.0, seed=1), {}),
        (MixUpCutMix(mixup_prob=1.0, cutmix_prob=1.0, seed=1), {"training": False}),
    ):
        out_images, out_labels = mixer(images, labels, **kwargs)
        np.testing.assert_array_equal(_np(out_images), images)
        np.testing.assert_array_equal(_np(out_labels), labels)


def test_cutmix_label_weight_is_the_pasted_pixel_fraction():
    batch = NUM_CLASSES
    images, labels = _flat_images(batch), _one_hot(batch)
    mixer = MixUpCutMix(mixup_prob=0.0, cutmix_prob=1.0, cutmix_alpha=1.0, seed=11)
    pasted_any = False
    for _ in range(10):
        out_images, out_labels = (_np(t) for t in mixer(images, labels))
        pasted = (out_images[..., 0] != images[..., 0]).mean(axis=(1, 2))
        own_class = out_labels[np.arange(batch), np.arange(batch)]
        np.testing.assert_allclose(1.0 - own_class, pasted, atol=1e-6)
        # Every pasted pixel comes from one other image, whose class gets the same share.
        for i in np.flatnonzero(pasted):
            source = int(out_images[i][out_images[i, ..., 0] != images[i, 0, 0, 0]][0, 0] // 10 - 1)
            assert out_labels[i, source] == pytest.approx(pasted[i], abs=1e-6)
        pasted_any |= bool(pasted.any())
    assert pasted_any


def _kind(out: np.ndarray, images: np.ndarray) -> str:
    if np.array_equal(out, images):
        return "none"
    if np.isin(out, images).all():  # CutMix only moves pixel values around
        return "cutmix"
    return "mixup"


def test_branch_frequencies_follow_the_probabilities():
    images, labels = _flat_images(4, size=8), _one_hot(4)
    mixer = MixUpCutMix(mixup_prob=0.5, cutmix_prob=0.5, seed=2)
    kinds = {"mixup": 0, "cutmix": 0, "none": 0}
    draws = 100
    for _ in range(draws):
        kinds[_kind(_np(mixer(images, labels)[0]), images)] += 1
    # P(MixUp) = 0.5, P(CutMix) = 0.5 * 0.5; a CutMix of an empty box or an identity
    # permutation looks like "none", so only check the clear cases.
    assert kinds["mixup"] / draws == pytest.approx(0.5, abs=0.15)
    assert (kinds["cutmix"] + kinds["none"]) / draws == pytest.approx(0.5, abs=0.15)
    assert kinds["cutmix"] > 0 and kinds["none"] > 0


def _seed_state(layer) -> np.ndarray:
    return _np(layer.generator.state.value).copy()


def test_only_the_chosen_branch_is_computed(images):
    """MixUp always wins at probability 1: CutMix never runs, so its seed never moves."""
    labels = _one_hot(len(images))
    mixer = MixUpCutMix(mixup_prob=1.0, cutmix_prob=1.0, seed=9)
    cutmix_before, mixup_before = _seed_state(mixer.cutmix), _seed_state(mixer.mixup)
    for _ in range(3):
        mixer(images, labels)
    np.testing.assert_array_equal(_seed_state(mixer.cutmix), cutmix_before)
    assert not np.array_equal(_seed_state(mixer.mixup), mixup_before)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data on TensorFlow")
def test_branch_is_drawn_per_batch_inside_a_tf_data_graph():
    """In a graph the choice is a ``cond`` on a fresh draw each batch, not fixed at tracing."""
    import tensorflow as tf

    images, labels = _flat_images(4, size=8), _one_hot(4)
    mixer = MixUpCutMix(mixup_prob=0.4, cutmix_prob=0.5, seed=3)
    draws = 100
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat(draws).map(mixer)
    kinds = {"mixup": 0, "cutmix": 0, "none": 0}
    for x, y in dataset:
        kinds[_kind(x.numpy(), images)] += 1
        np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, rtol=1e-6)
    # P(MixUp) = 0.4, P(CutMix) = 0.6 * 0.5 (an empty box looks like "none").
    assert kinds["mixup"] / draws == pytest.approx(0.4, abs=0.15)
    assert (kinds["cutmix"] + kinds["none"]) / draws == pytest.approx(0.6, abs=0.15)
    assert kinds["cutmix"] > 0 and kinds["none"] > 0


JAX_CHECK = """
import numpy as np, keras
assert keras.backend.backend() == "jax"
from ham_utils.train.augment import MixUpCutMix, build_augmenter
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
labels = np.eye(7, dtype="float32")[np.arange(8) % 7]
flips = build_augmenter(rotation=0, zoom=0, shift=0, brightness=0, contrast=0, seed=1)
out = np.asarray(flips(np.repeat(images[:1], 32, axis=0), training=True))
image = images[0]
for variant in (image, image[::-1], image[:, ::-1], image[::-1, ::-1]):
    assert any(np.array_equal(o, variant) for o in out)
out = np.asarray(build_augmenter(seed=2)(images, training=True))
assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255.001
assert np.abs(out - images).mean() > 1.0
mixer = MixUpCutMix(mixup_prob=0.5, cutmix_prob=0.5, seed=3)
kinds = set()
for _ in range(20):
    x, y = (np.asarray(t) for t in mixer(images, labels))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    kinds.add("none" if np.array_equal(x, images) else "mixed")
assert kinds == {"none", "mixed"}, kinds
print("jax ok")
"""


@pytest.mark.slow
def test_augmentation_and_mixing_run_eagerly_on_jax():
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", JAX_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jax ok" in result.stdout


def test_config_round_trip():
    mixer = MixUpCutMix(mixup_prob=0.3, mixup_alpha=0.4, cutmix_prob=0.6, cutmix_alpha=0.9, seed=4)
    again = MixUpCutMix.from_config(mixer.get_config())
    for key in ("mixup_prob", "mixup_alpha", "cutmix_prob", "cutmix_alpha", "seed"):
        assert getattr(again, key) == getattr(mixer, key)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data on TensorFlow")
def test_augmenter_and_mixer_run_inside_a_tf_data_pipeline(images):
    import tensorflow as tf

    augmenter = build_augmenter(seed=1)
    mixer = MixUpCutMix(mixup_prob=0.5, cutmix_prob=0.5, seed=1)
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, _one_hot(len(images))))
        .batch(4)
        .map(lambda x, y: (augmenter(x, training=True), y))
        .map(mixer)
    )
    batches = list(dataset)
    assert len(batches) == 2
    for x, y in batches:
        assert x.dtype == tf.float32 and tuple(x.shape) == (4, 32, 32, 3)
        np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, rtol=1e-6)
