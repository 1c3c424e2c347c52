"""Training events (plain picklable dicts, see the pretraining contract) and the CLI's progress printer.

    {"type": "started", "total_steps", "step"}             step > 0 when resumed
    {"type": "progress", "step", "total_steps", "epoch", "images_per_s"}
    {"type": "loss", "step", "values": {"loss": float, ...}}   mean over the steps since the last loss event
    {"type": "preview", "step", "images": {name: float32 array}}   2-D (H, W) images/heatmaps; "feature_pca" is (H, W, 3) RGB
    {"type": "checkpoint", "path", "step"}
    {"type": "done", "out", "stopped", "step", "rank", "world_size", "weights_sha256", "encoder_sha256"}   emitted by every DDP rank
        (sha256 of every parameter/buffer of the method, and of the saved encoder: equal on all ranks)
    {"type": "error", "message"}
Only rank 0 emits, except "done".
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

from ..progress_text import duration_words

log = logging.getLogger(__name__)

EventSink = Callable[[dict], None]


class Emitter:
    """Calls the user's sink; a failing sink is reported once and then ignored (training goes on)."""

    def __init__(self, sink: Optional[EventSink], rank: int = 0):
        self.sink = sink
        self.rank = rank
        self._broken = False

    def __call__(self, event: dict, all_ranks: bool = False) -> None:
        if self.sink is None or self._broken or (self.rank != 0 and not all_ranks):
            return
        try:
            self.sink(event)
        except Exception as exc:  # the viewer went away; do not kill the run
            self._broken = True
            log.warning("event sink failed (%s); further events are dropped", exc)


class ProgressPrinter:
    """Concise progress for the CLI: one line, rewritten in place on a terminal, else printed every `every_s`."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 2.0):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.last_print = 0.0
        self.loss: Optional[float] = None
        self.start = time.monotonic()
        self.start_step = 0

    def __call__(self, ev: dict) -> None:
        t = ev.get("type")
        if t == "done" and int(ev.get("world_size") or 1) > 1:  # DDP: every rank says which weights it ended with
            print(f"rank {ev.get('rank')}/{ev['world_size']}: step {ev.get('step')}, weights sha256 {ev.get('weights_sha256')}, "
                  f"encoder sha256 {ev.get('encoder_sha256')}", file=self.stream, flush=True)
        if ev.get("rank", 0) != 0:
            return
        if t == "started":
            self.start, self.start_step = time.monotonic(), int(ev.get("step", 0))
            msg = f"pretraining: {ev['total_steps']} steps" + (f", resuming at step {ev['step']}" if ev.get("step") else "")
            print(msg, file=self.stream, flush=True)
        elif t == "loss":
            self.loss = ev["values"].get("loss")
        elif t == "progress":
            now = time.monotonic()
            final = ev["step"] >= ev["total_steps"]
            if now - self.last_print < (0.2 if self.tty else self.every_s) and not final:
                return
            self.last_print = now
            done = ev["step"] - self.start_step
            rate = done / max(now - self.start, 1e-9)
            eta = (ev["total_steps"] - ev["step"]) / rate if rate > 0 else 0
            line = f"step {ev['step']}/{ev['total_steps']} epoch {ev['epoch'] + 1}"
            if self.loss is not None:
                line += f" loss {self.loss:.4f}"
            line += f" {ev.get('images_per_s', 0):.1f} img/s" + ("" if final else f", {duration_words(eta)} left")
            if self.tty:
                print("\r" + line.ljust(78), end="", file=self.stream, flush=True)
            else:
                print(line, file=self.stream, flush=True)
        elif t == "done":
            if self.tty:
                print(file=self.stream)
            state = "stopped early, last weights saved" if ev.get("stopped") else "done"
            print(f"pretraining {state} at step {ev.get('step')}: {ev['out']}", file=self.stream, flush=True)
        elif t == "error":
            if self.tty:
                print(file=self.stream)
