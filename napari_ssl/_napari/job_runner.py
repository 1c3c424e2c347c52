"""The Qt side of a child-process job: poll its event queue from the event loop, show progress in
napari's activity dock, and hand events to widgets as Qt signals.

Nothing here blocks the event loop: a QTimer drains at most a bounded number of events per tick, the
child is started from a helper thread and joined, once finished, from another (JobRunner's
``start(background=True)`` and ``reap_in_thread``).
Closing napari (the window's close, or the app quitting) stops running jobs, which save their last
weights, and makes sure no child process is left behind.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Callable

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..train.events import (
    Failed,
    Finished,
    JobEvent,
    Progress,
    Started,
    Status as StatusEvent,  # (napari has a Status of its own: task_status)
    as_event,
)
from ..train.runner import JobRunner, warm_up_helpers

_JOBS: "weakref.WeakSet[QtJob]" = weakref.WeakSet()
_HOOKED_QUIT = False


def _stop_all_on_quit() -> None:
    for job in list(_JOBS):
        job.stop_and_wait(grace_s=15.0)


def default_nice() -> int:
    """Niceness added to job processes: the viewer's event loop wins the CPU when both want it.

    A CPU-bound training process at the same priority as the GUI competes with it for every time
    slice; at +10 it yields to the GUI (and to nothing else when the machine is otherwise idle, so
    training speed is unchanged there). ``$NAPARI_SSL_JOB_NICE`` overrides it (0: same priority).
    """
    from ..settings import JOB_NICE_ENV, env_int

    return max(0, env_int(JOB_NICE_ENV, 10))


SPINNER_SPEED_PERCENT = 1
# a training step's progress is shown at most this often (napari's activity dock and the widgets' status and bar:
# each update repaints part of the window, 20-30 ms with software OpenGL; steps come several times a second)
PROGRESS_EVERY_S = 1.0


def calm_activity_spinner(speed_percent: int = SPINNER_SPEED_PERCENT) -> int:
    """Slow down napari's "in progress" spinner in the status bar while a job runs; returns how many.

    The spinner is a 90-frame 256x256 GIF played at 33 frames/s and rescaled to 18x18 for every frame;
    each frame repaints the window. Measured with benchmarks/bench_ui_latency.py, that animation alone
    made the event loop answer tens of milliseconds late on a loaded machine with software OpenGL.
    At 1 % speed it still turns, a frame every ~3 s (at 5 %, 1.7 frames/s, each frame was one of the 50-80 ms
    repaints of the whole window that bench_ui_latency.py --scenario ct counted on a loaded machine). Only the spinner of napari's activity button
    (the QMovie of loading.gif) is touched, through public Qt API.
    """
    from qtpy.QtWidgets import QLabel

    n = 0
    for top in QApplication.topLevelWidgets():
        for label in top.findChildren(QLabel):
            movie = label.movie()
            if movie is not None and movie.fileName().replace("\\", "/").endswith("/loading.gif"):
                if movie.speed() != speed_percent:
                    movie.setSpeed(speed_percent)
                n += 1
    return n


class QtJob(QObject):
    """One job in a child process, driven from the Qt event loop.

    Signals: ``event(JobEvent)`` for every event (in order, typed: napari_ssl.train.events), ``finished(JobEvent)``
    once, with the terminal event (``Finished`` or ``Failed``).
    """

    event = Signal(object)
    finished = Signal(object)

    def __init__(self, target: str | Callable, config: Any, *, label: str, viewer=None,
                 interval_ms: int = 50, stop_grace_s: float = 60.0, nice: int | None = None,
                 activity: bool = True, parent: QObject | None = None):
        super().__init__(parent)
        self.label = label
        self.activity = activity  # a progress bar in napari's activity dock too (cancel there stops the job)
        self.runner = JobRunner(target, config, label=label, stop_grace_s=stop_grace_s,
                                nice=default_nice() if nice is None else int(nice), reap_in_thread=True)
        self._viewer = weakref.ref(viewer) if viewer is not None else None
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._progress = None
        self._last_step = 0
        self._progress_shown_at = 0.0
        self.progress_due = True  # whether the latest Progress event is one to show (see PROGRESS_EVERY_S)
        from ..progress_text import Eta

        self._eta = Eta()
        self.seconds_left: float | None = None  # training time left, from the rate of progress (None: not known yet)
        self._task_id = None
        self.last_event: JobEvent | None = None

    # -- lifecycle
    def start(self) -> "QtJob":
        global _HOOKED_QUIT
        self.runner.start(background=True)  # spawning the child blocks for a while: not in the event loop
        _JOBS.add(self)
        app = QApplication.instance()
        if app is not None and not _HOOKED_QUIT:
            app.aboutToQuit.connect(_stop_all_on_quit)
            _HOOKED_QUIT = True
        # each its own event-loop turn after the click's (napari's activity dock builds a progress bar widget)
        QTimer.singleShot(0, self._open_progress if self.activity else calm_activity_spinner)
        QTimer.singleShot(0, self._register_with_window)
        self._timer.start()
        return self

    @property
    def running(self) -> bool:
        return self.runner.running

    @property
    def pid(self) -> int | None:
        return self.runner.pid

    def request_stop(self) -> None:
        """Ask the job to stop and save; the event loop keeps running and the done event follows."""
        self.runner.request_stop()
        if self._progress is not None:
            self._progress.set_description(f"{self.label}: stopping (saving weights)")

    def stop_and_wait(self, grace_s: float = 15.0) -> dict | None:
        """Blocking stop, for shutdown: the job saves, or is terminated after `grace_s`."""
        if not self.runner.running:
            return self.runner.result
        res = self.runner.stop(grace_s=grace_s, on_event=self._deliver)
        if res is not None and not getattr(self, "_finished_sent", False):
            self._finish(res)
        return res

    # -- event loop
    def _tick(self) -> None:
        for ev in self.runner.poll(max_events=200):
            self._deliver(ev)
        if self.runner.finished and self.runner.result is not None:
            self._finish(self.runner.result)

    def _deliver(self, ev: dict | JobEvent) -> None:
        ev = as_event(ev)
        if isinstance(ev, (Finished, Failed)):
            return  # delivered once, by _finish
        self.last_event = ev
        if isinstance(ev, Progress) and ev.step is not None:
            self.progress_due = self._is_due(int(ev.step), ev.total_steps)
        self._update_progress(ev)
        self.event.emit(ev)

    def _is_due(self, step: int, total: int | None) -> bool:
        """At most one shown step per PROGRESS_EVERY_S, and always the last (the count catches up when shown)."""
        now = time.monotonic()
        if now - self._progress_shown_at < PROGRESS_EVERY_S and not (total and step >= int(total)):
            return False
        self._progress_shown_at = now
        return True

    def _finish(self, ev: dict | JobEvent) -> None:
        ev = as_event(ev)
        if getattr(self, "_finished_sent", False):
            return
        self._finished_sent = True
        self._timer.stop()
        _JOBS.discard(self)
        self._close_progress()
        self._unregister_with_window(ev)
        self.last_event = ev
        self.event.emit(ev)
        self.finished.emit(ev)

    # -- napari activity dock
    def _open_progress(self) -> None:
        if getattr(self, "_finished_sent", False):
            return
        try:
            from napari.utils import cancelable_progress

            self._progress = cancelable_progress(total=0, desc=f"{self.label}: starting",
                                                 cancel_callback=self.request_stop)
        except Exception:  # the activity dock is a convenience; the job runs without it
            self._progress = None
        calm_activity_spinner()

    def _update_progress(self, ev: JobEvent) -> None:
        if isinstance(ev, Progress) and ev.step is not None and ev.total_steps:
            self.seconds_left = self._eta.update(int(ev.step), int(ev.total_steps))
        p = self._progress
        if p is None:
            return
        total = ev.total_steps if isinstance(ev, (Started, Progress)) else None
        if total and p.total != total:
            p.total = int(total)
        if isinstance(ev, Progress) and ev.step is not None:
            step = int(ev.step)
            if not self.progress_due:
                return
            if step > self._last_step:
                p.update(step - self._last_step)
                self._last_step = step
            if not self.runner.stop_requested and total:
                from ..progress_text import step_text

                p.set_description(step_text(self.label, step, total, self.seconds_left))
        elif isinstance(ev, Started) and not self.runner.stop_requested:
            p.set_description(self.label)
        elif isinstance(ev, StatusEvent) and ev.message:
            p.set_description(f"{self.label}: {ev.message}" if ev.phase is None else str(ev.message))

    def _close_progress(self) -> None:
        if self._progress is not None:
            try:
                self._progress.close()
            except Exception:
                pass
            self._progress = None

    # -- napari's task registry: the close dialog names the job, and closing the window stops it
    def _register_with_window(self) -> None:
        # private napari API (napari_private.py); without it, quitting the app (aboutToQuit), this process exiting
        # (atexit) and the child's parent watch still stop the job
        if getattr(self, "_finished_sent", False):
            return
        from .napari_private import register_task

        viewer = self._viewer() if self._viewer else None
        self._task_id = register_task(getattr(viewer, "window", None), self.label, lambda: bool(self.stop_and_wait()))

    def _unregister_with_window(self, ev: JobEvent) -> None:
        viewer = self._viewer() if self._viewer else None
        window = getattr(viewer, "window", None)
        if self._task_id is None or window is None:
            return
        from .napari_private import finish_task

        finish_task(window, self._task_id, isinstance(ev, Finished), self.label)
        self._task_id = None


warm_up_helpers()  # the thread that starts and joins job children exists before the first Train / Start click
