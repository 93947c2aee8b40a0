"""``make bench``: speed figures of the pipeline steps, printed as a table.

Run on the demo data by default, or on real data with ``make bench DATA_DIR=...``.
Each cache build is cold (a fresh temporary folder), so the figure is the build cost.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ham_utils.config import load_params, parse_override

T = TypeVar("T")


def timed(func: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


def bench_data_steps(params_path: str | None, overrides: dict[str, str]) -> list[tuple[str, str]]:
    from ham_utils.data.cache import build_split_cache
    from ham_utils.data.metadata import read_ham10000
    from ham_utils.data.prepare import ensure_demo_data
    from ham_utils.data.split import lesion_split

    params = load_params(params_path, overrides)
    data_dir = ensure_demo_data(params, progress=False)
    rows: list[tuple[str, str]] = [("data", str(data_dir))]

    dataset, seconds = timed(lambda: read_ham10000(data_dir, verify_images=True, progress=False))
    n = len(dataset.metadata)
    rows.append(("read + verify every image", f"{seconds:.1f} s ({n / seconds:.0f} images/s)"))
    _, seconds = timed(lambda: lesion_split(dataset.metadata, seed=params.seed))
    rows.append(("lesion-aware split", f"{seconds:.1f} s"))

    cores = os.cpu_count() or 1
    for size in sorted({params.image_size, 224, 300}):
        for workers in sorted({1, cores}):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                build_split_cache(
                    dataset.metadata, "all", Path(tmp), size, params.resize_mode, workers, False
                )
                seconds = time.perf_counter() - start
            rows.append(
                (
                    f"cache build {size}px, {workers} thread(s)",
                    f"{seconds:.1f} s ({n / seconds:.0f} images/s)",
                )
            )
    return rows


def bench_training(params_path: str | None, overrides: dict[str, str], rounds: int = 3):
    """Training images/s through the real input stream next to the same model fed from
    in-memory tensors, and their ratio.

    Every feed gives the same number of images per epoch: the in-memory tensors are the
    stream's own first epoch (cache, oversampling) before augmentation and mixing, so the
    difference is exactly the work of the stream. Each feed trains its own model; after a
    warm-up epoch each (tracing), single epochs alternate between the feeds ``rounds`` times,
    so that slow drifts of a shared machine hit every feed alike. A figure is all its images
    over all its time, with the spread of the rounds.
    """
    import keras
    import numpy as np

    from ham_utils.model.build import build_model
    from ham_utils.train.loop import (
        _compile,
        _set_trainable,
        _streams,
        training_input_of,
        training_splits,
    )

    params = load_params(params_path, overrides)
    train_split, val_split, counts = training_splits(params, progress=False)
    stream, _, _ = _streams(params, train_split, val_split, counts)
    steps = len(stream)
    n = steps * params.batch_size
    tensorflow = keras.backend.backend() == "tensorflow"

    batches = [stream.raw_batch(index) for index in range(steps)]
    x = np.concatenate([images for images, _ in batches]).astype("float32")
    y = np.concatenate([labels for _, labels in batches])
    feeds: dict[str, tuple[Any, dict[str, Any]]] = {}
    if tensorflow:
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = False  # as in the stream (see pipeline.tf_dataset)
        memory = tf.data.Dataset.from_tensor_slices((x, y))
        feeds["alone"] = (memory.batch(params.batch_size).prefetch(2).with_options(options), {})
    else:
        feeds["alone"] = (x, {"y": y, "batch_size": params.batch_size, "shuffle": False})
    for loader in ("tf_data", "py_dataset") if tensorflow else ("py_dataset",):
        data, callbacks = training_input_of(stream, loader)
        feeds[loader] = (data, {"callbacks": callbacks})

    models = {}
    for name in feeds:
        keras.utils.set_random_seed(params.seed)
        models[name] = build_model(params.backbone, params.image_size, "none", params.head)
        _set_trainable(models[name], params, phase=2)
        _compile(models[name], params, 2, steps, counts)
    # Warm-up (tracing, first allocations) only once every model is built: with TensorFlow, a
    # model built after another's first fit makes that one's next epoch ~10 s slower.
    for name, (data, kwargs) in feeds.items():
        models[name].fit(data, epochs=1, verbose=0, **kwargs)
    seconds: dict[str, list[float]] = {name: [] for name in feeds}
    for epoch in range(1, rounds + 1):
        for name, (data, kwargs) in feeds.items():
            start = time.perf_counter()
            models[name].fit(data, initial_epoch=epoch, epochs=epoch + 1, verbose=0, **kwargs)
            seconds[name].append(time.perf_counter() - start)

    def rate(name: str) -> float:
        return rounds * n / sum(seconds[name])

    def spread(name: str) -> str:
        low, high = n / max(seconds[name]), n / min(seconds[name])
        return f"{rate(name):.1f} images/s (epochs {low:.0f}-{high:.0f})"

    what = (
        f"{params.backbone} {params.image_size}px, batch {params.batch_size}, "
        f"{keras.backend.backend()}, {rounds} x {steps} steps per feed"
    )
    rows = [("training setup", what), ("model alone, in-memory tensors", spread("alone"))]
    for loader in (name for name in feeds if name != "alone"):
        rows += [
            (f"real input stream ({loader})", spread(loader)),
            (f"ratio stream / model alone ({loader})", f"{rate(loader) / rate('alone'):.2f}"),
        ]
    return rows


# The recipe whose image size, batch and unfreezing the backbone figures use.
PRETRAINED_RECIPE = Path(__file__).resolve().parent.parent / "params" / "cpu.yaml"


def bench_backbones(
    recipe: str | os.PathLike[str] = PRETRAINED_RECIPE, steps: int = 12
) -> list[tuple[str, str]]:
    """Training and inference images/s of EfficientNet-Lite 0/1/2 at the pretrained CPU
    recipe's image size and batch, from in-memory tensors (the model's own speed). Training
    is phase 2 as the recipe runs it: its ``unfreeze`` blocks trainable, BatchNorm frozen.
    Random weights: the speed does not depend on them, and no weights file is needed."""
    import dataclasses

    import keras
    import numpy as np

    from ham_utils.config import LITE_VARIANTS
    from ham_utils.model.build import build_model
    from ham_utils.train.loop import _compile, _set_trainable

    base = load_params(recipe, {})
    size, batch = base.image_size, base.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 7, batch), 7)
    rows = []
    for name in LITE_VARIANTS:
        params = dataclasses.replace(base, backbone=name)
        keras.utils.set_random_seed(0)
        model = build_model(name, size, "none", params.head, params.dropout)
        _set_trainable(model, params, phase=2)
        _compile(model, params, 2, steps, np.ones(7))
        # Batch by batch, after two warm-up steps (tracing): the model's own compute, without
        # the per-call conversion that fit() and predict() make of in-memory arrays.
        for _ in range(2):
            model.train_on_batch(x, y)
            model.predict_on_batch(x)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        train = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            model.predict_on_batch(x)
        infer = time.perf_counter() - start
        images = steps * batch
        rows.append(
            (
                f"{name} {size}px, batch {batch}",
                f"train {images / train:.1f} images/s (unfreeze {params.unfreeze}), "
                f"predict {images / infer:.1f} images/s",
            )
        )
    return rows


def bench_prediction(repeats: int = 10) -> list[tuple[str, str]]:
    """Seconds for one prediction with Grad-CAM, as the app makes it: an EfficientNetB0 at
    224 px (random weights: the speed does not depend on them) on a 600x450 JPEG, decoded,
    resized, predicted, explained and overlaid, after the warm-up (tracing) that the app does
    when it loads a model."""
    import io
    import statistics

    import keras
    import numpy as np
    from PIL import Image

    from ham_utils.config import CLASSES, load_params
    from ham_utils.model.build import build_model
    from ham_utils.runs import Run
    from ham_utils.serve.predict import Predictor

    params = load_params(None, {"backbone": "efficientnetb0", "image_size": 224})
    keras.utils.set_random_seed(0)
    model = build_model(params.backbone, params.image_size, "none", params.head, params.dropout)
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)).save(photo, "JPEG")
    upload = photo.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor(Run(Path(tmp), params, CLASSES), model=model)

        def once() -> None:
            predictor.predict(upload).overlay()

        _, warm_up = timed(predictor.warm_up)
        _, first = timed(once)
        times = [timed(once)[1] for _ in range(repeats)]
    return [
        ("prediction + Grad-CAM, B0 224px, warm-up at load", f"{warm_up:.2f} s"),
        ("prediction + Grad-CAM, B0 224px, first after warm-up", f"{first:.3f} s"),
        (
            f"prediction + Grad-CAM, B0 224px, median of {repeats}",
            f"{statistics.median(times):.3f} s (max {max(times):.3f} s)",
        ),
    ]


def bench_bootstrap(n_predictions: int = 1500, repeats: int = 3) -> list[tuple[str, str]]:
    """Seconds for the 95% intervals of every headline metric: 1,000 resamples of
    ``n_predictions`` seeded predictions (HAM10000's class mix, some skill), as
    :func:`ham_utils.evaluation.evaluate` computes them for a test split."""
    import numpy as np

    from ham_utils.config import CLASSES
    from ham_utils.evaluation.bootstrap import RESAMPLES, bootstrap_intervals

    rng = np.random.default_rng(0)
    shares = [0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02]
    y = rng.choice(len(CLASSES), n_predictions, p=shares)
    logits = rng.normal(0, 1, (n_predictions, len(CLASSES)))
    logits[np.arange(n_predictions), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    times = [timed(lambda: bootstrap_intervals(y, probs))[1] for _ in range(repeats)]
    return [
        (
            f"bootstrap intervals, {n_predictions} predictions x {RESAMPLES} resamples",
            f"{min(times):.2f}-{max(times):.2f} s ({repeats} runs)",
        )
    ]


def bench_report(params_path: str | None, overrides: dict[str, str]) -> list[tuple[str, str]]:
    """Wall time of ``make all`` minus set-up: every notebook, in a fresh project folder
    (so the demo data, split, cache and run are all made from scratch)."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as root:
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        command = [sys.executable, "-m", "ham_utils", "report", *sets]
        if params_path:
            command += ["--params", str(Path(params_path).resolve())]
        start = time.perf_counter()
        result = subprocess.run(
            command, env={**os.environ, "HAM_PROJECT_ROOT": root}, capture_output=True, text=True
        )
        total = time.perf_counter() - start
        if result.returncode:
            raise RuntimeError(f"report failed:\n{result.stderr[-3000:]}")
        report_dir = Path(result.stdout.strip().splitlines()[-1])
        seconds = json.loads((report_dir / "timing.json").read_text())
    rows = [(f"notebook {name}", f"{value:.0f} s") for name, value in seconds.items()]
    return [*rows, ("all notebooks, from a fresh project folder", f"{total:.0f} s")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ham_utils.bench", description=__doc__)
    parser.add_argument("--params", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--data-only", action="store_true", help="skip the training and prediction figures"
    )
    parser.add_argument(
        "--report", action="store_true", help="time every notebook (make all) instead"
    )
    parser.add_argument(
        "--bootstrap-only", action="store_true", help="only the bootstrap intervals' speed"
    )
    parser.add_argument(
        "--backbones-only",
        action="store_true",
        help="only the training and inference speed of EfficientNet-Lite 0-2 (params/cpu.yaml)",
    )
    args = parser.parse_args(argv)
    overrides = dict(parse_override(s) for s in args.set)
    if args.bootstrap_only:
        rows = bench_bootstrap()
    elif args.backbones_only:
        rows = bench_backbones()
    elif args.report:
        rows = bench_report(args.params, overrides)
    else:
        rows = bench_data_steps(args.params, overrides)
    if not (args.data_only or args.report or args.backbones_only or args.bootstrap_only):
        rows += bench_bootstrap()
        rows += bench_training(args.params, overrides)
        rows += bench_backbones()
        rows += bench_prediction()
    width = max(len(name) for name, _ in rows)
    print(f"machine: {os.cpu_count()} cores")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
