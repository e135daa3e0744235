"""The engine process as a server: token, TLS, bad and hostile requests, a second client, a killed engine, a job
that ignores Cancel. Every server here is a real ``medfoundationseg serve`` process on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from MedFoundationSegLib.core import wire
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.workflow import transport
from MedFoundationSegLib.workflow.actions import EngineRequest
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLogic.engine_client import EngineClient, EngineError
from MedFoundationSegLogic.engine_process import READY_PREFIX, LocalEngine, RemoteEngine

TOKEN = "test-token-0123456789"


def _serve(*arguments, env=None):
    """A ``serve`` process; returns (process, ready info)."""
    command = [sys.executable, "-m", "MedFoundationSegLib.cli.main", "serve", "--host", "127.0.0.1", "--port", "0",
               *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    line = process.stdout.readline().decode()
    assert line.startswith(READY_PREFIX), process.stderr.read().decode()[-2000:]
    return process, json.loads(line[len(READY_PREFIX):])


@pytest.fixture(scope="module")
def server():
    process, ready = _serve("--token", TOKEN, "--max-upload-mb", "64")
    yield ready
    process.kill()
    process.wait(10)


@pytest.fixture(scope="module")
def small_volume():
    phantom = make_phantom(5, (16, 64, 64))
    return phantom


def _raw(ready, method, path, body=b"", headers=None, token=TOKEN):
    connection = http.client.HTTPConnection("127.0.0.1", ready["port"], timeout=30)
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def test_a_request_without_the_token_or_with_a_wrong_one_gets_401(server):
    for token in (None, "wrong", TOKEN + "x"):
        status, body = _raw(server, "GET", "/health", token=token)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert _raw(server, "GET", "/health")[0] == 200


def test_bad_requests_are_named_and_the_engine_keeps_serving(server, small_volume):
    client = EngineClient(server["url"], TOKEN)
    volume_id = client.ensure_volume(small_volume.image)
    good = EngineRequest("fill_between", small_volume.image, Options(), {}, {"mask_kji": small_volume.mask("liver")})
    job = transport.encode_job(good, {id(small_volume.image): volume_id})
    nan = Volume(np.full((4, 5, 6), np.nan, np.float32), (1, 1, 1))
    cases = {
        "unknown action": (b"/jobs", wire.pack({"action": "format_disk", "volume": volume_id})),
        "unknown volume": (b"/jobs", wire.pack({"action": "fill_between", "volume": "0" * 32})),
        "unknown option": (b"/jobs", wire.pack({"action": "fill_between", "volume": volume_id,
                                                "options": {"shell": "rm"}})),
        "bad option value": (b"/jobs", wire.pack({"action": "fill_between", "volume": volume_id,
                                                  "options": {"mode": "sideways"}})),
        "a path for weights": (b"/jobs", wire.pack({"action": "localize", "volume": volume_id,
                                                    "params": {"medlam_weights": "/etc/passwd"}})),
        "truncated job": (b"/jobs", job[:-10]),
        "not a message": (b"/jobs", b"GIF89a" + b"\0" * 20),
        "NaN volume": (b"/volumes", transport.encode_volume(nan)),
        "2D volume": (b"/volumes", wire.pack({"spacing_mm": [1, 1, 1], "origin_lps_mm": [0, 0, 0],
                                              "direction": np.eye(3).tolist()}, {"voxels": np.zeros((4, 4))})),
        "bad spacing": (b"/volumes", wire.pack({"spacing_mm": [1, -1, 1], "origin_lps_mm": [0, 0, 0],
                                                "direction": np.eye(3).tolist()}, {"voxels": np.zeros((2, 2, 2))})),
    }
    for name, (path, body) in cases.items():
        status, reply = _raw(server, "POST", path.decode(), body)
        error = json.loads(reply)["error"]
        assert status in (400, 404) and error["code"] in ("bad_request", "unknown_volume"), (name, status, error)
        assert error["message"] and "\n" not in error["message"], name
    assert _raw(server, "GET", "/jobs/" + "a" * 32)[0] == 404
    assert _raw(server, "GET", "/nowhere")[0] == 404
    assert _raw(server, "DELETE", "/health")[0] in (404, 405, 501)
    status, reply = _raw(server, "POST", "/volumes", b"", {"Content-Length": str(100 * 2 ** 20)})
    assert status == 413 and "limit" in json.loads(reply)["error"]["message"]
    assert client.health()["volumes"] >= 1
    assert client.run(good).case_result().mask_kji.any()  # the engine still works


def test_200_mutated_requests_never_take_the_engine_down(server, small_volume):
    client = EngineClient(server["url"], TOKEN)
    volume_id = client.ensure_volume(small_volume.image)
    request = EngineRequest("fill_between", small_volume.image, Options(), {}, {"mask_kji": small_volume.mask("liver")})
    valid = transport.encode_job(request, {id(small_volume.image): volume_id})
    rng = random.Random(7)
    statuses = []
    for n in range(220):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if n % 5 == 0:
            body = body[: rng.randrange(len(body))]
        path = rng.choice(["/jobs", "/volumes", "/jobs", f"/jobs/{'%032x' % rng.getrandbits(128)}/cancel"])
        statuses.append(_raw(server, "POST", path, bytes(body))[0])
    assert 500 not in statuses and all(status < 500 for status in statuses)
    assert client.health()["queue"] >= 0


def test_a_client_refuses_an_engine_that_speaks_another_protocol_before_sending_anything(server, monkeypatch):
    unseen = make_phantom(6, (16, 64, 64))  # a volume the engine does not hold yet: sending it would add one
    request = EngineRequest("fill_between", unseen.image, Options(), {}, {"mask_kji": unseen.mask("liver")})
    assert EngineClient(server["url"], TOKEN).health()["protocol"] == transport.PROTOCOL
    volumes_before = EngineClient(server["url"], TOKEN).health()["volumes"]
    monkeypatch.setattr(transport, "PROTOCOL", transport.PROTOCOL + 1)  # this side updated, the engine not
    client = EngineClient(server["url"], TOKEN)
    with pytest.raises(EngineError, match="speaking protocol .*; this extension speaks protocol") as refused:
        client.run(request)
    assert refused.value.code == "engine_version" and "\n" not in str(refused.value)
    assert EngineClient(server["url"], TOKEN).health()["volumes"] == volumes_before  # nothing was sent
    monkeypatch.undo()
    assert client.run(request).case_result().mask_kji.any()  # the same client, once both sides agree


def test_a_second_client_is_queued_behind_the_first(server, small_volume):
    first, second = EngineClient(server["url"], TOKEN), EngineClient(server["url"], TOKEN)
    box = np.array([[20, 20, 2], [45, 45, 13]])
    slow = EngineRequest("segment_box", small_volume.image, Options(refine="none"), {"box_ijk": box.tolist()})
    quick = EngineRequest("fill_between", small_volume.image, Options(), {}, {"mask_kji": small_volume.mask("liver")})
    job_one = first.submit(slow)
    job_two = second.submit(quick)
    assert job_two.jobs_ahead >= 1 and "waiting for" in job_two.message  # one job per device: it says so
    assert job_two.wait(300) and job_one.wait(300)
    assert job_one.error is None and job_two.error is None
    assert job_one.result.case_result().mask_kji.shape == small_volume.image.shape_kji
    assert first.health()["evidence_bytes"] > 0  # the segment's probability is kept for the next Refine


def test_remote_mode_with_tls_and_a_token(tmp_path, small_volume, mrml):
    from MedFoundationSegLogic import mrml_bridge
    from MedFoundationSegLogic.logic import MedFoundationSegLogic
    from mrml_scene import add_volume_node

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                           str(cert)], capture_output=True)
    assert made.returncode == 0, made.stderr.decode()
    process, ready = _serve("--token", TOKEN, "--certfile", str(cert), "--keyfile", str(key))
    try:
        assert ready["url"].startswith("https://")
        engine = RemoteEngine(ready["url"], TOKEN, verify=str(cert))
        assert engine.health()["pid"] == process.pid
        with pytest.raises(EngineError, match="token"):
            RemoteEngine(ready["url"], "wrong", verify=str(cert)).health()
        with pytest.raises(EngineError):  # plain HTTP to the TLS port
            RemoteEngine(ready["url"].replace("https", "http"), TOKEN).health()
        scene, _ = mrml
        node = add_volume_node(scene, small_volume.image, "ct")
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
        roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
        mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(small_volume.image,
                                                                              np.array([[20, 20, 2], [45, 45, 13]])))
        logic = MedFoundationSegLogic(scene, Options(refine="none"), engine=engine)
        prepared = logic.prepare_segment_in_roi(node, roi, segmentation)
        edit = logic.apply(prepared, prepared.compute())
        assert edit.voxels_written > 0
    finally:
        process.kill()
        process.wait(10)


def test_serving_off_loopback_without_a_token_is_refused():
    result = subprocess.run([sys.executable, "-m", "MedFoundationSegLib.cli.main", "serve", "--host", "0.0.0.0",
                             "--port", "0"], capture_output=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "MEDFOUNDATIONSEG_ENGINE_TOKEN"})
    assert result.returncode == 2 and b"without a token" in result.stderr


def _segmentation_scene(mrml, phantom):
    from MedFoundationSegLogic import mrml_bridge
    from mrml_scene import add_volume_node

    scene, _ = mrml
    node = add_volume_node(scene, phantom.image, "ct")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    mrml_bridge.set_roi_bounds_ras(roi, mrml_bridge.ras_bounds_from_ijk_box(phantom.image,
                                                                          np.array([[20, 20, 0], [45, 45, 15]])))
    return scene, node, segmentation, roi


def test_a_killed_engine_is_reported_restarted_and_the_scene_is_untouched(mrml, small_volume):
    from MedFoundationSegLogic.logic import MedFoundationSegLogic

    engine = LocalEngine(sys.executable)
    try:
        scene, node, segmentation, roi = _segmentation_scene(mrml, small_volume)
        logic = MedFoundationSegLogic(scene, Options(refine="none", mode="box"), engine=engine)
        job = logic.prepare_segment_in_roi(node, roi, segmentation).start()
        while job.message == "queued" and not job.done:  # wait until the engine works on it
            time.sleep(0.05)
        os.kill(engine.process.pid, signal.SIGKILL)
        assert job.wait(60) and isinstance(job.error, EngineError) and job.error.code == "engine_died"
        assert "nothing in the scene was changed" in str(job.error)
        assert segmentation.GetSegmentation().GetNumberOfSegments() == 0
        prepared = logic.prepare_segment_in_roi(node, roi, segmentation)  # the same action again: a new engine
        edit = logic.apply(prepared, prepared.compute())
        assert edit.voxels_written > 0 and engine.restarts == 1
    finally:
        engine.stop()


def test_a_job_that_ignores_cancel_gets_its_engine_restarted(mrml, small_volume, tmp_path):
    """The engine is started with a stand-in fill-between that sleeps and never checks its cancel flag."""
    from MedFoundationSegLogic import engine_client, mrml_bridge
    from MedFoundationSegLogic.logic import MedFoundationSegLogic

    (tmp_path / "sitecustomize.py").write_text(
        "import time\n"
        "import MedFoundationSegLib.workflow.actions as actions\n"
        "def stubborn(session, request, progress, cancelled):\n"
        "    time.sleep(120)\n"
        "actions._fill_between = stubborn\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    engine = LocalEngine(sys.executable, env=env)
    try:
        scene, node, segmentation, _ = _segmentation_scene(mrml, small_volume)
        segment = segmentation.GetSegmentation().AddEmptySegment("", "organ", [1, 0, 0])
        drawn = np.zeros(small_volume.image.shape_kji, bool)
        drawn[[3, 9], 20:30, 20:30] = True
        mrml_bridge.write_segment_mask_kji(segmentation, segment, drawn, node)
        logic = MedFoundationSegLogic(scene, Options(), engine=engine)
        job = logic.prepare_fill_between(node, segmentation, segment).start()
        first_pid = engine.process.pid
        time.sleep(1.0)
        started = time.monotonic()
        job.cancel()
        assert job.wait(engine_client.HARD_STOP_AFTER_S + 30)
        assert job.cancelled and "restarted" in str(job.error)
        assert time.monotonic() - started < engine_client.HARD_STOP_AFTER_S + 10
        assert not engine.running or engine.process.pid != first_pid
        assert np.array_equal(mrml_bridge.segment_mask_kji(segmentation, segment, node), drawn)
    finally:
        engine.stop()


def test_the_slicer_side_never_imports_torch(tmp_path):
    """Every Logic action (segment in box, propagate, re-propagate, fill between, refine, re-run, undo, localize)
    through the local engine process, in a fresh interpreter that plays Slicer: torch never enters it."""
    from slicer_side import write_phantom

    phantom = tmp_path / "phantom.npz"
    write_phantom(str(phantom))
    script = Path(__file__).with_name("slicer_side.py")
    result = subprocess.run([sys.executable, str(script), "no-torch"], capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, SLICER_SIDE_PHANTOM=str(phantom)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "torch imported: False" in result.stdout
    assert "localize" in result.stdout and "refine" in result.stdout


def test_the_panel_points_both_modules_at_a_remote_engine_or_a_local_one(server):
    from MedFoundationSegLogic import engine_process

    previous = engine_process.default_engine()
    try:
        remote = engine_process.configure_engine(server["url"], TOKEN)
        assert engine_process.default_engine() is remote and isinstance(remote, RemoteEngine)
        assert engine_process.describe(remote).startswith(f"Engine: {server['url']}, device ")
        with pytest.raises(ValueError, match="http"):
            engine_process.configure_engine("gpu-host:8765", TOKEN)
        with pytest.raises(ValueError, match="no Python"):
            engine_process.configure_engine("", "", "/nowhere/python")
        local = engine_process.configure_engine("", "", sys.executable)
        assert isinstance(local, LocalEngine) and local.python == sys.executable and not local.running
    finally:
        engine_process.set_default_engine(previous)


def test_the_engines_worker_does_the_sessions_idle_work():
    """Between requests the engine's worker runs what its Session queued for idle time (the click model's slices)."""
    import threading

    from MedFoundationSegLib.server.app import Engine

    engine = Engine(token=None, max_body_bytes=1 << 20, volume_budget_bytes=1 << 20)
    ran = threading.Event()
    try:
        job = engine.worker.submit("segment", lambda progress, cancelled:
                                   engine.session.idle_work.replace(lambda cancelled: ran.set()))
        assert job.wait(5) and ran.wait(5)
    finally:
        engine.worker.shutdown()
