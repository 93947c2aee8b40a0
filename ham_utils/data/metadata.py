"""Reading and validating HAM10000 metadata and image folders, and ISIC 2018 ground truth.

Every layout users have is read: the Kaggle archive (``HAM10000_images_part_1/2``, in any
case, possibly one folder down, with its lower-case duplicate folders), a flat ``images/``
folder, images next to the CSV, and the Harvard Dataverse files unzipped into one folder
(whose metadata comes as ``HAM10000_metadata.tab`` unless downloaded in original format).

Nothing is dropped silently: bad input raises :class:`DataError` naming the file and the
fix; rows that are dropped are listed in :attr:`DatasetRead.dropped` with their reason and
announced by a :class:`DataWarning` with their count.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ham_utils.config import CLASSES, ISIC_GROUND_TRUTH_COLUMNS, METADATA_COLUMNS
from ham_utils.data.images import is_image_file, open_rgb
from ham_utils.errors import DataError, DataWarning

log = logging.getLogger("ham_utils")

METADATA_NAMES: tuple[str, ...] = ("ham10000_metadata.csv", "ham10000_metadata.tab")
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "dx", "lesion_id")
DROPPED_COLUMNS: tuple[str, ...] = ("image_id", "reason", "file")
# The name the split step gives DatasetRead.write_dropped's file; warnings point to it.
DROPPED_CSV_NAME = "dropped_rows.csv"
# Same literal as ham_utils.data.synthetic.MARKER_FILE; repeated so that reading real data
# never imports the demo-data generator.
SYNTHETIC_MARKER_FILE = "SYNTHETIC_DATA.txt"
METADATA_SEARCH_DEPTH = 2
SKIPPED_FOLDERS: frozenset[str] = frozenset({"__MACOSX"})  # resource forks in macOS zips
EXAMPLES = 5  # ids quoted in an error message


@dataclass
class DatasetRead:
    """The usable rows of one dataset, the rows that were not usable, and where they came from.

    ``metadata`` has ``config.METADATA_COLUMNS`` plus ``path`` (absolute image path) and
    ``label`` (index into ``config.CLASSES``), one row per usable image in the CSV's order.
    ``dropped`` has one row (``image_id``, ``reason``, ``file``) per CSV row not in
    ``metadata``.
    """

    metadata: pd.DataFrame
    dropped: pd.DataFrame
    source: Path
    data_dir: Path
    synthetic: bool

    def write_dropped(self, path: Path) -> None:
        """Write ``dropped`` as CSV (a header-only file when nothing was dropped)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped.to_csv(path, index=False)


# --- finding files ---------------------------------------------------------------------


