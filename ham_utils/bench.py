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
from typing import TypeVar

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ham_utils.bench", description=__doc__)
    parser.add_argument("--params", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(s) for s in args.set)
    rows = bench_data_steps(args.params, overrides)
    width = max(len(name) for name, _ in rows)
    print(f"machine: {os.cpu_count()} cores")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
