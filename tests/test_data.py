import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ham_utils.config import CLASSES, ISIC_GROUND_TRUTH_COLUMNS, METADATA_COLUMNS
from ham_utils.data.metadata import (
    DROPPED_COLUMNS,
    SYNTHETIC_MARKER_FILE,
    find_metadata_csv,
    index_images,
    read_ham10000,
    read_isic_ground_truth,
)
from ham_utils.errors import DataError, DataWarning

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared/data"
IDS = [f"ISIC_{i:07d}" for i in range(1, 8)]


def jpeg_bytes() -> bytes:
    """A 32x24 JPEG of noise: most of its bytes are scan data, so half a file cuts into it."""
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_images(folder: Path, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        (folder / f"{image_id}.jpg").write_bytes(jpeg_bytes())


def metadata(ids: list[str] = IDS) -> pd.DataFrame:
    """Official column order; images 0 and 1 show one lesion (one diagnosis), as in HAM10000;
    the others are one image per class, from the third class on."""
    return pd.DataFrame(
        {
            "lesion_id": [
                f"HAM_{i // 2:07d}" if i < 2 else f"HAM_{i:07d}" for i in range(len(ids))
            ],
            "image_id": ids,
            "dx": [CLASSES[i % len(CLASSES)] if i != 1 else CLASSES[0] for i in range(len(ids))],
            "dx_type": "histo",
            "age": 50.0,
            "sex": "female",
            "localization": "back",
        }
    )


def write_csv(path: Path, table: pd.DataFrame, sep: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, sep=sep)
    return path


@pytest.fixture
def flat(tmp_path) -> Path:
    """The flat layout: HAM10000_metadata.csv with an images/ folder beside it."""
    write_csv(tmp_path / "HAM10000_metadata.csv", metadata())
    write_images(tmp_path / "images", IDS)
    return tmp_path


def read(data_dir: Path, **kwargs):
    return read_ham10000(data_dir, progress=False, **kwargs)


# --- layouts -----------------------------------------------------------------------------


def kaggle(root: Path) -> None:
    write_csv(root / "HAM10000_metadata.csv", metadata())
    write_images(root / "HAM10000_images_part_1", IDS[:4])
    write_images(root / "HAM10000_images_part_2", IDS[4:])


def kaggle_nested_with_lower_case_copies(root: Path) -> None:
    kaggle(root / "archive")
    write_images(root / "archive" / "ham10000_images_part_1", IDS[:4])
    write_images(root / "archive" / "ham10000_images_part_2", IDS[4:])


def kaggle_lower_case(root: Path) -> None:
    write_csv(root / "ham10000_metadata.csv", metadata())
    write_images(root / "ham10000_images_part_1", IDS[:4])
    write_images(root / "ham10000_images_part_2", IDS[4:])


def next_to_csv(root: Path) -> None:
    write_csv(root / "HAM10000_metadata.csv", metadata())
    write_images(root, IDS)


def dataverse(root: Path) -> None:
    """Both image zips unzipped into one folder; the metadata as Dataverse serves it by
    default: tab-separated .tab with one more column (the source cohort)."""
    write_csv(root / "HAM10000_metadata.tab", metadata().assign(dataset="vidir_modern"), "\t")
    write_images(root, IDS)


@pytest.mark.parametrize(
    "layout",
    [kaggle, kaggle_nested_with_lower_case_copies, kaggle_lower_case, next_to_csv, dataverse],
)
def test_every_layout_is_read_completely(tmp_path, layout):
    layout(tmp_path)
    dataset = read(tmp_path)
    meta = dataset.metadata
    assert list(meta.columns) == [*METADATA_COLUMNS, "path", "label"]
    assert meta["image_id"].tolist() == IDS
    assert dataset.dropped.empty and list(dataset.dropped.columns) == list(DROPPED_COLUMNS)
    assert all(
        Path(p).is_absolute() and Path(p).stem == i for p, i in zip(meta["path"], IDS, strict=True)
    )
    assert [CLASSES[k] for k in meta["label"]] == meta["dx"].tolist()
    assert not dataset.synthetic


def test_flat_layout_and_its_source(flat):
    dataset = read(flat)
    assert dataset.source == flat / "HAM10000_metadata.csv"
    assert {Path(p).parent.name for p in dataset.metadata["path"]} == {"images"}


def test_kaggle_duplicate_folders_use_the_upper_case_copy(tmp_path, caplog):
    kaggle_nested_with_lower_case_copies(tmp_path)
    with caplog.at_level(logging.INFO, logger="ham_utils"):
        dataset = read(tmp_path)
    assert {Path(p).parent.name for p in dataset.metadata["path"]} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }
    assert "7 image ids are in more than one file" in caplog.text


