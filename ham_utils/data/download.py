"""``make data``: download HAM10000 from Kaggle, unpack it and check its layout.

The download runs the ``kaggle`` command-line tool of this environment. The ``kaggle``
package is never imported here: it authenticates on import and raises without credentials.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

from tqdm import tqdm

from ham_utils.data.metadata import DatasetRead, read_ham10000
from ham_utils.errors import DataError, DataWarning

log = logging.getLogger("ham_utils")

KAGGLE_DATASET = "kmader/skin-cancer-mnist-ham10000"
KAGGLE_ARCHIVE_NAME = KAGGLE_DATASET.split("/")[1] + ".zip"
DATAVERSE_DOI = "doi:10.7910/DVN/DBW86T"
DATAVERSE_URL = f"https://dataverse.harvard.edu/dataset.xhtml?persistentId={DATAVERSE_DOI}"

DATAVERSE_STEPS = f"""\
Or download HAM10000 from the Harvard Dataverse ({DATAVERSE_DOI}, {DATAVERSE_URL}):
  HAM10000_images_part_1.zip, HAM10000_images_part_2.zip and HAM10000_metadata
  (the .tab it offers is read as well as the original .csv). Unzip both image zips and
  put the metadata file in one folder, then run e.g. `make all DATA_DIR=/that/folder`."""

NO_CREDENTIALS = f"""\
No Kaggle credentials found, so HAM10000 cannot be downloaded from Kaggle. To add them:
  1. Sign in at https://www.kaggle.com, open Settings > API > Create New Token;
     your browser downloads kaggle.json.
  2. mkdir -p ~/.kaggle && mv ~/Downloads/kaggle.json ~/.kaggle/
     chmod 600 ~/.kaggle/kaggle.json
     (or put it in the folder named by KAGGLE_CONFIG_DIR, or export KAGGLE_USERNAME and
     KAGGLE_KEY; a newer API token works too: export KAGGLE_API_TOKEN=... or save it to
     ~/.kaggle/access_token)
  3. Run `make data` again.
{DATAVERSE_STEPS}"""


def _credential_files() -> list[Path]:
    """Where the Kaggle tool looks for credential files, in its order."""
    home = Path.home()
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR")
    xdg_dir = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    json_dirs = [Path(config_dir)] if config_dir else [home / ".kaggle", xdg_dir]
    return [
        *(folder / "kaggle.json" for folder in json_dirs),
        home / ".kaggle" / "access_token",
        home / ".kaggle" / "access_token.txt",
        home / ".kaggle" / "credentials.json",  # written by `kaggle auth login`
    ]


def kaggle_credentials() -> str | None:
    """Where Kaggle credentials were found (an environment variable or a file), or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "environment variable KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "environment variables KAGGLE_USERNAME and KAGGLE_KEY"
    for path in _credential_files():
        if path.is_file() and path.stat().st_size > 0:
            return str(path)
    return None


def kaggle_executable() -> Path:
    """The ``kaggle`` command installed next to this Python, else the one on PATH."""
    bin_dir = Path(sys.executable).parent
    for name in ("kaggle", "kaggle.exe"):
        if (bin_dir / name).is_file():
            return bin_dir / name
    found = shutil.which("kaggle")
    if found is None:
        raise DataError(
            "the kaggle command-line tool is not installed; run "
            f"`{sys.executable} -m pip install kaggle` (it is in requirements.txt)\n"
            + DATAVERSE_STEPS
        )
    return Path(found)


def unpack_archive(archive: Path, dest: Path, progress: bool = True) -> Path:
    """Unpack a zip archive into ``dest`` with a progress bar over its bytes; return ``dest``.

    ``ZipFile.extract`` drops absolute and ``..`` parts of member names, so nothing lands
    outside ``dest``; every member's CRC is checked while it is read.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist; download it again")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            bar = tqdm(
                total=total,
                desc=f"unpack {archive.name}",
                unit="B",
                unit_scale=True,
                disable=not progress,
            )
            with bar:
                for member in members:
                    zf.extract(member, dest)
                    bar.update(member.file_size)
    except (zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"{archive} is not a complete zip archive ({e}); delete it and download it again"
        ) from e
    return dest


def verify_layout(data_dir: Path) -> DatasetRead:
    """Read ``data_dir`` as :func:`~ham_utils.data.metadata.read_ham10000` does, without decoding
    the images, and check that at least one image was found."""
    dataset = read_ham10000(Path(data_dir), verify_images=False, progress=False)
    if dataset.metadata.empty:
        raise DataError(f"no usable image in {data_dir}; its layout is not HAM10000's")
    log.info(
        "%s: %d images of %d lesions listed in %s; %d metadata rows dropped",
        dataset.data_dir,
        len(dataset.metadata),
        dataset.metadata["lesion_id"].nunique(),
        dataset.source.name,
        len(dataset.dropped),
    )
    return dataset


def _already_complete(dest: Path) -> bool:
    """Whether ``dest`` holds HAM10000 with a usable image for every metadata row."""
    if not dest.is_dir():
        return False
    with warnings.catch_warnings():
        # A probe: an incomplete folder is downloaded again, which the log says.
        warnings.simplefilter("ignore", DataWarning)
        try:
            dataset = verify_layout(dest)
        except DataError:
            return False
    if len(dataset.dropped):
        log.info("%s has %d unusable metadata rows; downloading again", dest, len(dataset.dropped))
    return dataset.dropped.empty


def _run_kaggle_download(dest: Path, progress: bool) -> Path:
    command = [
        str(kaggle_executable()),
        *("datasets", "download", KAGGLE_DATASET, "--path", str(dest)),
        *(() if progress else ("--quiet",)),
    ]
    log.info("running %s", " ".join(command))
    try:
        completed = subprocess.run(command, check=False)
    except OSError as e:
        raise DataError(f"could not run {command[0]} ({e})\n{DATAVERSE_STEPS}") from e
    archive = dest / KAGGLE_ARCHIVE_NAME
    if completed.returncode != 0 or not archive.is_file():
        raise DataError(
            f"the Kaggle download of {KAGGLE_DATASET} failed (exit code "
            f"{completed.returncode}; the kaggle tool's message is above). Check the internet "
            "connection and the credentials, then run `make data` again.\n" + DATAVERSE_STEPS
        )
    return archive


def download_kaggle(dest: Path, progress: bool = True) -> Path:
    """Download the Kaggle HAM10000 archive into ``dest``, unpack it, check the layout and
    return ``dest``. A ``dest`` that already holds a readable HAM10000 is left as it is."""
    dest = Path(dest)
    if _already_complete(dest):
        log.info("%s already holds HAM10000; nothing to download", dest)
        return dest
    where = kaggle_credentials()
    if where is None:
        raise DataError(NO_CREDENTIALS)
    log.info("Kaggle credentials: %s", where)
    dest.mkdir(parents=True, exist_ok=True)
    archive = _run_kaggle_download(dest, progress)
    unpack_archive(archive, dest, progress)
    verify_layout(dest)
    archive.unlink()  # ~5 GB; the unpacked files are the raw data from here on
    log.info("HAM10000 is in %s; use it with `make all DATA_DIR=%s`", dest, dest)
    return dest
