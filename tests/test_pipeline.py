import copy
import math
import os
import pickle

import keras
import numpy as np
import pytest

from ham_utils.train.pipeline import EvaluationStream, TrainingStream, oversampled_indices

LABELS = np.repeat(np.arange(7), [2, 5, 11, 1, 11, 67, 3])  # HAM10000-like imbalance, 100 images


def test_no_oversampling_is_a_permutation():
    index = oversampled_indices(LABELS, "none", seed=0)
    assert sorted(index) == list(range(len(LABELS)))


def test_balanced_oversampling_equalises_classes_from_the_training_rows_only():
    index = oversampled_indices(LABELS, "balanced", seed=0)
    counts = np.bincount(LABELS[index], minlength=7)
    assert (counts == 67).all()
    assert set(index) == set(range(len(LABELS)))  # every image still used


def test_sqrt_oversampling_is_between_none_and_balanced():
    counts = np.bincount(LABELS[oversampled_indices(LABELS, "sqrt", seed=0)], minlength=7)
    original = np.bincount(LABELS, minlength=7)
    expected = np.maximum(original, np.round(np.sqrt(original * 67)))
    np.testing.assert_array_equal(counts, expected)


def test_unknown_oversampling_mode_is_refused():
    with pytest.raises(ValueError, match="oversampling"):
        oversampled_indices(LABELS, "smote", seed=0)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (len(LABELS), 16, 16, 3), dtype=np.uint8)


def test_training_batches_have_one_hot_labels_float_pixels_and_full_size(images):
    stream = TrainingStream(images, LABELS, batch_size=8, seed=1)
    assert len(stream) == len(LABELS) // 8  # the last partial batch is dropped
    x, y = stream[0]
    assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32 and float(np.max(x)) > 1.0
    assert y.shape == (8, 7) and np.allclose(np.sum(y, axis=1), 1.0)


def test_each_epoch_order_depends_only_on_seed_and_epoch(images):
    a = TrainingStream(images, LABELS, batch_size=8, seed=1, oversampling="sqrt")
    b = TrainingStream(images, LABELS, batch_size=8, seed=1, oversampling="sqrt")
    a.on_epoch_end()
    a.on_epoch_end()
    b.set_epoch(2)  # a resumed run jumps straight to its epoch
    for i in (0, 3):
        np.testing.assert_array_equal(a[i][0], b[i][0])
    a.on_epoch_end()
    assert not np.array_equal(a[0][0], b[0][0])


def test_class_weights_become_per_sample_weights_of_the_label(images):
    weights = np.linspace(1.0, 7.0, 7).astype("float32")
    _, y, w = TrainingStream(images, LABELS, 8, seed=1, class_weights=weights)[0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(w), np.asarray(y) @ weights, rtol=1e-6)


def test_augment_and_mix_are_applied_to_training_batches(images):
    calls = []

    def augment(x):
        calls.append("augment")
        return x * 0

    def mix(x, y):
        calls.append("mix")
        return x + 1, y

    x, _ = TrainingStream(images, LABELS, 8, seed=1, augment=augment, mix=mix)[0]
    assert calls == ["augment", "mix"] and np.all(np.asarray(x) == 1)


def test_training_batches_draw_fresh_augmentation_and_trace_it_once(images):
    from ham_utils.train.augment import build_augmenter

    augmenter = build_augmenter(seed=1)
    traces = []

    def augment(x):
        traces.append(1)
        return augmenter(x, training=True)

    stream = TrainingStream(images, LABELS, 8, seed=1, augment=augment)
    first, second = (np.asarray(stream[0][0]) for _ in range(2))
    assert not np.allclose(first, second)  # the same batch, new random draws
    if keras.backend.backend() == "tensorflow":
        assert len(traces) == 1  # one tf.function, not ~100 eager ops per batch


def test_copies_of_a_used_stream_compile_their_own_transform(images):
    stream = TrainingStream(images, LABELS, 8, seed=1)
    stream[0]
    again = pickle.loads(pickle.dumps(stream))
    np.testing.assert_array_equal(np.asarray(again[1][0]), np.asarray(stream[1][0]))
    plain = copy.copy(stream)
    plain.class_weights = np.ones(7, "float32")
    assert len(plain[0]) == 3 and len(stream[0]) == 2  # not the original's compiled transform


def test_evaluation_stream_keeps_order_and_every_image(images):
    stream = EvaluationStream(images, LABELS, batch_size=32)
    assert len(stream) == math.ceil(len(LABELS) / 32)
    xs = np.concatenate([stream[i][0] for i in range(len(stream))])
    ys = np.concatenate([stream[i][1] for i in range(len(stream))])
    np.testing.assert_array_equal(xs, images.astype("float32"))
    np.testing.assert_array_equal(ys.argmax(axis=1), LABELS)
    assert EvaluationStream(images, None, 32)[0][0].shape == (32, 16, 16, 3)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data on TensorFlow")
def test_tf_data_pipeline_gives_the_stream_batches_transformed_in_graph_mode(images):
    from ham_utils.train.augment import MixUpCutMix, build_augmenter
    from ham_utils.train.pipeline import EpochOrder, tf_dataset

    augmenter = build_augmenter(seed=1)
    stream = TrainingStream(
        images,
        LABELS,
        8,
        seed=3,
        augment=lambda x: augmenter(x, training=True),
        mix=MixUpCutMix(0.5, 0.2, 0.5, 1.0, seed=2),
        class_weights=np.linspace(1.0, 2.0, 7),
    )
    EpochOrder(stream).on_epoch_begin(4)
    assert stream.epoch == 4
    batches = list(tf_dataset(stream))
    assert len(batches) == len(stream)
    for index, (x, y, w) in enumerate(batches):
        raw_x, _ = stream.raw_batch(index)
        assert x.shape == raw_x.shape and x.dtype == "float32"
        assert not np.allclose(x.numpy(), raw_x)  # augmented
        np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(w.numpy(), y.numpy() @ np.linspace(1.0, 2.0, 7), rtol=1e-5)
    again = list(tf_dataset(stream))
    assert not np.allclose(batches[0][0].numpy(), again[0][0].numpy())  # fresh random draws


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data on TensorFlow")
def test_tf_data_pipeline_runs_without_the_autotuner_on_its_own_threads(images):
    from ham_utils.train.pipeline import tf_dataset

    options = tf_dataset(TrainingStream(images, LABELS, 8, seed=3)).options()
    # The autotuner's background thread could block the end of an epoch for seconds.
    assert options.autotune.enabled is False
    assert options.threading.private_threadpool_size == (os.cpu_count() or 1)
    assert options.threading.max_intra_op_parallelism == 1
