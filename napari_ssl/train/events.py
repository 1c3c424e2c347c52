"""Training events: typed at both ends, plain picklable dicts in between (the pipe to a job's child process).

A job or an engine builds one of the dataclasses below; :class:`Emitter` (or :func:`typed_sink`) turns it into
its dict with :meth:`JobEvent.to_dict`; the receiver turns the dict back with :func:`as_event`. On the wire:

    {"type": "started", "total_steps", "step"}             step > 0 when resumed
    {"type": "progress", "step", "total_steps", "epoch", "images_per_s"}
    {"type": "loss", "step", "values": {"loss": float, ...}}   mean over the steps since the last loss event
    {"type": "preview", "step", "images": {name: float32 array}}   2-D (H, W) images/heatmaps; "feature_pca" is (H, W, 3) RGB
    {"type": "checkpoint", "path", "step"}
    {"type": "status", "message", "phase", "done", "total", "seconds_left"}   a readable line; the rest optional
    {"type": "log", "message"}
    {"type": "trained", "out", "stopped"}                   the fine-tuning of a train-and-predict job ended
    {"type": "prediction", "labels", "uncertainty", ...}   paths of .npy results and the suggested slices
    {"type": "exported", "summary"}
    {"type": "done", "out", "stopped", "step", "rank", "world_size", "weights_sha256", "encoder_sha256"}   emitted by every DDP rank
        (sha256 of every parameter/buffer of the method, and of the saved encoder: equal on all ranks)
    {"type": "error", "message", "traceback", "exitcode", "stopped"}
Only rank 0 emits, except "done". "done" and "error" end a job (exactly one of them, see train/runner.py).
Keys a class does not name travel in its ``extra`` and come back unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

log = logging.getLogger(__name__)

EventSink = Callable[[dict], None]


@dataclass
class JobEvent:
    """One event of a job. Subclasses name their wire ``type`` in TYPE and their keys as fields."""

    TYPE: ClassVar[str] = ""
    extra: dict = field(default_factory=dict, kw_only=True, repr=False)

    def to_dict(self) -> dict:
        """The dict that travels: ``type``, the fields (optional ones only when set) and ``extra``."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and not (value is None and f.default is None):
                out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "JobEvent":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: d[k] for k in names if k in d}, extra={k: v for k, v in d.items() if k not in names and k != "type"})


@dataclass
class Started(JobEvent):
    TYPE: ClassVar[str] = "started"
    total_steps: Optional[int] = None
    step: int = 0


@dataclass
class Progress(JobEvent):
    TYPE: ClassVar[str] = "progress"
    step: int = 0
    total_steps: Optional[int] = None
    epoch: Optional[int] = None
    images_per_s: Optional[float] = None


@dataclass
class Loss(JobEvent):
    TYPE: ClassVar[str] = "loss"
    step: Optional[int] = None
    values: dict = field(default_factory=dict)


@dataclass
class Preview(JobEvent):
    TYPE: ClassVar[str] = "preview"
    step: Optional[int] = None
    images: dict = field(default_factory=dict)


@dataclass
class Checkpoint(JobEvent):
    TYPE: ClassVar[str] = "checkpoint"
    path: str = ""
    step: Optional[int] = None


@dataclass
class Status(JobEvent):
    """A readable line; with ``phase`` (e.g. "predict") also how far that phase is."""

    TYPE: ClassVar[str] = "status"
    message: str = ""
    phase: Optional[str] = None
    done: Optional[int] = None
    total: Optional[int] = None
    seconds_left: Optional[float] = None


@dataclass
class Log(JobEvent):
    TYPE: ClassVar[str] = "log"
    message: str = ""


@dataclass
class Trained(JobEvent):
    """The fine-tuning inside a train-and-predict job ended (its own Finished, renamed: the job goes on)."""

    TYPE: ClassVar[str] = "trained"
    out: Optional[str] = None
    stopped: bool = False


@dataclass
class Prediction(JobEvent):
    """A prediction's results on disk (.npy, read with allow_pickle=False) and the slices to annotate next."""

    TYPE: ClassVar[str] = "prediction"
    labels: str = ""
    uncertainty: str = ""
    uncertainty_scale: Optional[float] = None
    model: Optional[str] = None
    class_names: list = field(default_factory=list)
    slice_uncertainty: list = field(default_factory=list)
    suggestions: list = field(default_factory=list)  # [{"rank", "slice", "uncertainty"}, ...]


@dataclass
class Exported(JobEvent):
    TYPE: ClassVar[str] = "exported"
    summary: dict = field(default_factory=dict)


@dataclass
class Finished(JobEvent):
    """The job ended with a result (also when stopped early: ``stopped``)."""

    TYPE: ClassVar[str] = "done"
    out: Optional[str] = None
    stopped: bool = False
    step: Optional[int] = None
    rank: Optional[int] = None
    world_size: Optional[int] = None
    weights_sha256: Optional[str] = None
    encoder_sha256: Optional[str] = None


@dataclass
class Failed(JobEvent):
    """The job ended with an error (raised, or the child died: ``exitcode``)."""

    TYPE: ClassVar[str] = "error"
    message: str = ""
    traceback: Optional[str] = None
    exitcode: Optional[int] = None
    stopped: Optional[bool] = None


@dataclass
class Unknown(JobEvent):
    """An event of a type this version does not know (kept, never dropped)."""

    TYPE: ClassVar[str] = ""
    kind: str = ""

    def to_dict(self) -> dict:
        return {"type": self.kind, **self.extra}


EVENT_TYPES: dict[str, type[JobEvent]] = {cls.TYPE: cls for cls in (
    Started, Progress, Loss, Preview, Checkpoint, Status, Log, Trained, Prediction, Exported, Finished, Failed)}
TERMINAL_TYPES = (Finished, Failed)
AnyEvent = Union[JobEvent, dict]


def as_event(ev: AnyEvent) -> JobEvent:
    """The typed event of a dict from the pipe (an event already typed is returned as it is)."""
    if isinstance(ev, JobEvent):
        return ev
    kind = str(ev.get("type", ""))
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return Unknown(kind=kind, extra={k: v for k, v in ev.items() if k != "type"})
    return cls.from_dict(ev)


def as_dict(ev: AnyEvent) -> dict:
    """The wire form of an event (a dict is returned as it is)."""
    return ev.to_dict() if isinstance(ev, JobEvent) else ev


def typed_sink(sink: EventSink) -> Callable[[AnyEvent], None]:
    """A sink that takes typed events (or dicts) and passes their dicts to `sink`."""
    return lambda ev: sink(as_dict(ev))


class Emitter:
    """Calls the user's sink; a failing sink is reported once and then ignored (training goes on)."""

    def __init__(self, sink: Optional[EventSink], rank: int = 0):
        self.sink = sink
        self.rank = rank
        self._broken = False

    def __call__(self, event: AnyEvent, all_ranks: bool = False) -> None:
        if self.sink is None or self._broken or (self.rank != 0 and not all_ranks):
            return
        try:
            self.sink(as_dict(event))
        except Exception as exc:  # the viewer went away; do not kill the run
            self._broken = True
            log.warning("event sink failed (%s); further events are dropped", exc)

