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
    from ham_utils.cache import build_split_cache
    from ham_utils.data import read_ham10000
    from ham_utils.prepare import ensure_demo_data
    from ham_utils.split import lesion_split

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


def bench_training(params_path: str | None, overrides: dict[str, str], epochs: int = 2):
    """Training images/s through the real input stream next to the same model fed from
    in-memory arrays. The first epoch of each is a warm-up (tracing, compilation)."""
    import keras
    import numpy as np

    from ham_utils.config import CLASSES
    from ham_utils.train import (
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

    def images_per_second(data: Any, **fit_kwargs: Any) -> float:
        from ham_utils.models import build_model

        keras.utils.set_random_seed(params.seed)
        model = build_model(params.backbone, params.image_size, "none", params.head)
        _set_trainable(model, params, phase=2)
        _compile(model, params, 2, steps, counts)
        model.fit(data, epochs=1, verbose=0, **fit_kwargs)  # warm-up
        start = time.perf_counter()
        model.fit(data, epochs=epochs, verbose=0, **fit_kwargs)
        return epochs * steps * params.batch_size / (time.perf_counter() - start)

    n = steps * params.batch_size
    x = np.asarray(train_split.images[:n], dtype="float32")
    y = keras.utils.to_categorical(train_split.labels[:n], len(CLASSES)).astype("float32")
    alone = images_per_second(x, y=y, batch_size=params.batch_size, shuffle=False)
    what = (
        f"{params.backbone} {params.image_size}px, batch {params.batch_size}, "
        f"{keras.backend.backend()}"
    )
    rows = [("training setup", what), ("model alone, in-memory arrays", f"{alone:.1f} images/s")]
    loaders = ["py_dataset"]
    if keras.backend.backend() == "tensorflow":
        loaders.insert(0, "tf_data")
    for loader in loaders:
        data, callbacks = training_input_of(stream, loader)
        rate = images_per_second(data, callbacks=callbacks)
        rows += [
            (f"real input stream ({loader})", f"{rate:.1f} images/s"),
            (f"ratio stream / model alone ({loader})", f"{rate / alone:.2f}"),
        ]
    return rows


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
    parser.add_argument("--data-only", action="store_true", help="skip the training figures")
    parser.add_argument(
        "--report", action="store_true", help="time every notebook (make all) instead"
    )
    args = parser.parse_args(argv)
    overrides = dict(parse_override(s) for s in args.set)
    if args.report:
        rows = bench_report(args.params, overrides)
    else:
        rows = bench_data_steps(args.params, overrides)
    if not (args.data_only or args.report):
        rows += bench_training(args.params, overrides)
    width = max(len(name) for name, _ in rows)
    print(f"machine: {os.cpu_count()} cores")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
