"""Run a training job in a child process and stream its events back (no UI code here).

Why a child process and not a thread: a torch loop in a thread of the viewer's process holds the
GIL and freezes the event loop, and a crash or an out-of-memory kill would take the viewer down.

The job is named by import path (``"napari_ssl.train.jobs:pretrain_job"``) and called in the child as
``job(config, events, stop_event)``; ``events(dict)`` puts plain picklable dicts on a queue that the
parent drains with :meth:`JobRunner.poll` (the Qt side polls it from a timer). Every run ends with
exactly one terminal event, ``{"type": "done", ...}`` or ``{"type": "error", "message": ...}``: if the
child dies without sending one (segfault, out-of-memory kill, SIGKILL), :meth:`poll` makes one from
its exit code.

Nothing that can block for long has to run in the caller's thread (for the viewer: its event loop):
``start(background=True)`` starts the child from a helper thread (spawning it, the queue's semaphore and
multiprocessing's resource tracker cost hundreds of milliseconds on a loaded machine), and with
``reap_in_thread=True`` the finished child is joined (and if it lingers, terminated) from another one.

Stopping: :meth:`request_stop` sets the stop event (the job stops at its next step and saves its last
weights); if the child is still alive after a grace period it is terminated, then killed.

No orphans: the child holds one end of a pipe whose other end only the parent holds; a watcher thread in
the child also checks ``os.getppid()``. When the parent dies the child sets the stop event, gives the job a
few seconds to save, and exits.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait as wait_futures
from typing import Any, Callable

from .runner_child import TERMINAL, _child_main, _main_not_reimported, _one_line, describe_exit, resolve_target, target_path  # noqa: F401 (re-exported)

_CTX = mp.get_context("spawn")
_LIVE: "set[JobRunner]" = set()  # started and not finished: stopped cleanly when this process exits
_HELPERS: ThreadPoolExecutor | None = None


def helpers() -> ThreadPoolExecutor:
    """The threads that start and join children. A pool, so its threads outlive one job: on a loaded
    machine, starting a thread (Thread.start waits until it runs) took up to 0.2 s of the caller's time."""
    global _HELPERS
    if _HELPERS is None:
        _HELPERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="napari-ssl-job-helper")
    return _HELPERS


def warm_up_helpers() -> None:
    """Start a helper thread now (e.g. when the viewer's widgets load), not at the first job's start."""
    helpers().submit(int)


