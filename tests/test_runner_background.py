"""The job runner keeps the caller's thread free: the child starts from a helper thread and, once it has
reported done, is joined from another (the viewer's event loop must not wait for a child's teardown).

Real spawned children (this module is importable in them: pytest puts tests/ on sys.path); no mocks.
"""
from __future__ import annotations

import os
import signal
import threading
import time

from napari_ssl.train.runner import JobRunner


def lingering_job(config, events, stop_event):
    """Reports done, then takes a while to exit (as a torch job tearing down does)."""
    events({"type": "started"})
    events({"type": "done", "out": "weights"})
    time.sleep(config["linger_s"])


def _poll_until_done(runner: JobRunner, timeout: float = 120.0) -> float:
    """Poll as the Qt timer does; returns the longest single poll() call, in seconds."""
    longest, deadline = 0.0, time.monotonic() + timeout
    while not runner.finished:
        t = time.perf_counter()
        runner.poll()
        longest = max(longest, time.perf_counter() - t)
        assert time.monotonic() < deadline, "no terminal event"
        time.sleep(0.02)
    return longest


def test_finished_child_is_joined_off_the_polling_thread():
    r = JobRunner(f"{__name__}:lingering_job", {"linger_s": 1.5}, reap_in_thread=True)
    r.start(background=True)
    assert r.running  # running from the call on, while the child is being spawned
    longest = _poll_until_done(r)
    assert r.result["type"] == "done"
    assert longest < 1.0, longest  # the joining thread waits for the lingering child, not the poller
    assert r.is_alive() and r._reaper is not None and not r._reaper.done()  # being joined by a helper thread
    r.join_reaper(30)
    assert not r.is_alive() and r.process.exitcode == 0


def test_joining_in_the_polling_thread_waits_for_the_child():
    """The baseline, same job: without reap_in_thread the poll that sees done blocks until the child exits."""
    r = JobRunner(f"{__name__}:lingering_job", {"linger_s": 1.5})
    r.start()
    longest = _poll_until_done(r)
    assert longest > 1.0, longest
    assert not r.is_alive()


def test_background_start_returns_at_once_and_a_failed_start_becomes_an_error():
    r = JobRunner(f"{__name__}:lingering_job", {"linger_s": 0.0})
    t = time.perf_counter()
    r.start(background=True)
    returned_s = time.perf_counter() - t
    assert r.pid is not None and r.pid > 0  # pid waits for the start
    assert returned_s < 0.2, returned_s
    assert r.wait(120)["type"] == "done" and not r.is_alive()

    bad = JobRunner(f"{__name__}:lingering_job", {"cannot be pickled": lambda: None}, label="the test job")
    bad.start(background=True)
    ev = bad.wait(60)
    assert ev["type"] == "error" and ev["message"].startswith("the test job could not start: "), ev
    assert not bad.running and bad.process is None


def test_stop_requested_while_starting_reaches_the_child(tmp_path):
    from test_runner import until_stopped_job  # noqa: F401 (a job that saves its weights when stopped)

    r = JobRunner("test_runner:until_stopped_job", {"weights": str(tmp_path / "w.txt")}, reap_in_thread=True)
    r.start(background=True)
    r.request_stop()  # before the child exists
    assert r.stop_requested
    ev = r.wait(120)
    assert ev["type"] == "done" and ev["stopped"] and (tmp_path / "w.txt").is_file()


def big_event_job(config, events, stop_event):
    events({"type": "started", "pid": os.getpid()})
    events({"type": "log", "message": "x" * 20_000_000})  # larger than the pipe: the child blocks, mid-message
    while True:
        time.sleep(0.1)


def test_child_killed_in_the_middle_of_a_message_becomes_an_error_not_a_hang():
    r = JobRunner(f"{__name__}:big_event_job", None, reap_in_thread=True)
    r.start(background=True)
    started = []
    deadline = time.monotonic() + 120
    while not started:
        started += [e for e in r.poll(max_events=1) if e["type"] == "started"]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(2.0)  # not reading: the child's queue feeder is blocked halfway through the big message
    os.kill(started[0]["pid"], signal.SIGKILL)
    out: dict = {}
    reader = threading.Thread(target=lambda: out.setdefault("ev", r.wait(60)), daemon=True)
    reader.start()
    reader.join(90)
    assert not reader.is_alive(), "poll() blocked on the half-written message"
    assert out["ev"]["type"] == "error" and "killed" in out["ev"]["message"], out
