"""The engine's wire format: a JSON header and named arrays in one compact binary message, never a pickle.

Layout: ``MFS1`` | header length (uint32, little endian) | header JSON (UTF-8) | array bytes, one after another.
The header holds ``meta`` (any JSON) and, per array, its name, dtype, shape, encoding and byte count. Boolean arrays
travel as packed bits; any array may be zlib-compressed. A reader checks every size against the message and the
caller's limits before it allocates anything.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

MAGIC = b"MFS1"
MAX_HEADER_BYTES = 1 << 20
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64")
MAX_DIMENSIONS = 4


class WireError(ValueError):
    """A message is malformed or over the limits (the text names what and where)."""


def pack(meta: dict, arrays: dict[str, np.ndarray] | None = None, *, compress: bool = True) -> bytes:
    """One message from JSON-able ``meta`` and named arrays."""
    entries, blobs = [], []
    for name, array in (arrays or {}).items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.name
        if dtype not in DTYPES:
            raise WireError(f"array {name!r}: dtype {dtype} cannot travel; use one of {', '.join(DTYPES)}")
        if dtype == "bool":
            raw = np.packbits(array.ravel())
        else:  # a view of the voxels: no copy on little-endian machines
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
        encoding = "zlib" if compress else "raw"
        blob = zlib.compress(raw, 1) if compress else memoryview(raw)
        entries.append({"name": name, "dtype": dtype, "shape": list(array.shape), "encoding": encoding,
                        "bytes": len(blob)})
        blobs.append(blob)
    header = json.dumps({"meta": meta, "arrays": entries}, separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *blobs])  # the message's one copy


def unpack(data: bytes, *, max_voxels: int = 1 << 31) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a message; ``max_voxels`` bounds each array before it is allocated."""
    view = memoryview(data)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise WireError("not an engine message (missing MFS1 header)")
    (header_bytes,) = struct.unpack("<I", view[4:8])
    if header_bytes > MAX_HEADER_BYTES or 8 + header_bytes > len(view):
        raise WireError(f"message header of {header_bytes} bytes does not fit the {len(view)}-byte message")
    try:
        header = json.loads(bytes(view[8:8 + header_bytes]).decode("utf-8"))
        entries, meta = header["arrays"], header["meta"]
    except (ValueError, KeyError, TypeError):
        raise WireError("message header is not the expected JSON object") from None
    if not isinstance(entries, list) or not isinstance(meta, dict):
        raise WireError("message header is not the expected JSON object")
    offset, arrays = 8 + header_bytes, {}
    for entry in entries:
        name, dtype, shape, blob = _checked_entry(entry, max_voxels, view, offset)
        offset += len(blob)
        arrays[name] = _decode(name, dtype, shape, entry["encoding"], blob)
    if offset != len(view):
        raise WireError(f"message has {len(view) - offset} bytes after its last array")
    return meta, arrays


def _checked_entry(entry, max_voxels: int, view: memoryview, offset: int):
    try:
        name, dtype, shape = str(entry["name"]), str(entry["dtype"]), [int(n) for n in entry["shape"]]
        size, encoding = int(entry["bytes"]), entry["encoding"]
    except (KeyError, TypeError, ValueError):
        raise WireError("an array entry lacks name, dtype, shape, encoding or bytes") from None
    if dtype not in DTYPES:
        raise WireError(f"array {name!r}: dtype {dtype!r} is not accepted")
    if encoding not in ("raw", "zlib"):
        raise WireError(f"array {name!r}: unknown encoding {encoding!r}")
    if not 1 <= len(shape) <= MAX_DIMENSIONS or any(n < 0 for n in shape):
        raise WireError(f"array {name!r}: shape {shape} is not 1 to {MAX_DIMENSIONS} sizes >= 0")
    if int(np.prod(shape, dtype=np.float64)) > max_voxels:
        raise WireError(f"array {name!r}: {shape} holds more than the {max_voxels} voxels allowed")
    if size < 0 or offset + size > len(view):
        raise WireError(f"array {name!r}: {size} bytes announced, {len(view) - offset} left in the message")
    return name, dtype, tuple(shape), bytes(view[offset:offset + size])


def _decode(name: str, dtype: str, shape: tuple, encoding: str, blob: bytes) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    expected = (count + 7) // 8 if dtype == "bool" else count * np.dtype(dtype).itemsize
    if encoding == "zlib":
        inflater = zlib.decompressobj()
        try:
            blob = inflater.decompress(blob, expected + 1)  # never inflates past what the shape needs
        except zlib.error:
            raise WireError(f"array {name!r}: compressed bytes are corrupt") from None
    if len(blob) != expected:
        raise WireError(f"array {name!r}: {len(blob)} bytes for shape {list(shape)} of {dtype} (need {expected})")
    if dtype == "bool":
        return np.unpackbits(np.frombuffer(blob, np.uint8), count=count).astype(bool).reshape(shape)
    return np.frombuffer(blob, np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
