"""The CLI's progress lines on stderr, for pretraining, fine-tuning and prediction (the words: progress_text.py).

Each printer is an event sink (or a ``progress(done, total)`` callback) over the engines' event contract;
they share how a line reaches the terminal: rewritten in place on a terminal, one line per update otherwise.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from .progress_text import Eta, duration_words, step_text


class _Lines:
    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def status(self, text: str) -> None:
        """A line rewritten in place on a terminal (call :meth:`end_status` before an ordinary line)."""
        if self.tty:
            print("\r" + text.ljust(78), end="", file=self.stream, flush=True)
        else:
            self.say(text)

    def end_status(self) -> None:
        if self.tty:
            print(file=self.stream)


class PretrainPrinter(_Lines):
    """Pretraining: step, epoch, loss, images/s and time left, at most every `every_s` (0.2 s on a terminal)."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 2.0):
        super().__init__(stream)
        self.every_s = every_s
        self.last_print = 0.0
        self.loss: Optional[float] = None
        self.start = time.monotonic()
        self.start_step = 0

    def __call__(self, ev: dict) -> None:
        t = ev.get("type")
        if t == "done" and int(ev.get("world_size") or 1) > 1:  # DDP: every rank says which weights it ended with
            self.say(f"rank {ev.get('rank')}/{ev['world_size']}: step {ev.get('step')}, weights sha256 {ev.get('weights_sha256')}, "
                     f"encoder sha256 {ev.get('encoder_sha256')}")
        if ev.get("rank", 0) != 0:
            return
        if t == "started":
            self.start, self.start_step = time.monotonic(), int(ev.get("step", 0))
            self.say(f"pretraining: {ev['total_steps']} steps" + (f", resuming at step {ev['step']}" if ev.get("step") else ""))
        elif t == "loss":
            self.loss = ev["values"].get("loss")
        elif t == "progress":
            self._progress(ev)
        elif t == "done":
            self.end_status()
            state = "stopped early, last weights saved" if ev.get("stopped") else "done"
            self.say(f"pretraining {state} at step {ev.get('step')}: {ev['out']}")
        elif t == "error":
            self.end_status()

    def _progress(self, ev: dict) -> None:
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
        self.status(line)


class FinetunePrinter(_Lines):
    """Fine-tuning: status messages once training runs (before it, only the chosen settings: a bad input stays
    a one-line error), and "Training the model: step i of n, about ... left" every 5 % of the steps."""

    def __init__(self, stream: TextIO = sys.stderr):
        super().__init__(stream)
        self.last = -1
        self.eta = Eta()

    def __call__(self, e: dict) -> None:
        if e["type"] == "status" and (self.last >= 0 or str(e.get("message", "")).startswith("settings: ")):
            self.say(e["message"])
        if e["type"] == "progress":
            left = self.eta.update(e["step"], e["total_steps"])
            if e["step"] - self.last >= max(1, e["total_steps"] // 20) or e["step"] == e["total_steps"]:
                self.last = e["step"]
                self.say(step_text("Training the model", e["step"], e["total_steps"], left))


def slice_progress(stream: TextIO = sys.stderr, what: str = "Predicting"):
    """A ``progress(done, total)`` callback for prediction: "Predicting: slice i of n, about ... left"."""
    lines, eta = _Lines(stream), Eta()

    def progress(done: int, total: int) -> None:
        if done < total or eta.t0 is not None:  # nothing to report for a volume predicted in one batch
            lines.say(step_text(what, done, total, eta.update(done, total), unit="slice"))

    return progress
