"""Structure heads kept per structure and model beside a template set: ``<folder>/heads/<structure>.<model>.npz``.

Why: what the user taught the tool about a structure in one volume (segment/structure_head.py) warm-starts the same
structure in the next one, in the Slicer panel and in the batch alike. A head is a handful of plain arrays; they are
stored with ``numpy.savez`` and read with ``allow_pickle=False``, written to a temporary file first and renamed, so a
crash never leaves half a head. No torch here: the Slicer side stores heads too.
"""

from __future__ import annotations

import os
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np

_NUMBERS = ("weights", "mean", "scale")
# A head's keys that travel in its JSON form; the rest (atlas grids and their sources, adapted decoder layers) are
# bulk arrays and travel beside it as wire arrays.
JSON_KEYS = (*_NUMBERS, "format", "model", "bias", "volumes", "cells", "shape", "shape_volumes")
# A new file, opened for writing bytes (O_BINARY: Windows would otherwise translate newlines in the numbers).
_NEW_BINARY_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,99}$")


class HeadStoreError(ValueError):
    """A head file that cannot be read, or a structure or model name that cannot be a file name."""


class HeadStore:
    """The ``heads`` folder of a template set (or any folder the user chose)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder) / "heads"

    def path(self, structure: str, model: str) -> Path:
        for what, name in (("structure", structure), ("model", model)):
            if not _NAME.match(str(name)) or ".." in str(name):
                raise HeadStoreError(f"the {what} name {name!r} cannot name a head file (letters, digits, spaces "
                                     "and _ . ( ) + - only)")
        return self.folder / f"{structure}.{model}.npz"

    def load(self, structure: str, model: str) -> dict[str, np.ndarray] | None:
        """The stored head's arrays, or None when this structure has none for ``model`` yet."""
        path = self.path(structure, model)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: np.array(data[key]) for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise HeadStoreError(f"the stored head {path} cannot be read ({error}); delete it to start afresh") \
                from error

    def save(self, structure: str, model: str, arrays: dict[str, np.ndarray]) -> Path:
        """Write the head through a temporary file of its own (two writers never share one), created with the
        permissions of any new file (mode 0666 less the umask): a heads folder beside a shared template set stays
        readable by the team, as the template files are."""
        path = self.path(structure, model)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
        handle = os.open(temporary, _NEW_BINARY_FILE, 0o666)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **arrays)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def structures(self, model: str) -> list[str]:
        suffix = f".{model}.npz"
        return sorted(p.name[:-len(suffix)] for p in self.folder.glob(f"*{suffix}")) if self.folder.is_dir() else []


def head_to_json(arrays: dict) -> dict:
    """A head's arrays (``StructureHead.to_arrays`` or a stored file) as JSON, the form heads travel in."""
    out = {key: np.asarray(arrays[key], np.float32).reshape(-1).tolist() for key in _NUMBERS}
    out.update(format=str(arrays["format"]), model=str(arrays["model"]), bias=float(arrays["bias"]),
               volumes=int(arrays["volumes"]), cells=int(arrays["cells"]))
    if "shape" in arrays:  # the shape grid, to 3 decimals: a share of volumes needs no more
        out.update(shape=np.round(np.asarray(arrays["shape"], np.float32).reshape(-1), 3).tolist(),
                   shape_volumes=int(arrays.get("shape_volumes", 1)))
    return out


def head_wire_arrays(arrays: dict | None, prefix: str) -> dict[str, np.ndarray]:
    """A head's bulk arrays (those not in its JSON form) as named wire arrays (``<prefix>.atlas_images`` ...)."""
    return {f"{prefix}.{key}": np.asarray(value) for key, value in (arrays or {}).items() if key not in JSON_KEYS}


def with_head_wire_arrays(head_arrays: dict[str, np.ndarray], wire_arrays: dict, prefix: str) -> dict[str, np.ndarray]:
    """A head's arrays from its JSON form, with the bulk arrays that came as wire arrays under ``prefix``."""
    start = f"{prefix}."
    bulk = {key[len(start):]: value for key, value in wire_arrays.items() if key.startswith(start)}
    return head_arrays | {key: value for key, value in bulk.items() if key not in JSON_KEYS}


def json_to_head_arrays(value) -> dict[str, np.ndarray]:
    """The arrays of a head in JSON form; ``StructureHead.from_arrays`` checks that they fit together."""
    if not isinstance(value, dict) or any(key not in value for key in (*_NUMBERS, "format", "model", "bias")):
        raise HeadStoreError("the structure head is incomplete")
    try:
        arrays = {key: np.asarray(value[key], np.float32).reshape(-1) for key in _NUMBERS}
        arrays.update(format=np.array(str(value["format"])), model=np.array(str(value["model"])),
                      bias=np.array(float(value["bias"]), np.float32), volumes=np.array(int(value.get("volumes", 0))),
                      cells=np.array(int(value.get("cells", 0))))
        if "shape" in value:
            arrays.update(shape=np.asarray(value["shape"], np.float32).reshape(-1),
                          shape_volumes=np.array(int(value.get("shape_volumes", 1))))
    except (TypeError, ValueError) as error:
        raise HeadStoreError(f"the structure head is not numeric ({error})") from None
    return arrays