def test_copies_of_different_size_are_an_error_naming_both(flat):
    (flat / "more").mkdir()
    (flat / "more" / f"{IDS[0]}.jpg").write_bytes(jpeg_bytes() + b"\0" * 10)  # a larger copy
    with pytest.raises(DataError, match=r"different sizes.*images/ISIC_0000001.*more/ISIC_0000001"):
        index_images(flat)


def test_index_skips_hidden_and_macos_folders_and_respects_depth(tmp_path):
    write_images(tmp_path / "__MACOSX", ["ISIC_A"])
    write_images(tmp_path / ".cache", ["ISIC_B"])
    write_images(tmp_path / "a" / "b", ["ISIC_C"])
    assert set(index_images(tmp_path)) == {"ISIC_C"}
    assert index_images(tmp_path, max_depth=1) == {}


# --- finding the metadata file -----------------------------------------------------------


def test_metadata_csv_is_found_two_folders_down_in_any_case(tmp_path):
    csv = write_csv(tmp_path / "a" / "b" / "ham10000_METADATA.csv", metadata())
    assert find_metadata_csv(tmp_path) == csv


def test_no_metadata_csv_lists_what_was_found(tmp_path):
    write_csv(tmp_path / "hmnist_28_28_RGB.csv", metadata())
    write_csv(tmp_path / "a" / "b" / "c" / "HAM10000_metadata.csv", metadata())  # too deep
    with pytest.raises(
        DataError, match=r"no HAM10000_metadata.csv.*hmnist_28_28_RGB.csv.*metadata_csv"
    ):
        find_metadata_csv(tmp_path)


def test_several_metadata_csvs_are_listed(tmp_path):
    write_csv(tmp_path / "one" / "HAM10000_metadata.csv", metadata())
    write_csv(tmp_path / "two" / "HAM10000_metadata.csv", metadata())
    with pytest.raises(DataError, match=r"several metadata files.*one/HAM.*two/HAM.*metadata_csv"):
        find_metadata_csv(tmp_path)


def test_explicit_metadata_csv_is_used(flat, tmp_path_factory):
    other = write_csv(tmp_path_factory.mktemp("meta") / "mine.csv", metadata(IDS[:3]))
    dataset = read(flat, metadata_csv=other)
    assert dataset.source == other and len(dataset.metadata) == 3


def test_missing_data_dir_names_it_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"nowhere does not exist.*make data.*DATA_DIR"):
        read(tmp_path / "nowhere")


def test_missing_metadata_csv_names_it(flat):
    with pytest.raises(DataError, match=r"gone\.csv does not exist.*metadata_csv"):
        read(flat, metadata_csv=flat / "gone.csv")


# --- validation of the table -------------------------------------------------------------


@pytest.mark.parametrize("column", ["image_id", "dx", "lesion_id"])
def test_missing_required_column_names_file_column_and_columns_found(flat, column):
    write_csv(flat / "HAM10000_metadata.csv", metadata().drop(columns=column))
    with pytest.raises(DataError, match=rf"HAM10000_metadata.csv lacks .*'{column}'.*found: \["):
        read(flat)


def test_absent_optional_columns_become_nan(flat):
    write_csv(flat / "HAM10000_metadata.csv", metadata()[["image_id", "lesion_id", "dx"]])
    meta = read(flat).metadata
    assert list(meta.columns) == [*METADATA_COLUMNS, "path", "label"]
    assert meta[["dx_type", "age", "sex", "localization"]].isna().all().all()


def test_dx_labels_are_stripped_and_lower_cased(flat):
    table = metadata()
    table["dx"] = [f" {d.upper()} " for d in table["dx"]]
    write_csv(flat / "HAM10000_metadata.csv", table)
    assert read(flat).metadata["dx"].tolist() == metadata()["dx"].tolist()


