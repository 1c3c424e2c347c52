"""The child-process job runner: events, stop, crashes, kills and orphans, with real processes.

The small job functions below run in a real spawned child (this module is importable there because
pytest puts tests/ on sys.path and spawn passes sys.path on); nothing is mocked.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

from napari_ssl.errors import NapariSSLError
from napari_ssl.train.runner import JobRunner, describe_exit


# --- jobs run in the child --------------------------------------------------------------------
def counting_job(config, events, stop_event):
    events({"type": "started", "total_steps": config["steps"]})
    for i in range(config["steps"]):
        events({"type": "loss", "step": i, "values": {"loss": 1.0 / (i + 1)}})
    return config["out"]


def until_stopped_job(config, events, stop_event):
    events({"type": "started", "total_steps": None, "pid": os.getpid()})
    step = 0
    while not stop_event.is_set():
        time.sleep(0.02)
        step += 1
    with open(config["weights"], "w") as f:  # what a real job does: save its last weights
        f.write(f"step={step}")
    events({"type": "done", "out": config["weights"], "stopped": True})


def ignores_stop_job(config, events, stop_event):
    events({"type": "started", "pid": os.getpid()})
    while True:
        time.sleep(0.05)


def self_kill_job(config, events, stop_event):
    events({"type": "started"})
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def segfault_job(config, events, stop_event):
    events({"type": "started"})
    ctypes.string_at(0)


def raising_job(config, events, stop_event):
    if config == "user":
        raise NapariSSLError("no image found under /nowhere: choose a folder with scans")
    raise ValueError("bad\nthings")


def memory_job(config, events, stop_event):
    raise MemoryError()


# --- helpers -----------------------------------------------------------------------------------
def _gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def _wait_for(runner, type_, timeout=60):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += runner.poll()
        if any(e["type"] == type_ for e in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"no {type_!r} event within {timeout} s; got {seen}")


# --- tests -------------------------------------------------------------------------------------
def test_events_arrive_in_order_and_done_ends_the_child(tmp_path):
    r = JobRunner(counting_job, {"steps": 5, "out": str(tmp_path)}).start()
    seen = []
    res = r.wait(60, on_event=seen.append)
    assert [e["type"] for e in seen] == ["started"] + ["loss"] * 5 + ["done"], seen
    assert [e["step"] for e in seen if e["type"] == "loss"] == [0, 1, 2, 3, 4]
    assert res == {"type": "done", "out": str(tmp_path), "stopped": False}
    assert r.finished and not r.is_alive() and _gone(r.pid)
    assert r.poll() == []  # nothing after the terminal event


def test_stop_lets_the_job_save_its_weights(tmp_path):
    weights = tmp_path / "last.txt"
    r = JobRunner(until_stopped_job, {"weights": str(weights)}).start()
    _wait_for(r, "started")
    time.sleep(0.3)
    res = r.stop(grace_s=20)
    assert res["type"] == "done" and res["stopped"] is True
    assert weights.read_text().startswith("step=")
    assert _gone(r.pid)


def test_job_ignoring_stop_is_terminated_after_the_grace_period():
    r = JobRunner(ignores_stop_job, None, stop_grace_s=0.5, kill_after_s=1.0).start()
    _wait_for(r, "started")
    t0 = time.monotonic()
    r.request_stop()
    res = r.wait(20)
    assert res["type"] == "error" and "did not stop" in res["message"]
    assert time.monotonic() - t0 < 10
    assert _gone(r.pid)


@pytest.mark.parametrize("job,expect", [(self_kill_job, "killed (SIGKILL)"), (segfault_job, "segmentation fault")])
def test_child_that_dies_becomes_a_readable_error(job, expect):
    r = JobRunner(job, None, label="pretraining").start()
    res = r.wait(60)
    assert res["type"] == "error"
    assert expect in res["message"] and res["message"].startswith("pretraining")
    assert "\n" not in res["message"]
    assert _gone(r.pid)


def test_child_killed_from_outside_becomes_an_error_and_a_new_job_runs_after(tmp_path):
    r = JobRunner(until_stopped_job, {"weights": str(tmp_path / "w")}).start()
    _wait_for(r, "started")
    os.kill(r.pid, signal.SIGKILL)
    res = r.wait(20)
    assert res["type"] == "error" and "out of memory" in res["message"]
    # The parent is unaffected: the next job runs normally.
    r2 = JobRunner(counting_job, {"steps": 2, "out": "x"}).start()
    assert r2.wait(60)["type"] == "done"


def test_exceptions_become_one_line_errors():
    res = JobRunner(raising_job, "user").start().wait(60)
    assert res["message"] == "no image found under /nowhere: choose a folder with scans"
    res = JobRunner(raising_job, "bug").start().wait(60)
    assert res["message"] == "ValueError: bad things" and "Traceback" in res["traceback"]
    res = JobRunner(memory_job, None).start().wait(60)
    assert res["message"].startswith("out of memory")


def test_describe_exit_names_signals():
    assert "SIGKILL" in describe_exit(-9)
    assert "code 3" in describe_exit(3)


def test_no_orphan_when_the_parent_dies(tmp_path):
    """A parent (a separate python) starts a job and is SIGKILLed: the job notices, saves and exits."""
    weights = tmp_path / "w.txt"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from napari_ssl.train.runner import JobRunner
        from test_runner import until_stopped_job
        if __name__ == "__main__":
            r = JobRunner(until_stopped_job, {{"weights": {str(weights)!r}}}, orphan_exit_after_s=5).start()
            while True:
                for ev in r.poll():
                    if ev["type"] == "started":
                        print(ev["pid"], flush=True)
                time.sleep(0.05)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # The child was reparented; it must exit by itself (within its 5 s save window + polling).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and psutil.pid_exists(child_pid):
            try:
                if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        alive = psutil.pid_exists(child_pid) and psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, "the job outlived its parent"
        assert weights.read_text().startswith("step=")  # it saved before leaving
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_script_without_main_guard_is_not_rerun_in_the_child(tmp_path):
    """`python my_script.py` that opens napari and starts a job at top level (no __main__ guard):
    spawn must not execute the script again in the child (it would open a second viewer there)."""
    script = tmp_path / "user_script.py"
    out = tmp_path / "out.txt"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        with open({str(out)!r}, "a") as f:
            f.write("top level ran\\n")
        from napari_ssl.train.runner import JobRunner
        res = JobRunner("test_runner:counting_job", {{"steps": 3, "out": "x"}}).start().wait(60)
        print(res["type"], res.get("out"), sys.modules["__main__"].__file__ == __file__, flush=True)
    """))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["done", "x", "True"], (run.stdout, run.stderr[-2000:])  # __file__ restored
    assert out.read_text() == "top level ran\n"  # once: in the parent only


def test_offloaded_config_writes_a_shared_volume_once_and_restores_it(tmp_path, hippo_dir):
    import pickle

    from napari_ssl.io import load_image
    from napari_ssl.train.jobs import load_offloaded, offload_arrays

    vol = load_image(sorted((hippo_dir / "images").glob("*.nii.gz"))[0])
    big = np.arange(300_000, dtype=np.float32)
    cfg = {"finetune": {"images": [vol], "labels": [big]}, "predict": {"image": vol, "n": 5}}
    small = offload_arrays(cfg, str(tmp_path / "staged"))
    assert len(list((tmp_path / "staged").glob("*.npy"))) == 2  # the volume written once, the array once
    back = load_offloaded(pickle.loads(pickle.dumps(small)))  # as the child receives it
    assert back["finetune"]["images"][0] is back["predict"]["image"]
    np.testing.assert_array_equal(back["predict"]["image"].array, vol.array)
    np.testing.assert_array_equal(back["finetune"]["labels"][0], big)
    assert back["predict"]["n"] == 5 and list((tmp_path / "staged").glob("*.npy")) == []
