"""Batch streams from the image cache: training (oversampling, augmentation, MixUp/CutMix,
sample weights) and evaluation (in order, untouched).

The streams are :class:`keras.utils.PyDataset` objects, so they need no TensorFlow and feed
``model.fit`` on every Keras backend; Keras prefetches them on worker threads. The order of
each epoch depends only on the seed and the epoch number, so a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from imblearn.over_sampling import RandomOverSampler

from ham_utils.config import CLASSES
from ham_utils.model.losses import sample_weights_for

OVERSAMPLING_MODES: tuple[str, ...] = ("none", "sqrt", "balanced")


def oversampled_indices(labels: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Indices into ``labels`` with minority classes repeated (imbalanced-learn's
    :class:`RandomOverSampler`), in a seeded random order.

    ``sqrt`` raises each class to sqrt(n_class * n_largest) images, a middle ground;
    ``balanced`` to the size of the largest class; ``none`` keeps the counts.
    """
    if mode not in OVERSAMPLING_MODES:
        raise ValueError(f"oversampling must be one of {OVERSAMPLING_MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    index = np.arange(len(labels))
    if mode != "none":
        present, counts = np.unique(labels, return_counts=True)
        largest = counts.max()
        if mode == "balanced":
            target = dict.fromkeys(present.tolist(), int(largest))
        else:
            target = {
                int(c): int(max(n, round(math.sqrt(n * largest))))
                for c, n in zip(present, counts, strict=True)
            }
        sampler = RandomOverSampler(sampling_strategy=target, random_state=int(rng.integers(2**31)))
        index, _ = sampler.fit_resample(index.reshape(-1, 1), labels)
        index = index.ravel()
    return rng.permutation(index)


class TrainingStream(keras.utils.PyDataset):
    """Shuffled, optionally oversampled, augmented and mixed training batches.

    Yields ``(images, one_hot_labels)`` or, with ``class_weights``, ``(images, labels,
    sample_weights)`` where each sample's weight is its (possibly mixed) label times the
    class weights. Images are float32 in 0..255.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        oversampling: str = "none",
        augment: Callable[[Any], Any] | None = None,
        mix: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        class_weights: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.images, self.labels = images, np.asarray(labels)
        self.batch_size, self.seed, self.oversampling = batch_size, seed, oversampling
        self.augment, self.mix = augment, mix
        self.class_weights = None if class_weights is None else np.asarray(class_weights, "float32")
        self.epoch = 0
        self._order = oversampled_indices(self.labels, oversampling, seed)
        self._compiled: Callable[..., tuple[Any, ...]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` (used when a run resumes mid-way)."""
        self.epoch = epoch
        self._order = oversampled_indices(self.labels, self.oversampling, self.seed + epoch)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        # Drop the last partial batch: MixUp/CutMix pair samples within a batch, and equal
        # batches keep one compiled step shape.
        return max(1, len(self._order) // self.batch_size)

    def raw_batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch before augmentation: uint8 images, one-hot
        float32 labels."""
        rows = np.sort(self._order[index * self.batch_size : (index + 1) * self.batch_size])
        # Sorted rows read the memory map sequentially; shuffle back within the batch.
        rows = np.random.default_rng((self.seed, self.epoch, index)).permutation(rows)
        y = keras.utils.to_categorical(self.labels[rows], len(CLASSES)).astype("float32")
        return np.asarray(self.images[rows]), y

    def transform(self, x: Any, y: Any) -> tuple[Any, ...]:
        """Augmentation, mixing and sample weights of one batch (eager, or in a tf.data graph)."""
        x = keras.ops.cast(x, "float32")
        if self.augment is not None:
            x = self.augment(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        if self.class_weights is None:
            return x, y
        return x, y, sample_weights_for(y, self.class_weights)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return self._batch_transform()(*self.raw_batch(index))

    def _batch_transform(self) -> Callable[..., tuple[Any, ...]]:
        """:meth:`transform`, on TensorFlow as one ``tf.function``: a batch is then one call
        into the runtime instead of ~100 eager ops, each taking the GIL from the training
        loop (0.26 instead of 1.0 ms of CPU per image at 64 px). Other backends run it
        eagerly."""
        if self._compiled is None:
            self._compiled = self.transform
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                self._compiled = tf.function(self.transform)
        return self._compiled

    def __getstate__(self) -> dict[str, Any]:
        # Copies (pickled or copy.copy) compile their own transform: a tf.function neither
        # pickles nor may be shared, as it is bound to the original's attributes.
        return {**self.__dict__, "_compiled": None}


def tf_dataset(stream: TrainingStream) -> Any:
    """The batches of ``stream`` as a ``tf.data`` pipeline (TensorFlow backend only).

    Reading the cache stays in Python (one fancy-indexing copy per batch); augmentation and
    MixUp/CutMix run as TensorFlow graph ops on tf.data's thread pool, outside the GIL, which
    is what keeps a fast accelerator (or both cores of a small CPU) busy. The epoch order
    still comes from ``stream``: call ``stream.set_epoch`` at each epoch's start
    (:class:`EpochOrder` does).

    One map does a whole batch (read, augment, mix, weigh), each call on one thread of the
    dataset's own thread pool, so input work never queues in the pools that run the model's
    ops. tf.data's autotuner is off: its per-iterator background thread made the end of an
    epoch block for up to ~10 s now and then (TensorFlow 2.21, 2 CPU cores), and a fixed
    setting is enough here: as many batches in flight as cores, two ready in advance.
    """
    import tensorflow as tf

    size = stream.images.shape[1:]

    def batch(index: Any) -> Any:
        x, y = tf.numpy_function(
            lambda i: stream.raw_batch(int(i)), [index], [tf.uint8, tf.float32], stateful=True
        )
        x.set_shape((stream.batch_size, *size))
        y.set_shape((stream.batch_size, len(CLASSES)))
        return stream.transform(x, y)

    cores = os.cpu_count() or 1
    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    return (
        tf.data.Dataset.range(len(stream))
        .map(batch, num_parallel_calls=cores)
        .prefetch(2)
        .with_options(options)
    )


class EpochOrder(keras.callbacks.Callback):
    """Draws each epoch's order of a :class:`TrainingStream` fed through :func:`tf_dataset`
    (``model.fit`` calls ``on_epoch_end`` of a PyDataset itself, but not of a tf.data set)."""

    def __init__(self, stream: TrainingStream) -> None:
        super().__init__()
        self.stream = stream

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.stream.set_epoch(epoch)


class EvaluationStream(keras.utils.PyDataset):
    """The images of one split in order, in batches, with one-hot labels when given."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        batch_size: int,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.images, self.labels = images, labels
        self.batch_size, self.transform = batch_size, transform

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        window = slice(index * self.batch_size, (index + 1) * self.batch_size)
        x = np.asarray(self.images[window], dtype="float32")
        if self.transform is not None:
            x = self.transform(x)
        if self.labels is None:
            return (x,)
        return x, keras.utils.to_categorical(self.labels[window], len(CLASSES)).astype("float32")