def test_unknown_labels_are_listed_with_counts_and_the_known_ones(flat):
    table = metadata()
    table.loc[[0, 1], "dx"] = "melanoma"
    table.loc[2, "dx"] = "scc"
    write_csv(flat / "HAM10000_metadata.csv", table)
    with pytest.raises(
        DataError,
        match=r"metadata.csv has dx labels .*'melanoma' \(2 rows\), 'scc' \(1 rows\).*akiec, bcc",
    ):
        read(flat)


def test_missing_dx_is_an_error(flat):
    table = metadata()
    table.loc[3, "dx"] = None
    write_csv(flat / "HAM10000_metadata.csv", table)
    with pytest.raises(DataError, match=rf"metadata.csv: 1 rows have no dx.*{IDS[3]}"):
        read(flat)


def test_identical_duplicate_rows_are_dropped_with_a_warning(flat):
    table = metadata()
    write_csv(flat / "HAM10000_metadata.csv", pd.concat([table, table.iloc[[2, 5]]]))
    with pytest.warns(
        DataWarning, match=r"metadata.csv: 2 of 9 rows dropped \(duplicate.*dropped_rows"
    ):
        dataset = read(flat)
    assert dataset.metadata["image_id"].tolist() == IDS
    assert dataset.dropped["image_id"].tolist() == [IDS[2], IDS[5]]
    assert dataset.dropped["reason"].str.startswith("duplicate").all()


@pytest.mark.parametrize("column", ["dx", "lesion_id"])
def test_conflicting_duplicate_rows_are_an_error(flat, column):
    table = metadata()
    clash = table.iloc[[4]].assign(**{column: "vasc" if column == "dx" else "HAM_9"})
    write_csv(flat / "HAM10000_metadata.csv", pd.concat([table, clash]))
    with pytest.raises(
        DataError, match=rf"(?s)metadata.csv lists 1 image ids .*different.*{IDS[4]}"
    ):
        read(flat)


def test_missing_lesion_id_becomes_its_own_lesion_with_a_warning(flat):
    table = metadata()
    table.loc[[3, 6], "lesion_id"] = None
    write_csv(flat / "HAM10000_metadata.csv", table)
    with pytest.warns(DataWarning, match=r"metadata.csv: 2 rows have no lesion_id.*train and test"):
        meta = read(flat).metadata
    assert meta.loc[[3, 6], "lesion_id"].tolist() == [IDS[3], IDS[6]]
    assert meta.loc[0, "lesion_id"] == metadata().loc[0, "lesion_id"]


def test_lesion_with_different_dx_labels_is_dropped_listed_and_counted(flat):
    table = metadata()
    table.loc[1, "dx"] = "mel"  # the second image of lesion HAM_0000000 (akiec)
    write_csv(flat / "HAM10000_metadata.csv", table)
    with pytest.warns(
        DataWarning,
        match=r"metadata.csv: 2 of 7 rows dropped \(all images of 1 lesions whose images carry "
        r"different dx labels, e.g. HAM_0000000: akiec, mel; correct dx or lesion_id.*"
        r"dropped_rows.csv",
    ):
        dataset = read(flat)
    assert dataset.metadata["image_id"].tolist() == IDS[2:]
    assert dataset.dropped["image_id"].tolist() == IDS[:2]
    assert dataset.dropped["reason"].str.contains("HAM_0000000 has images labelled with").all()


def test_only_lesions_with_different_dx_labels_is_an_error(flat):
    table = metadata(IDS[:2]).assign(dx=["akiec", "nv"])
    write_csv(flat / "HAM10000_metadata.csv", table)
    with pytest.raises(DataError, match=r"metadata.csv: every lesion_id .*HAM_0000000: akiec, nv"):
        read(flat)


# --- images ------------------------------------------------------------------------------


