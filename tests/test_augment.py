import keras
import numpy as np
import pytest

from ham_utils.augment import MixUpCutMix, build_augmenter

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
    names = [type(layer).__name__ for layer in build_augmenter(rotation=0, contrast=0).layers]
    assert names == [
        "RandomFlip",
        "RandomFlip",
        "RandomZoom",
        "RandomTranslation",
        "RandomBrightness",
    ]
    off = build_augmenter(flip=False, rotation=0, zoom=0, shift=0, brightness=0, contrast=0)
    assert off.layers == []


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


def test_branch_frequencies_follow_the_probabilities():
    images, labels = _flat_images(4, size=8), _one_hot(4)
    mixer = MixUpCutMix(mixup_prob=0.5, cutmix_prob=0.5, seed=2)
    kinds = {"mixup": 0, "cutmix": 0, "none": 0}
    draws = 100
    for _ in range(draws):
        out = _np(mixer(images, labels)[0])
        if np.array_equal(out, images):
            kinds["none"] += 1
        elif np.isin(out, images).all():  # CutMix only moves pixel values around
            kinds["cutmix"] += 1
        else:
            kinds["mixup"] += 1
    # P(MixUp) = 0.5, P(CutMix) = 0.5 * 0.5; a CutMix of an empty box or an identity
    # permutation looks like "none", so only check the clear cases.
    assert kinds["mixup"] / draws == pytest.approx(0.5, abs=0.15)
    assert (kinds["cutmix"] + kinds["none"]) / draws == pytest.approx(0.5, abs=0.15)
    assert kinds["cutmix"] > 0 and kinds["none"] > 0


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