class JobRunner:
    """One job in one child process. Not thread-safe: use it from one thread (the Qt main thread)."""

    def __init__(self, target: str | Callable, config: Any, *, label: str = "the job",
                 stop_grace_s: float = 30.0, kill_after_s: float = 5.0, nice: int = 0,
                 orphan_exit_after_s: float = 10.0, reap_in_thread: bool = False):
        self.target = target_path(target)
        self.config = config
        self.label = label
        self.stop_grace_s = stop_grace_s
        self.kill_after_s = kill_after_s
        self.nice = nice
        self.orphan_exit_after_s = orphan_exit_after_s
        self.process: mp.process.BaseProcess | None = None
        self.finished = False          # a terminal event was delivered by poll()
        self.result: dict | None = None  # that terminal event
        self._q = None
        self._stop = None
        self._conn = None
        self._stop_requested_at: float | None = None
        self._terminated_at: float | None = None
        self.reap_in_thread = reap_in_thread
        self._started = False
        self._lock = threading.Lock()  # request_stop vs a launch in progress
        self._launcher: Future | None = None
        self._launch_error: BaseException | None = None
        self._reaper: Future | None = None

    # -- lifecycle
    def start(self, background: bool = False) -> "JobRunner":
        """Start the child; with `background`, from a helper thread (:meth:`poll` reports a failure to start)."""
        if self._started:
            raise RuntimeError("a JobRunner runs once; make a new one")
        self._started = True
        _LIVE.add(self)
        if background:
            self._launcher = helpers().submit(self._launch, catch=True)
        else:
            try:
                self._launch()
            except BaseException:
                _LIVE.discard(self)
                raise
        return self

    def _launch(self, catch: bool = False) -> None:
        try:
            q = _CTX.Queue()
            stop = _CTX.Event()
            with self._lock:
                self._stop = stop
                if self._stop_requested_at is not None:
                    stop.set()
            reader, writer = _CTX.Pipe(duplex=False)  # the child reads; only we hold the write end
            process = _CTX.Process(
                target=_child_main, name=f"napari-ssl:{self.target.rsplit(':', 1)[-1]}",
                args=(self.target, self.config, q, stop, os.getpid(), reader,
                      self.orphan_exit_after_s, self.nice),
                daemon=False)  # a daemon child could not spawn DataLoader workers
            with _main_not_reimported(self.target):
                process.start()
            reader.close()
            # We only read the queue. Without our copy of its write end, a message cut short by a child killed
            # while sending it ends in EOF (an error event) instead of a read that waits forever in the event loop.
            try:
                q._writer.close()
            except Exception:  # noqa: BLE001 - multiprocessing internals: without it, the old behaviour
                pass
            self._q, self._conn, self._pid = q, writer, process.pid
            self.process = process  # last: poll() reads the child's queue once this is set
        except BaseException as exc:  # noqa: BLE001
            if not catch:
                raise
            self._launch_error = exc

    def _join_launcher(self, timeout: float | None = 60.0) -> None:
        if self._launcher is not None:
            wait_futures([self._launcher], timeout)

    @property
    def starting(self) -> bool:
        """Started in the background and the child not launched yet."""
        return self._launcher is not None and not self._launcher.done()

    @property
    def pid(self) -> int | None:
        """The child's process id (waits for a background start to finish)."""
        self._join_launcher()
        return getattr(self, "_pid", None)

    def is_alive(self) -> bool:
        return bool(self.process and self.process.is_alive())

    @property
    def running(self) -> bool:
        """Started and no terminal event delivered yet."""
        return self._started and not self.finished

    def request_stop(self) -> None:
        """Ask the job to stop at its next step and save; poll() enforces the grace period."""
        with self._lock:
            if self._stop_requested_at is None:
                self._stop_requested_at = time.monotonic()
                if self._stop is not None:
                    self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested_at is not None

    # -- events
    def poll(self, max_events: int = 1000) -> list[dict]:
        """Events that arrived since the last call (non-blocking), plus a made-up error if the child died."""
        out: list[dict] = []
        if self.finished:
            return out
        if self.process is None:
            if self._launch_error is not None and not self.starting:
                ev = {"type": "error", "message": f"{self.label} could not start: {_one_line(self._launch_error)}"}
                out.append(ev)
                self._finish(ev)
            return out
        if self._drain(out, max_events):
            return out
        self._enforce_stop_deadline()
        if len(out) < max_events and not self.process.is_alive():
            # It may have sent its last events just before exiting: drain once more.
            if self._drain(out, max_events) or len(out) >= max_events:
                return out
            # Dead, drained, and no terminal event: it crashed or was killed.
            ev = self._death_event()
            out.append(ev)
            self._finish(ev)
        return out

    def _drain(self, out: list[dict], max_events: int) -> bool:
        """Append queued events to `out`; True once a terminal event was seen."""
        while len(out) < max_events:
            try:
                ev = self._q.get_nowait()
            except queue_mod.Empty:
                return False
            except Exception as exc:  # a message cut short by a dying child
                out.append({"type": "log", "message": f"lost an event: {_one_line(exc)}"})
                return False
            out.append(ev)
            if ev.get("type") in TERMINAL:
                self._finish(ev)
                return True
        return False

    def _death_event(self) -> dict:
        self.process.join(0.1)
        code = self.process.exitcode
        if self._terminated_at is not None:
            msg = f"{self.label} did not stop within {self.stop_grace_s:g} s and was terminated; the last saved weights are kept"
            return {"type": "error", "message": msg, "exitcode": code, "stopped": True}
        return {"type": "error", "message": describe_exit(code, self.label), "exitcode": code}

    def _finish(self, ev: dict) -> None:
        _LIVE.discard(self)
        self.finished = True
        self.result = ev
        if self.reap_in_thread and self.process is not None:
            # joining the child blocks until it has torn down (torch, the queue's feeder): seconds on a loaded machine
            try:
                self._reaper = helpers().submit(self._reap)
                return
            except RuntimeError:  # the interpreter is exiting (its thread pools are shut down): join here
                pass
        self._reap()

    def join_reaper(self, timeout: float | None = None) -> None:
        """Wait until the finished child has been joined (when that happens in a thread: ``reap_in_thread``)."""
        if self._reaper is not None:
            wait_futures([self._reaper], timeout)

    def _reap(self) -> None:
        if self.process is not None:
            self.process.join(2.0)
            if self.process.is_alive():  # reported done but lingers (e.g. stuck in teardown)
                self.process.terminate()
                self.process.join(self.kill_after_s)
                if self.process.is_alive():
                    self.process.kill()
                    self.process.join(1.0)
        self._close()

    def _enforce_stop_deadline(self) -> None:
        if self._stop_requested_at is None or not self.process.is_alive():
            return
        now = time.monotonic()
        if self._terminated_at is None and now - self._stop_requested_at > self.stop_grace_s:
            self._terminated_at = now
            self.process.terminate()
        elif self._terminated_at is not None and now - self._terminated_at > self.kill_after_s:
            self.process.kill()

    def wait(self, timeout: float | None = None, on_event: Callable[[dict], None] | None = None,
             interval: float = 0.05) -> dict | None:
        """Block, polling, until the terminal event (returned) or the timeout (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for ev in self.poll():
                if on_event:
                    on_event(ev)
            if self.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(interval)
        self.join_reaper()
        return self.result

    def stop(self, grace_s: float | None = None, on_event: Callable[[dict], None] | None = None) -> dict | None:
        """Blocking stop: ask, wait up to the grace period, then terminate / kill. Returns the terminal event."""
        if not self._started:
            return None
        self._join_launcher()
        if grace_s is not None:
            self.stop_grace_s = grace_s
        self.request_stop()
        res = self.wait(self.stop_grace_s + self.kill_after_s + 5.0, on_event=on_event)
        if res is None:
            self.kill()
            res = self.wait(5.0, on_event=on_event)
        return res

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()

    def _close(self) -> None:
        for obj in (self._conn,):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        try:
            self._q.close()
            self._q.cancel_join_thread()
        except Exception:
            pass


def stop_all(grace_s: float = 15.0) -> None:
    """Stop every running job of this process (each saves its weights), then make sure each child is gone."""
    runners = list(_LIVE)
    for r in runners:
        r.stop_grace_s = min(r.stop_grace_s, grace_s)
        r.request_stop()
    for r in runners:
        r.stop()


atexit.register(stop_all)