def _walk_files(root: Path, max_depth: int) -> Iterator[Path]:
    """Files in ``root`` and up to ``max_depth`` folders below it, skipping hidden entries.

    Symbolic links to folders are followed (an ``images`` link is a common layout); the
    depth limit keeps link loops finite.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not _is_skipped(d)) if depth < max_depth else []
        for name in sorted(filenames):
            if not _is_skipped(name):
                yield Path(dirpath, name)


def _is_skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS


DATA_DIR_FIX = (
    "download HAM10000 with `make data`, or point DATA_DIR=... (parameter data_dir) at the "
    "folder holding HAM10000_metadata.csv and the images"
)
METADATA_CSV_FIX = (
    "check the path (parameter metadata_csv), or leave it empty to find "
    "HAM10000_metadata.csv under the data folder"
)


def _existing_dir(path: Path, what: str, fix: str = DATA_DIR_FIX) -> Path:
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"{what} {path} {state}; {fix}")
    return path.absolute()


def _existing_file(path: Path, what: str, fix: str = METADATA_CSV_FIX) -> Path:
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"{what} {path} {state}; {fix}")
    return path.absolute()


def find_metadata_csv(data_dir: Path) -> Path:
    """The one ``HAM10000_metadata.csv`` (or Dataverse ``.tab``) at most two folders below
    ``data_dir``, in any letter case. None or several is a :class:`DataError`."""
    data_dir = _existing_dir(Path(data_dir), "data folder")
    files = list(_walk_files(data_dir, METADATA_SEARCH_DEPTH))
    found = [p for p in files if p.name.lower() in METADATA_NAMES]
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(
            f"several metadata files under {data_dir}: {', '.join(map(str, found))}; "
            "pass the one to use as metadata_csv (e.g. --set metadata_csv=PATH)"
        )
    tables = [str(p) for p in files if p.suffix.lower() in (".csv", ".tab")]
    listed = ", ".join(tables[:10]) if tables else "no .csv or .tab file at all"
    raise DataError(
        f"no HAM10000_metadata.csv within {METADATA_SEARCH_DEPTH} folders of {data_dir} "
        f"(found: {listed}); pass the metadata file as metadata_csv "
        "(e.g. --set metadata_csv=PATH), or download HAM10000 with `make data`"
    )


def index_images(root: Path, max_depth: int = 3) -> dict[str, Path]:
    """Map each image id (file stem) to its image file under ``root`` (``max_depth`` folders
    deep).

    The Kaggle archive holds every image twice (``HAM10000_images_part_*`` and
    ``ham10000_images_part_*``): copies of equal size are one image and the first path in
    sorted order is used; copies of different sizes are a :class:`DataError`.
    """
    root = _existing_dir(Path(root), "image folder", "check the path")
    copies: dict[str, list[Path]] = defaultdict(list)
    for path in _walk_files(root, max_depth):
        if is_image_file(path):
            copies[path.stem].append(path)
    index: dict[str, Path] = {}
    repeated: list[str] = []
    for image_id in sorted(copies):
        paths = sorted(copies[image_id], key=str)
        if len(paths) > 1:
            _check_same_size(image_id, paths)
            repeated.append(image_id)
        index[image_id] = paths[0]
    if repeated:
        example = sorted(copies[repeated[0]], key=str)
        log.info(
            "%d image ids are in more than one file of the same size under %s (e.g. %s); "
            "using the first path in sorted order, e.g. %s",
            len(repeated),
            root,
            ", ".join(str(p.relative_to(root)) for p in example),
            example[0].relative_to(root),
        )
    return index


def _check_same_size(image_id: str, paths: list[Path]) -> None:
    sizes = {p: p.stat().st_size for p in paths}
    first = paths[0]
    for other in paths[1:]:
        if sizes[other] != sizes[first]:
            raise DataError(
                f"image id {image_id} is in two files of different sizes: {first} "
                f"({sizes[first]:,} bytes) and {other} ({sizes[other]:,} bytes); "
                "delete the wrong copy so that each image id names one image"
            )


# --- reading and checking tables -------------------------------------------------------


def _read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, or a tab-separated Dataverse ``.tab``/``.tsv`` file, with ids as text."""
    sep = "\t" if path.suffix.lower() in (".tab", ".tsv") else ","
    try:
        table = pd.read_csv(
            path,
            sep=sep,
            encoding="utf-8-sig",  # a byte-order mark would otherwise stick to the first name
            dtype={c: str for c in (*METADATA_COLUMNS, "image") if c != "age"},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(
            f"{path} is not a readable table ({type(e).__name__}: {e}); "
            "replace it with the original metadata file"
        ) from e
    table.columns = [str(c).strip() for c in table.columns]
    if table.empty:
        raise DataError(f"{path} has a header but no rows; replace it with the full file")
    return table


def _require_columns(columns: Iterable[str], path: Path, required: Iterable[str]) -> None:
    columns = list(columns)
    missing = [c for c in required if c not in columns]
    if missing:
        why = (
            " (lesion_id is needed to split without leaking lesions between train and test)"
            if "lesion_id" in missing
            else ""
        )
        raise DataError(
            f"{path} lacks the required column(s) {missing}{why}; columns found: {columns}. "
            "Use the original file, or rename its columns"
        )


def _clean_text(column: pd.Series) -> pd.Series:
    """Strip spaces; empty cells become missing."""
    return column.str.strip().replace("", np.nan)


def _checked_image_ids(ids: pd.Series, path: Path) -> pd.Series:
    ids = _clean_text(ids)
    if ids.isna().any():
        lines = (ids.index[ids.isna()] + 2).tolist()  # +2: header line, 1-based numbering
        raise DataError(
            f"{path}: {len(lines)} rows have no image id (lines {lines[:EXAMPLES]}); "
            "fill them in or remove those rows"
        )
    return ids


def _checked_labels(dx: pd.Series, image_ids: pd.Series, path: Path) -> pd.Series:
    """Lower-case, stripped ``dx`` labels; missing or unknown ones are a :class:`DataError`."""
    dx = _clean_text(dx).str.lower()
    if dx.isna().any():
        ids = image_ids[dx.isna()].tolist()
        raise DataError(
            f"{path}: {len(ids)} rows have no dx (diagnosis), e.g. image ids "
            f"{ids[:EXAMPLES]}; fill in dx or remove those rows"
        )
    unknown = dx[~dx.isin(CLASSES)].value_counts()
    if len(unknown):
        listed = ", ".join(f"{label!r} ({n} rows)" for label, n in unknown.items())
        raise DataError(
            f"{path} has dx labels outside the 7 HAM10000 classes: {listed}; known labels: "
            f"{', '.join(CLASSES)}. Correct those labels or remove their rows"
        )
    return dx


def _ham10000_rows(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The metadata columns with cleaned text; optional columns that are absent become NaN."""
    _require_columns(table.columns, path, REQUIRED_COLUMNS)
    rows = pd.DataFrame(index=table.index)
    for column in METADATA_COLUMNS:
        rows[column] = table[column] if column in table.columns else np.nan
    rows["image_id"] = _checked_image_ids(rows["image_id"], path)
    rows["dx"] = _checked_labels(rows["dx"], rows["image_id"], path)
    rows["lesion_id"] = _clean_text(rows["lesion_id"])
    return rows


# --- dropping rows, never silently -----------------------------------------------------


def _dropped(
    image_ids: Iterable[str] = (),
    reasons: str | Iterable[str] = "",
    files: str | Iterable[str] = "",
) -> pd.DataFrame:
    """Rows for :attr:`DatasetRead.dropped`; a single reason or file applies to every id."""
    columns = {"image_id": list(image_ids), "reason": reasons, "file": files}
    return pd.DataFrame(
        {k: v if isinstance(v, str) else list(v) for k, v in columns.items()},
        columns=list(DROPPED_COLUMNS),
    )


def _warn_dropped(n: int, total: int, reason: str, source: Path) -> None:
    warnings.warn(
        f"{source}: {n} of {total} rows dropped ({reason}); their ids are in "
        f"DatasetRead.dropped / {DROPPED_CSV_NAME}",
        DataWarning,
        stacklevel=2,
    )


def _drop_duplicate_rows(rows: pd.DataFrame, source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first of rows repeating an image id with the same dx and lesion_id; rows that
    disagree on dx or lesion_id are a :class:`DataError`."""
    repeated = rows[rows.duplicated("image_id", keep=False)]
    if repeated.empty:
        return rows, _dropped()
    variants = repeated.groupby("image_id")[["dx", "lesion_id"]].nunique(dropna=False)
    conflicting = variants.index[(variants > 1).any(axis=1)]
    if len(conflicting):
        shown = repeated[repeated["image_id"].isin(conflicting[:EXAMPLES])]
        raise DataError(
            f"{source} lists {len(conflicting)} image ids more than once with a different "
            "dx or lesion_id; keep the one correct row of each:\n"
            + shown[["image_id", "dx", "lesion_id"]].to_string(index=False)
        )
    extra = rows.duplicated("image_id", keep="first")
    reason = "duplicate row of an image id with the same dx and lesion_id; first row kept"
    _warn_dropped(int(extra.sum()), len(rows), reason, source)
    return rows[~extra], _dropped(rows.loc[extra, "image_id"], reason, str(source))


def _fill_missing_lesions(rows: pd.DataFrame, source: Path) -> pd.DataFrame:
    missing = rows["lesion_id"].isna()
    if not missing.any():
        return rows
    rows = rows.copy()
    rows.loc[missing, "lesion_id"] = rows.loc[missing, "image_id"]
    warnings.warn(
        f"{source}: {int(missing.sum())} rows have no lesion_id; each of these images is "
        "treated as its own lesion (lesion_id = image_id). Images of one lesion can then "
        "land in both train and test and inflate the metrics; fill in lesion_id to avoid it",
        DataWarning,
        stacklevel=2,
    )
    return rows


def _drop_mixed_label_lesions(
    rows: pd.DataFrame, source: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop every image of a lesion whose images carry different ``dx`` labels, with a
    warning: which label is right cannot be told, and one lesion has one diagnosis."""
    labels = rows.groupby("lesion_id")["dx"].unique()
    mixed = labels[labels.map(len) > 1]
    if mixed.empty:
        return rows, _dropped()
    listed = {lesion: ", ".join(sorted(dx)) for lesion, dx in mixed.items()}
    bad = rows["lesion_id"].isin(mixed.index)
    if bad.all():
        raise DataError(
            f"{source}: every lesion_id has images labelled with different dx (e.g. "
            f"{_examples(listed)}); correct dx or lesion_id so that all images of a lesion "
            "carry its one diagnosis"
        )
    examples = _examples(listed)
    _warn_dropped(
        int(bad.sum()),
        len(rows),
        f"all images of {len(mixed)} lesions whose images carry different dx labels, e.g. "
        f"{examples}; correct dx or lesion_id in the metadata to keep them",
        source,
    )
    reasons = (
        f"lesion {lesion} has images labelled with different dx ({listed[lesion]}); "
        "all its images dropped"
        for lesion in rows.loc[bad, "lesion_id"]
    )
    return rows[~bad], _dropped(rows.loc[bad, "image_id"], reasons, str(source))


def _examples(listed: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in list(listed.items())[:EXAMPLES])


def _extension_hint(image_ids: pd.Series) -> str:
    """A hint when ids that were not found end in an image extension (``ISIC_1.jpg``):
    image files are matched by their name without the extension."""
    with_suffix = image_ids[image_ids.map(lambda i: is_image_file(Path(i)))]
    if with_suffix.empty:
        return ""
    example = with_suffix.iloc[0]
    return (
        f"; {len(with_suffix)} of these image ids end in an image extension (e.g. "
        f"{example}): the image_id column holds ids without the extension "
        f"({Path(example).stem}, not {example}), so remove it from the ids"
    )


def _attach_image_paths(
    rows: pd.DataFrame, index: dict[str, Path], source: Path, image_root: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add the ``path`` column; rows without an image file are dropped with a warning."""
    found = rows["image_id"].isin(index.keys())
    hint = _extension_hint(rows.loc[~found, "image_id"])
    if not found.any():
        stems = ", ".join(list(index)[:EXAMPLES]) or "none"
        fix = f"{hint}; {'if the ids are right, ' if hint else ''}point DATA_DIR at the folder "
        fix += "holding the HAM10000 images"
        raise DataError(
            f"none of the {len(rows)} image ids in {source} (e.g. "
            f"{', '.join(rows['image_id'].head(EXAMPLES))}) has an image file under "
            f"{image_root} ({len(index)} image files found, e.g. {stems}){fix}"
        )
    unused = len(index) - int(found.sum())
    if unused:
        log.info(
            "%d image files under %s have no row in %s and are not used",
            unused,
            image_root,
            source.name,
        )
    reason = f"image file not found under {image_root}"
    dropped = _dropped(rows.loc[~found, "image_id"], reason, str(source))
    if len(dropped):
        _warn_dropped(len(dropped), len(rows), reason + hint, source)
    rows = rows[found].copy()
    rows["path"] = [str(index[i]) for i in rows["image_id"]]
    return rows, dropped


def _decode_error(path: str) -> str | None:
    try:
        open_rgb(path)
    except DataError as e:
        return str(e)
    return None


def _drop_unreadable_images(
    rows: pd.DataFrame, source: Path, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every image fully (threads: Pillow releases the GIL while decoding)."""
    paths = rows["path"].tolist()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        errors = list(
            tqdm(
                pool.map(_decode_error, paths),
                total=len(paths),
                desc="verify images",
                unit="img",
                disable=not progress,
            )
        )
    bad = np.array([e is not None for e in errors], dtype=bool)
    if not bad.any():
        return rows, _dropped()
    messages = [e for e in errors if e is not None]
    if bad.all():
        raise DataError(
            f"none of the {len(rows)} images listed in {source} can be decoded, e.g. {messages[0]}"
        )
    _warn_dropped(int(bad.sum()), len(rows), f"unreadable image, e.g. {messages[0]}", source)
    dropped = _dropped(
        rows.loc[bad, "image_id"],
        (f"unreadable image: {m}" for m in messages),
        rows.loc[bad, "path"],
    )
    return rows[~bad], dropped


def _finish_reading(
    rows: pd.DataFrame,
    source: Path,
    image_root: Path,
    verify_images: bool,
    progress: bool,
) -> DatasetRead:
    """The steps shared by every reader: duplicates, lesions (and their labels), image files,
    decoding, labels."""
    rows, duplicates = _drop_duplicate_rows(rows, source)
    rows = _fill_missing_lesions(rows, source)
    rows, mixed = _drop_mixed_label_lesions(rows, source)
    rows, missing = _attach_image_paths(rows, index_images(image_root), source, image_root)
    unreadable = _dropped()
    if verify_images:
        rows, unreadable = _drop_unreadable_images(rows, source, progress)
    rows = rows.assign(label=rows["dx"].map({c: i for i, c in enumerate(CLASSES)}).astype(int))
    metadata = rows[[*METADATA_COLUMNS, "path", "label"]].reset_index(drop=True)
    dropped = pd.concat([duplicates, mixed, missing, unreadable], ignore_index=True)
    synthetic = any(
        (folder / SYNTHETIC_MARKER_FILE).is_file() for folder in {image_root, source.parent}
    )
    return DatasetRead(metadata, dropped, source, image_root, synthetic)


# --- public readers --------------------------------------------------------------------


def read_ham10000(
    data_dir: Path,
    metadata_csv: Path | None = None,
    verify_images: bool = True,
    progress: bool = True,
) -> DatasetRead:
    """Read and validate HAM10000 metadata and find every image under ``data_dir``.

    ``metadata_csv`` defaults to the one ``HAM10000_metadata.csv`` found by
    :func:`find_metadata_csv`. With ``verify_images`` every image is decoded once so that
    corrupt files are dropped now, not in the middle of training.
    """
    data_dir = _existing_dir(Path(data_dir), "data folder")
    if metadata_csv:
        source = _existing_file(Path(metadata_csv), "metadata file")
    else:
        source = find_metadata_csv(data_dir)
    rows = _ham10000_rows(_read_table(source), source)
    return _finish_reading(rows, source, data_dir, verify_images, progress)


def read_isic_ground_truth(
    csv_path: Path,
    images_dir: Path | None = None,
    verify_images: bool = True,
    progress: bool = True,
) -> DatasetRead:
    """Read an ISIC 2018 Task 3 one-hot ground truth (``image,MEL,NV,...``) with its images.

    ``images_dir`` defaults to the ``*Input*`` folder next to the CSV, else the CSV's own
    folder. Lesions are unknown in these sets, so ``lesion_id`` is the image id and the
    other metadata columns are NaN.
    """
    source = _existing_file(Path(csv_path), "ground-truth file", "check the path")
    image_root = Path(images_dir) if images_dir else _isic_images_dir(source)
    image_root = _existing_dir(image_root, "image folder", "check images_dir")
    table = _read_table(source)
    table = table.rename(columns=_isic_column_name)
    _require_columns(table.columns, source, ("image", *ISIC_GROUND_TRUTH_COLUMNS))
    image_ids = _checked_image_ids(table["image"], source)
    onehot = table[list(ISIC_GROUND_TRUTH_COLUMNS)]
    onehot = onehot.apply(pd.to_numeric, errors="coerce").set_axis(
        [c.lower() for c in ISIC_GROUND_TRUTH_COLUMNS], axis=1
    )
    exact = onehot.isin([0, 1]).all(axis=1) & (onehot.sum(axis=1) == 1)
    if not exact.all():
        bad = image_ids[~exact].tolist()
        raise DataError(
            f"{source}: {len(bad)} rows are not exactly one-hot over "
            f"{list(ISIC_GROUND_TRUTH_COLUMNS)} (each needs one 1.0 and six 0.0), e.g. "
            f"{bad[:EXAMPLES]}; correct or remove those rows"
        )
    rows = pd.DataFrame({c: np.nan for c in METADATA_COLUMNS}, index=table.index)
    rows["image_id"] = image_ids
    rows["lesion_id"] = image_ids
    rows["dx"] = onehot.idxmax(axis=1)
    return _finish_reading(rows, source, image_root, verify_images, progress)


def _isic_column_name(name: str) -> str:
    """``image`` and the upper-case class columns, whatever their case in the file."""
    if name.upper() in ISIC_GROUND_TRUTH_COLUMNS:
        return name.upper()
    return "image" if name.lower() == "image" else name


def _isic_images_dir(source: Path) -> Path:
    """The ``*Input*`` folder beside the ground truth (``..._GroundTruth`` -> ``..._Input``
    when there are several), else the ground truth's own folder."""
    inputs = sorted(p for p in source.parent.iterdir() if p.is_dir() and "input" in p.name.lower())
    if len(inputs) <= 1:
        return inputs[0] if inputs else source.parent
    twin = source.stem.lower().replace("groundtruth", "input")
    matching = [p for p in inputs if p.name.lower() == twin]
    if len(matching) == 1:
        return matching[0]
    raise DataError(
        f"several image folders next to {source}: {', '.join(p.name for p in inputs)}; "
        "pass the one holding its images as images_dir"
    )