def test_rows_without_image_are_dropped_counted_and_listed(flat):
    for image_id in IDS[1:3]:
        (flat / "images" / f"{image_id}.jpg").unlink()
    with pytest.warns(
        DataWarning,
        match=r"metadata.csv: 2 of 7 rows dropped \(image file not found.*"
        r"DatasetRead.dropped / dropped_rows.csv",
    ):
        dataset = read(flat)
    assert dataset.metadata["image_id"].tolist() == [IDS[0], *IDS[3:]]
    assert dataset.dropped["image_id"].tolist() == IDS[1:3]
    assert dataset.dropped["reason"].str.startswith("image file not found").all()


def test_image_ids_with_the_extension_get_a_hint_when_nothing_is_found(flat):
    write_csv(flat / "HAM10000_metadata.csv", metadata().assign(image_id=[f"{i}.jpg" for i in IDS]))
    with pytest.raises(
        DataError,
        match=rf"none of the 7 image ids .*7 of these image ids end in an image extension .*"
        rf"the image_id column holds ids without the extension \({IDS[0]}, not {IDS[0]}\.jpg\)",
    ):
        read(flat)


def test_some_image_ids_with_the_extension_get_the_hint_in_the_warning(flat):
    table = metadata()
    table.loc[5, "image_id"] = f"{IDS[5]}.JPG"
    write_csv(flat / "HAM10000_metadata.csv", table)
    with pytest.warns(
        DataWarning, match=r"1 of 7 rows dropped \(image file not found.*without the extension"
    ):
        dataset = read(flat)
    assert dataset.dropped["image_id"].tolist() == [f"{IDS[5]}.JPG"]


def test_no_image_at_all_is_an_error_naming_the_folder(flat, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match=rf"none of the 7 image ids .*under {empty}"):
        read(empty, metadata_csv=flat / "HAM10000_metadata.csv")


def test_images_without_metadata_row_are_counted_in_one_info_line(flat, caplog):
    write_images(flat / "images", ["ISIC_9000001", "ISIC_9000002"])
    with caplog.at_level(logging.INFO, logger="ham_utils"):
        assert len(read(flat).metadata) == len(IDS)
    assert "2 image files under" in caplog.text


