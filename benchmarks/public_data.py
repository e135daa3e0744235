"""Public labelled volumes for the benchmarks, fetched from Debian's archive and cached outside the repository.

Why: no registry reachable here carries organ-labelled CT; the Colin27 T1 MRI with the AAL atlas (Debian package
``mricron-data``) is the one real labelled 3D volume we can have. It is fetched with ``apt-get download`` (works as a
normal user, installs nothing) and unpacked with ``dpkg-deb -x``; only the three files used are kept, under
``$MEDFOUNDATIONSEG_CACHE/data`` or the user cache dir (``~/.cache/medfoundationseg/data``). Never committed.

    python benchmarks/public_data.py          # fetch (if needed) and print what is cached
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "mricron-data"
MEMBERS = {  # cached name -> path inside the package
    "ch2.nii.gz": "usr/share/mricron/templates/ch2.nii.gz",
    "aal.nii.gz": "usr/share/mricron/templates/aal.nii.gz",
    "aal.nii.txt": "usr/share/mricron/templates/aal.nii.txt",
}


class PublicDataError(RuntimeError):
    """The public data could not be fetched or read."""


def data_dir() -> Path:
    """``<user cache>/data``; follows $MEDFOUNDATIONSEG_CACHE like the weights cache does."""
    from MedFoundationSegLib.core.weights import user_cache_dir

    return user_cache_dir() / "data"


def colin27_dir() -> Path:
    return data_dir() / "colin27_aal"


def fetch_colin27(force: bool = False) -> Path:
    """Cache ch2 (Colin27 T1) + AAL labels + names; returns the folder. Needs apt-get and dpkg-deb (Debian/Ubuntu)."""
    target = colin27_dir()
    if not force and all((target / name).is_file() for name in MEMBERS):
        return target
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PublicDataError(f"{tool} is not available: fetch the Debian package {PACKAGE} by hand, unpack it "
                                  f"with dpkg-deb -x and copy {', '.join(MEMBERS)} into {target}")
    with tempfile.TemporaryDirectory(prefix="mfs_data_") as tmp:
        tmp = Path(tmp)
        done = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = sorted(tmp.glob(f"{PACKAGE}_*.deb"))
        if done.returncode != 0 or not debs:
            raise PublicDataError(f"`apt-get download {PACKAGE}` failed (run `apt-get update` once first?): "
                                  f"{done.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "x")], check=True, capture_output=True)
        target.mkdir(parents=True, exist_ok=True)
        for name, member in MEMBERS.items():
            source = tmp / "x" / member
            if not source.is_file():
                raise PublicDataError(f"{PACKAGE} has no {member}; the package layout changed")
            partial = target / f".{name}.part"
            shutil.copyfile(source, partial)
            partial.replace(target / name)
    return target


def read_aal_names(path: Path) -> dict[int, str]:
    """``aal.nii.txt`` lines are ``id name [extra]`` -> {id: name}."""
    names = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    if not names:
        raise PublicDataError(f"{path} holds no 'id name' lines")
    return names


def load_colin27():
    """(T1 Volume, AAL label Volume on the same grid, {label id: name})."""
    import numpy as np
    from MedFoundationSegLib.core.volume import read_volume

    folder = fetch_colin27()
    image = read_volume(folder / "ch2.nii.gz")
    labels = read_volume(folder / "aal.nii.gz")
    if image.shape_kji != labels.shape_kji:
        raise PublicDataError(f"ch2 {image.shape_kji} and aal {labels.shape_kji} are not on one grid")
    labels = labels.with_array(np.rint(labels.array).astype(np.uint8), name="aal")
    return image.with_array(image.array.astype(np.float32), name="colin27"), labels, \
        read_aal_names(folder / "aal.nii.txt")


if __name__ == "__main__":
    folder = fetch_colin27()
    image, labels, names = load_colin27()
    print(f"cached in {folder}: T1 {image.shape_kji} spacing {image.spacing_mm}, {len(names)} AAL names, "
          f"{len(set(labels.array.ravel().tolist())) - 1} labels present")
