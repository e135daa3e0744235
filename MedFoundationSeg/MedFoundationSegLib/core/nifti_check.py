"""Checks ITK's NIfTI reader does not make: it zero-fills a truncated file and reads NaN voxels as 0.

The header gives the data size; the file (decompressed, for ``.nii.gz``) must hold it, and float data must be finite.
One streaming pass, so a large volume is never held twice.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

CHUNK_BYTES = 1 << 24
# NIfTI datatype codes of real floating-point voxels -> numpy type (byte order added from the header).
FLOAT_TYPES = {16: "f4", 64: "f8"}


class NiftiError(ValueError):
    pass


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _header(raw: bytes, path: Path) -> tuple[int, int, int, str]:
    """(data bytes, vox_offset, datatype, byte order) from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", raw[:4])[0] if len(raw) >= 4 else 0
        if size == 348 and len(raw) >= 348:
            dims = struct.unpack(order + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(order + "2h", raw[70:74])
            offset = int(struct.unpack(order + "f", raw[108:112])[0])
            break
        if size == 540 and len(raw) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", raw[12:16])
            dims = struct.unpack(order + "8q", raw[16:80])
            offset = struct.unpack(order + "q", raw[168:176])[0]
            break
    else:
        raise NiftiError(f"cannot read {path}: it has no valid NIfTI header")
    rank = dims[0]
    if not 1 <= rank <= 7 or any(d < 1 for d in dims[1:rank + 1]):
        raise NiftiError(f"{path} has an invalid NIfTI header (dimensions {list(dims[1:max(rank, 1) + 1])})")
    return int(np.prod(dims[1:rank + 1], dtype=np.int64)) * bitpix // 8, max(offset, 348), datatype, order


def check_nifti(path: str | Path) -> None:
    """Raise NiftiError naming the file when its data is shorter than the header says or holds NaN/Inf values."""
    path = Path(path)
    try:
        with _open(path) as stream:
            head = stream.read(544)
            data_bytes, offset, datatype, order = _header(head, path)
            dtype = np.dtype(order + FLOAT_TYPES[datatype]) if datatype in FLOAT_TYPES else None
            pending = head[offset:] if len(head) > offset else b""
            skipped = min(len(head), offset)
            if skipped < offset:
                stream.read(offset - skipped)
            seen, bad, carry = 0, 0, b""
            while seen < data_bytes:
                chunk = pending or stream.read(min(CHUNK_BYTES, data_bytes - seen))
                pending = b""
                if not chunk:
                    break
                chunk = chunk[:data_bytes - seen]
                seen += len(chunk)
                if dtype is not None:
                    values = carry + chunk
                    usable = len(values) - len(values) % dtype.itemsize
                    bad += int((~np.isfinite(np.frombuffer(values[:usable], dtype))).sum())
                    carry = values[usable:]
    except (EOFError, OSError, zlib.error) as error:
        raise NiftiError(f"cannot read {path}: it is damaged or truncated ({error})") from None
    if seen < data_bytes:
        raise NiftiError(f"{path} is truncated: its header says {data_bytes} bytes of voxel data, the file holds "
                         f"{seen}")
    if bad:
        raise NiftiError(f"{path} contains {bad} NaN or infinite voxel values")