@pytest.fixture
def broken_images(flat) -> list[str]:
    """Three unreadable files among the seven images."""
    images = flat / "images"
    whole = (images / f"{IDS[0]}.jpg").read_bytes()
    (images / f"{IDS[0]}.jpg").write_bytes(whole[: len(whole) // 2])
    (images / f"{IDS[1]}.jpg").write_bytes(b"")
    (images / f"{IDS[2]}.jpg").write_text("not an image, just text")
    return IDS[:3]  # truncated, empty, text


def test_unreadable_images_are_dropped_with_their_reason(flat, broken_images):
    with pytest.warns(DataWarning, match=r"metadata.csv: 3 of 7 rows dropped \(unreadable image"):
        dataset = read(flat)
    assert dataset.metadata["image_id"].tolist() == IDS[3:]
    dropped = dataset.dropped.set_index("image_id")
    assert sorted(dropped.index) == sorted(broken_images)
    assert dropped["reason"].str.startswith("unreadable image:").all()
    assert "truncated" in dropped.loc[IDS[0], "reason"]
    assert "0 bytes" in dropped.loc[IDS[1], "reason"]
    assert dropped.loc[IDS[0], "file"].endswith(f"images/{IDS[0]}.jpg")


def test_without_verification_unreadable_images_are_kept(flat, broken_images):
    assert len(read(flat, verify_images=False).metadata) == len(IDS)


def test_no_readable_image_at_all_is_an_error(flat):
    for path in (flat / "images").iterdir():
        path.write_bytes(b"")
    with pytest.raises(
        DataError, match=r"none of the 7 images listed in .*metadata.csv can be decoded"
    ):
        read(flat)


def test_write_dropped_writes_a_header_even_when_nothing_was_dropped(flat, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "sub" / "dropped_rows.csv"
    read(flat).write_dropped(out)
    written = pd.read_csv(out)
    assert written.empty and list(written.columns) == list(DROPPED_COLUMNS)


def test_write_dropped_lists_every_dropped_row(flat, tmp_path_factory):
    (flat / "images" / f"{IDS[4]}.jpg").unlink()
    with pytest.warns(DataWarning):
        dataset = read(flat)
    out = tmp_path_factory.mktemp("out") / "dropped_rows.csv"
    dataset.write_dropped(out)
    assert pd.read_csv(out)["image_id"].tolist() == [IDS[4]]


def test_synthetic_marker_is_reported(flat):
    (flat / SYNTHETIC_MARKER_FILE).write_text("synthetic")
    assert read(flat).synthetic


def test_marker_name_matches_the_generator():
    from ham_utils.data import synthetic

    assert synthetic.MARKER_FILE == SYNTHETIC_MARKER_FILE


# --- ISIC 2018 Task 3 ground truth -------------------------------------------------------


def isic_ground_truth(ids: list[str], order: list[str]) -> pd.DataFrame:
    """One-hot rows, class i of CLASSES for image i, columns in ``order``."""
    rows = [
        {c: float(c.lower() == CLASSES[i % 7]) for c in ISIC_GROUND_TRUTH_COLUMNS}
        for i in range(len(ids))
    ]
    return pd.DataFrame(rows, index=ids)[order].rename_axis("image").reset_index()


@pytest.fixture
def isic(tmp_path) -> Path:
    order = ["image", *reversed(ISIC_GROUND_TRUTH_COLUMNS)][1:]
    csv = write_csv(tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv", isic_ground_truth(IDS, order))
    write_images(tmp_path / "ISIC2018_Task3_Test_Input", IDS)
    return csv


def test_isic_ground_truth_maps_to_our_classes(isic):
    dataset = read_isic_ground_truth(isic, progress=False)
    meta = dataset.metadata
    assert meta["dx"].tolist() == list(CLASSES)
    assert meta["label"].tolist() == list(range(7))
    assert (meta["lesion_id"] == meta["image_id"]).all()
    assert meta[["dx_type", "age", "sex", "localization"]].isna().all().all()
    assert dataset.data_dir.name == "ISIC2018_Task3_Test_Input"
    assert {Path(p).parent.name for p in meta["path"]} == {"ISIC2018_Task3_Test_Input"}


def test_isic_images_next_to_the_csv_or_given_explicitly(isic, tmp_path_factory):
    (isic.parent / "ISIC2018_Task3_Test_Input").rename(isic.parent / "pictures")
    assert len(read_isic_ground_truth(isic, isic.parent / "pictures", progress=False).metadata) == 7
    assert len(read_isic_ground_truth(isic, progress=False).metadata) == 7  # searched from the CSV


def test_isic_ground_truth_as_dataverse_tab(isic):
    tab = write_csv(isic.with_suffix(".tab"), pd.read_csv(isic), "\t")
    isic.unlink()
    assert read_isic_ground_truth(tab, progress=False).metadata["dx"].tolist() == list(CLASSES)


def test_isic_rows_that_are_not_one_hot_are_listed(isic):
    table = pd.read_csv(isic)
    table.loc[1, "MEL"] = 1.0  # two ones
    table.loc[3, ISIC_GROUND_TRUTH_COLUMNS] = 0.0  # none
    table.loc[5, "NV"] = 0.5
    write_csv(isic, table)
    with pytest.raises(
        DataError,
        match=rf"GroundTruth.csv: 3 rows are not exactly one-hot.*{IDS[1]}.*{IDS[3]}.*{IDS[5]}",
    ):
        read_isic_ground_truth(isic, progress=False)


def test_isic_missing_class_column_is_an_error(isic):
    write_csv(isic, pd.read_csv(isic).drop(columns="DF"))
    with pytest.raises(DataError, match=r"GroundTruth.csv lacks .*'DF'"):
        read_isic_ground_truth(isic, progress=False)


# --- the real data on this machine, when present ------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "ham10000_originals_124").is_dir(), reason="no real data")
def test_real_kaggle_layout_sample_reads_without_drops():
    dataset = read(SHARED_DATA / "ham10000_originals_124")
    assert len(dataset.metadata) == 124 and dataset.dropped.empty


@pytest.mark.skipif(not (SHARED_DATA / "ham10000_200x150").is_dir(), reason="no real data")
def test_real_full_metadata_finds_every_image():
    dataset = read(SHARED_DATA / "ham10000_200x150", verify_images=False)
    assert len(dataset.metadata) == 10_015 and dataset.dropped.empty
    assert dataset.metadata["lesion_id"].nunique() == 7_470
