"""The persistent worker: one thread for every job, progress visible, cancel between steps, errors reported."""

from __future__ import annotations

import threading
import time

import pytest
from MedFoundationSegLib.core.progress import Cancelled, check, report, scaled
from MedFoundationSegLib.workflow.worker import Worker


def _slices(count, *, progress, cancelled, started=None, release=None):
    for index in range(count):
        if started is not None and index == 1:
            started.set()
            release.wait(5)
        check(cancelled, "segmentation")
        report(progress, (index + 1) / count, f"slice {index + 1}/{count}")
    return threading.get_ident()


def test_jobs_share_one_persistent_thread_and_report_progress():
    worker = Worker()
    try:
        jobs = [worker.submit(f"job{i}", _slices, 5) for i in range(3)]
        for job in jobs:
            assert job.wait(10) and job.error is None
            assert job.fraction == 1.0 and job.message == "done"
        assert {job.result for job in jobs} == {worker.thread_ident} != {threading.get_ident()}
    finally:
        worker.shutdown()


def test_cancel_stops_between_steps_and_worker_survives():
    worker = Worker()
    try:
        started, release = threading.Event(), threading.Event()
        job = worker.submit("long", _slices, 100, started=started, release=release)
        assert started.wait(5)
        assert 0 < job.fraction < 1  # progress was visible while it ran
        job.cancel()
        release.set()
        assert job.wait(5) and job.cancelled and job.result is None
        assert job.fraction < 1
        follow_up = worker.submit("next", _slices, 2)
        assert follow_up.wait(5) and follow_up.error is None
    finally:
        worker.shutdown()


def test_errors_are_captured_not_lost():
    def boom(*, progress, cancelled):
        raise ValueError("box lies outside the volume")

    worker = Worker()
    try:
        job = worker.submit("bad", boom)
        assert job.wait(5)
        assert isinstance(job.error, ValueError) and "outside" in job.message and "ValueError" in job.error_traceback
    finally:
        worker.shutdown()


def test_progress_helpers():
    seen = []
    sub = scaled(lambda f, m: seen.append((round(f, 3), m)), 0.5, 1.0)
    sub(0.5, "half of the second half")
    assert seen == [(0.75, "half of the second half")]
    with pytest.raises(Cancelled, match="batch cancelled"):
        check(lambda: True, "batch")
    time.sleep(0)


def test_modules_share_one_worker_thread():
    from MedFoundationSegLib.workflow.worker import shared_worker

    first = shared_worker()
    assert shared_worker() is first
    first.shutdown()
    replacement = shared_worker()  # a shut-down worker is replaced, never reused
    assert replacement is not first
    job = replacement.submit("after restart", _slices, 1)
    assert job.wait(5) and job.error is None


def test_predictor_cancel_is_the_shared_cancel():
    """A cancel raised inside slice encoding must read as a cancel to the worker and the batch, not as a failure."""
    from MedFoundationSegLib.core import progress
    from MedFoundationSegLib.segment import predictor

    assert predictor.Cancelled is progress.Cancelled


def test_idle_work_runs_between_jobs_yields_to_a_new_job_and_resumes():
    """A job queues idle work (the click model's slices): it runs once no job waits; a job submitted meanwhile starts
    after the task's current step, the task then finishes the rest; a newer box's task replaces an older one; a
    failing task is logged and the worker goes on."""
    from MedFoundationSegLib.workflow.idle_work import IdleWork

    idle = IdleWork()
    worker = Worker(idle=idle.next)
    steps, in_step, release, finished = [], threading.Event(), threading.Event(), threading.Event()

    def encode(name, count, *, hold_at=None):
        def task(cancelled):
            for index in range(count):
                if (name, index) in steps:
                    continue  # done before an interruption, as an encoder skips cached slices
                check(cancelled, "idle encoding")
                if index == hold_at and not release.is_set():
                    in_step.set()
                    release.wait(5)
                steps.append((name, index))
            finished.set()
        return task

    try:
        job = worker.submit("segment", lambda progress, cancelled: idle.replace(encode("box", 6, hold_at=2)))
        assert job.wait(5) and in_step.wait(5)  # the task started by itself after the job, and now holds a step
        click = worker.submit("click", lambda progress, cancelled: list(steps))
        release.set()
        assert click.wait(5) and click.result == [("box", 0), ("box", 1), ("box", 2)]  # it waited for one step only
        assert finished.wait(5) and steps == [("box", index) for index in range(6)]  # resumed, every slice once
        finished.clear()
        idle.replace(encode("old", 3))
        worker.submit("segment another box", lambda progress, cancelled: idle.replace(encode("new", 2))).wait(5)
        assert finished.wait(5)
        assert [name for name, _ in steps[6:]] == ["new", "new"] and len(idle) == 0

        def fails(cancelled):
            raise RuntimeError("broken")
        worker.submit("queue a failing task", lambda progress, cancelled: idle.replace(fails)).wait(5)
        after = worker.submit("after it", lambda progress, cancelled: 7)
        assert after.wait(5) and after.result == 7
    finally:
        worker.shutdown()


def test_idle_loading_of_the_click_model_stops_once_another_model_or_volume_took_over():
    """The click model's idle task loads it while the user works with the box's model (its walk, its clicks), and
    never once another model or volume is the Session's newest predictor: it would evict that one."""
    import collections

    from MedFoundationSegLib.workflow.idle_work import while_newest

    class Predictor:  # a Session's predictors are plain objects, held least recently used first
        pass

    segmenting, click, other = Predictor(), Predictor(), Predictor()
    predictors = collections.OrderedDict(box_model=segmenting)
    loads = []

    def load():
        loads.append("click model")
        predictors["click_model"] = click
        return click

    loader = while_newest(predictors, load)
    assert loader() is click and loader() is click  # after the segmentation, and again once loaded
    predictors.move_to_end("box_model")  # a click's walk used the box's model
    assert loader() is click
    predictors["other"] = other  # the user went on with another model or volume
    assert loader() is None and loads == ["click model"] * 3
