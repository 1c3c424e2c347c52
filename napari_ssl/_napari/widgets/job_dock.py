"""What the three dock widgets share about their jobs: one child-process job at a time (a QtJob), its typed
events handed to the widget's handlers, errors in the status line, and closing the widget stops the job."""
from __future__ import annotations

from qtpy.QtWidgets import QLabel, QWidget

from ...train.events import JobEvent
from ..job_runner import QtJob
from .common import DockWidgetBase, report_error


class JobDockWidget(DockWidgetBase):
    """A dock widget that runs one job at a time.

    Subclasses give ``build_config()`` (raising ValueError with a readable message for bad input), map event
    classes to handler method names in ``EVENT_HANDLERS``, and handle the end in ``_on_finished(event)``.
    """

    EVENT_HANDLERS: dict[type, str] = {}
    ACTIVITY_PROGRESS = True  # also a progress bar in napari's activity dock (see QtJob)

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: QtJob | None = None
        self.last_result: JobEvent | None = None  # the job's terminal event (Finished or Failed)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def stop_requested(self) -> bool:
        return self.job is not None and self.job.runner.stop_requested

    def build_config(self) -> dict:
        raise NotImplementedError

    def new_job_config(self) -> dict | None:
        """The config of a new job; None while one runs, or with the reason shown when the input is wrong (never raised into Qt)."""
        if self.running:
            return None
        try:
            return self.build_config()
        except Exception as exc:  # noqa: BLE001
            self._error(str(exc))
            return None

    def start_job(self, target: str, config, label: str) -> QtJob:
        self.job = QtJob(target, config, label=label, viewer=self.viewer, activity=self.ACTIVITY_PROGRESS, parent=self)
        self.job.event.connect(self._on_event)
        self.job.finished.connect(self._on_finished)
        self.job.start()
        return self.job

    def stop_job(self, button) -> None:
        """Ask the running job to stop (it saves its last weights); `button` (Start/Train) says so until the job ends."""
        self.job.request_stop()
        button.setEnabled(False)
        button.setText("Stopping...")

    def _on_event(self, ev: JobEvent) -> None:
        name = self.EVENT_HANDLERS.get(type(ev))
        if name is not None:
            getattr(self, name)(ev)

    def _on_finished(self, ev: JobEvent) -> None:
        raise NotImplementedError

    def _error(self, message: str) -> None:
        report_error(self.status, message)

    def before_close(self) -> None:
        """What to save before the job is stopped when the widget closes."""

    def closeEvent(self, event) -> None:  # noqa: N802
        self.before_close()
        if self.job is not None and self.job.running:
            self.job.stop_and_wait(grace_s=15.0)
        super().closeEvent(event)
