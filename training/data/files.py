"""Readers for data files: IDX images and labels (gzipped or not), ``.npz`` arrays and CSV tables.
Every failure is a ``DataError`` that names the file."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from training.data.registry import DataError

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_NPZ_IMAGE_KEYS = ("x", "images", "x_test", "arr_0")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``.gz`` or plain) as an array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def read_images(path: str | Path) -> np.ndarray:
    """Images from an IDX file or an ``.npz`` (key ``x``, ``images``, ``x_test`` or the only array), float32."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    if path.suffix == ".npz":
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read {path}: {error}") from None
        key = next((k for k in _NPZ_IMAGE_KEYS if k in archive.files), archive.files[0] if len(archive.files) == 1 else None)
        if key is None:
            raise DataError(f"{path}: no image array among {archive.files} (expected one of {_NPZ_IMAGE_KEYS})")
        return np.asarray(archive[key], dtype=np.float32)
    return read_idx(path).astype(np.float32)


def read_table(path: str | Path, columns: list[str]) -> np.ndarray:
    """The named columns of a CSV file (header row) or an ``.npz`` (one array per column), ``(N, len(columns))``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    if path.suffix == ".npz":
        archive = np.load(path, allow_pickle=False)
        missing = [c for c in columns if c not in archive.files]
        if missing:
            raise DataError(f"{path}: no columns {missing}; it has {archive.files}")
        return np.stack([np.asarray(archive[c], dtype=np.float64) for c in columns], axis=1)
    try:
        table = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64, encoding="utf-8")
    except ValueError as error:
        raise DataError(f"cannot parse {path} as CSV: {error}") from None
    missing = [c for c in columns if c not in (table.dtype.names or ())]
    if missing:
        raise DataError(f"{path}: no columns {missing}; it has {list(table.dtype.names or ())}")
    return np.stack([table[c] for c in columns], axis=1)
