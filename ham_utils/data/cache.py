"""Decode and resize every image once into a memory-mapped uint8 array per split.

A cache file is named by the split, the size, the resize mode and a key hashed from
everything that determines its content (image ids, labels, paths, file sizes and
modification times, size, mode, format version): when any input changes, the key changes
and the cache is rebuilt; stale files of the same split, size and mode are removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ham_utils.config import RESIZE_MODES
from ham_utils.data.images import load_image
from ham_utils.errors import DataError

log = logging.getLogger("ham_utils")

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CachedSplit:
    """One split's images (N x size x size x 3 uint8, memory-mapped) and their labels."""

    images: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    path: Path

    def __len__(self) -> int:
        return len(self.labels)


def cache_key(rows: pd.DataFrame, size: int, mode: str) -> str:
    """Hash of everything that determines the cached pixels of these rows."""
    h = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{size}|{mode}".encode())
    for image_id, label, path in rows[["image_id", "label", "path"]].itertuples(index=False):
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(
                f"image {path} (id {image_id}) listed in splits.csv is gone; "
                "restore it or re-run `python -m ham_utils split`"
            ) from e
        h.update(f"{image_id}|{label}|{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_paths(cache_dir: Path, split: str, size: int, mode: str, key: str) -> tuple[Path, Path]:
    stem = f"{split}_{size}px_{mode}_{key}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.csv"


def build_split_cache(
    rows: pd.DataFrame,
    split: str,
    cache_dir: Path,
    size: int,
    mode: str = "squash",
    workers: int | None = None,
    progress: bool = True,
) -> CachedSplit:
    """Return the cached images of ``rows`` (one split), building the cache if needed."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if rows.empty:
        raise DataError(f"split {split!r} has no images; check splits.csv and the split fractions")
    key = cache_key(rows, size, mode)
    npy, index_csv = cache_paths(cache_dir, split, size, mode, key)
    if npy.is_file() and index_csv.is_file():
        log.info("cache hit: %s", npy)
        return open_cache(npy, index_csv)

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_suffix(f".{os.getpid()}.npy.tmp")  # two processes never share a file
    images = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3)
    )
    paths = rows["path"].tolist()
    try:
        # Pillow releases the GIL while decoding and resizing, so threads use every core
        # without the pickling cost of processes.
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = pool.map(lambda p: load_image(p, size, mode), paths)
            bar = tqdm(
                decoded, total=len(paths), desc=f"cache {split} {size}px", disable=not progress
            )
            for i, pixels in enumerate(bar):
                images[i] = pixels
        images.flush()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        del images  # close the memory map
    tmp.replace(npy)
    rows[["image_id", "label"]].to_csv(index_csv, index=False)
    _remove_stale(cache_dir, split, size, mode, keep=npy)
    return open_cache(npy, index_csv)


def open_cache(npy: Path, index_csv: Path) -> CachedSplit:
    index = pd.read_csv(index_csv, dtype={"image_id": str})
    images = np.load(npy, mmap_mode="r")
    if len(images) != len(index):
        raise DataError(f"cache {npy} does not match {index_csv}; delete both and rebuild")
    return CachedSplit(images, index["label"].to_numpy(np.int64), index["image_id"].to_numpy(), npy)


def _remove_stale(cache_dir: Path, split: str, size: int, mode: str, keep: Path) -> None:
    for old in cache_dir.glob(f"{split}_{size}px_{mode}_*"):
        if old.stem != keep.stem:
            log.info("removing stale cache %s", old.name)
            old.unlink()
