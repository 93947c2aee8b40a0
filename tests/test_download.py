import io
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ham_utils.config import CLASSES
from ham_utils.data import download
from ham_utils.data.download import (
    KAGGLE_ARCHIVE_NAME,
    download_kaggle,
    kaggle_credentials,
    unpack_archive,
    verify_layout,
)
from ham_utils.errors import DataError

IDS = [f"ISIC_{i:07d}" for i in range(24306, 24314)]
CREDENTIAL_ENV = (
    "KAGGLE_API_TOKEN",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_CONFIG_DIR",
    "XDG_CONFIG_HOME",
)


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (180, 120, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def metadata_csv(ids: list[str]) -> str:
    table = pd.DataFrame(
        {
            "lesion_id": [f"HAM_{i // 2:07d}" for i in range(len(ids))],
            "image_id": ids,
            "dx": [CLASSES[(i // 2) % 7] for i in range(len(ids))],  # one diagnosis per lesion
            "dx_type": "histo",
            "age": 45.0,
            "sex": "male",
            "localization": "trunk",
        }
    )
    return table.to_csv(index=False)


def kaggle_zip(path: Path, top: str = "archive/") -> Path:
    """The Kaggle archive's layout, one folder down, with its lower-case duplicate folders
    and the hmnist tables beside the metadata."""
    image = jpeg_bytes()
    half = len(IDS) // 2
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}HAM10000_metadata.csv", metadata_csv(IDS))
        zf.writestr(f"{top}hmnist_8_8_L.csv", "pixel0000,label\n0,1\n")
        for part, ids in ((1, IDS[:half]), (2, IDS[half:])):
            for folder in (f"HAM10000_images_part_{part}", f"ham10000_images_part_{part}"):
                for image_id in ids:
                    zf.writestr(f"{top}{folder}/{image_id}.jpg", image)
    return path


@pytest.fixture
def no_credentials(tmp_path, monkeypatch) -> Path:
    """An empty home folder and no Kaggle variables; returns the home folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


def fake_kaggle(folder: Path, body: str) -> Path:
    """An executable standing in for the kaggle tool; ``body`` sees ``dest`` (--path)."""
    script = folder / "kaggle"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "dest = sys.argv[sys.argv.index('--path') + 1]\n"
        f"{body}\n"
    )
    script.chmod(0o755)
    return script


def test_unpack_and_verify_the_kaggle_layout(tmp_path):
    archive = kaggle_zip(tmp_path / KAGGLE_ARCHIVE_NAME)
    dest = unpack_archive(archive, tmp_path / "ham10000", progress=False)
    assert (dest / "archive" / "ham10000_images_part_2" / f"{IDS[-1]}.jpg").is_file()
    dataset = verify_layout(dest)
    assert dataset.metadata["image_id"].tolist() == IDS
    assert dataset.dropped.empty
    assert {Path(p).parent.name for p in dataset.metadata["path"]} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }


def test_unpack_keeps_members_inside_dest(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.txt", "x")
    unpack_archive(archive, tmp_path / "dest", progress=False)
    assert not (tmp_path / "outside.txt").exists()
    assert (tmp_path / "dest" / "outside.txt").is_file()


def test_truncated_archive_is_an_error_naming_it(tmp_path):
    archive = kaggle_zip(tmp_path / KAGGLE_ARCHIVE_NAME)
    archive.write_bytes(archive.read_bytes()[:1000])
    with pytest.raises(DataError, match=rf"{KAGGLE_ARCHIVE_NAME} is not a complete zip.*again"):
        unpack_archive(archive, tmp_path / "dest", progress=False)


def test_verify_layout_rejects_a_folder_without_images(tmp_path):
    (tmp_path / "HAM10000_metadata.csv").write_text(metadata_csv(IDS))
    with pytest.raises(DataError, match="none of the 8 image ids"):
        verify_layout(tmp_path)


def test_no_credentials_is_an_error_with_both_ways_out(no_credentials, tmp_path):
    assert kaggle_credentials() is None
    with pytest.raises(DataError) as error:
        download_kaggle(tmp_path / "ham10000", progress=False)
    message = str(error.value)
    for step in ("Create New Token", "~/.kaggle/kaggle.json", "chmod 600", "DBW86T", "DATA_DIR="):
        assert step in message
    assert not (tmp_path / "ham10000").exists()


@pytest.mark.parametrize(
    "where", ["username_and_key", "api_token", "kaggle_json", "config_dir", "access_token"]
)
def test_credentials_are_found_where_the_kaggle_tool_looks(no_credentials, monkeypatch, where):
    home = no_credentials
    if where == "username_and_key":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "0123")
        expected = "KAGGLE_USERNAME"
    elif where == "api_token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123")
        expected = "KAGGLE_API_TOKEN"
    else:
        folder = home / ("elsewhere" if where == "config_dir" else ".kaggle")
        name = "access_token" if where == "access_token" else "kaggle.json"
        folder.mkdir()
        (folder / name).write_text('{"username": "someone", "key": "0123"}')
        if where == "config_dir":
            monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(folder))
        expected = str(folder / name)
    assert expected in kaggle_credentials()


def test_only_half_a_username_key_pair_is_not_credentials(no_credentials, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    assert kaggle_credentials() is None


def test_failed_download_is_a_clear_error(no_credentials, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123")
    script = fake_kaggle(tmp_path, "sys.exit(1)")
    monkeypatch.setattr(download, "kaggle_executable", lambda: script)
    with pytest.raises(DataError, match=r"(?s)Kaggle download of .* failed \(exit code 1.*DBW86T"):
        download_kaggle(tmp_path / "ham10000", progress=False)


def test_download_unpacks_verifies_and_removes_the_archive(no_credentials, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123")
    archive = kaggle_zip(tmp_path / "served.zip", top="")
    script = fake_kaggle(
        tmp_path, f"shutil.copy({str(archive)!r}, dest + '/{KAGGLE_ARCHIVE_NAME}')"
    )
    monkeypatch.setattr(download, "kaggle_executable", lambda: script)
    dest = download_kaggle(tmp_path / "ham10000", progress=False)
    assert dest == tmp_path / "ham10000"
    assert not (dest / KAGGLE_ARCHIVE_NAME).exists()
    assert verify_layout(dest).metadata["image_id"].tolist() == IDS


def test_complete_data_is_not_downloaded_again(no_credentials, tmp_path, monkeypatch):
    dest = unpack_archive(kaggle_zip(tmp_path / "a.zip"), tmp_path / "ham10000", progress=False)
    monkeypatch.setattr(download, "kaggle_executable", lambda: pytest.fail("downloaded again"))
    assert download_kaggle(dest, progress=False) == dest
