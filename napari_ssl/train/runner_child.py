"""The child side of a :class:`~napari_ssl.train.runner.JobRunner` job, and what both sides share.

``_child_main`` runs in the spawned child: it watches its parent (pipe EOF, re-parenting), calls the job, and
turns its end into exactly one terminal event. Kept apart from runner.py (the parent side) only for size.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

TERMINAL = ("done", "error")

def resolve_target(target: str | Callable) -> Callable:
    """``"package.module:function"`` (or a dotted path) -> the function."""
    if callable(target):
        return target
    mod, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def target_path(target: str | Callable) -> str:
    if isinstance(target, str):
        return target
    return f"{target.__module__}:{target.__qualname__}"


def describe_exit(exitcode: int | None, label: str = "the job") -> str:
    """A readable sentence for a child that ended without reporting done or error."""
    if exitcode is None:
        return f"{label} stopped responding"
    if exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL:
            return (f"{label} was killed ({name}); this is usually the system running out of memory: "
                    "try a smaller batch size, image size or encoder")
        if sig == signal.SIGSEGV:
            return f"{label} crashed (segmentation fault, {name}); the viewer is unaffected"
        if sig == signal.SIGTERM:
            return f"{label} was terminated ({name})"
        return f"{label} died from {name}"
    if exitcode == 0:
        return f"{label} ended without reporting a result"
    return f"{label} exited with code {exitcode} without reporting an error"


def _one_line(exc: BaseException) -> str:
    from ..errors import NapariSSLError

    if isinstance(exc, NapariSSLError):
        msg = str(exc)
    elif isinstance(exc, MemoryError):
        msg = "out of memory: try a smaller batch size, image size or encoder"
    elif type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
        msg = "GPU out of memory: try a smaller batch size, image size or encoder, or the CPU"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split()) or type(exc).__name__


# ----------------------------------------------------------------------------- child side
def _watch_parent(parent_pid: int, conn, stop_event, exit_after_s: float) -> None:
    """Exit when the parent goes away: its pipe end closes, or we are re-parented."""
    while True:
        gone = os.getppid() != parent_pid
        if not gone:
            try:
                if conn.poll(0.5):
                    conn.recv()  # the parent never sends; EOF means it closed or died
            except (EOFError, OSError):
                gone = True
        if gone:
            stop_event.set()
            deadline = time.monotonic() + exit_after_s
            while time.monotonic() < deadline:
                time.sleep(0.1)
            os._exit(3)


def _child_main(target: str, config: Any, q, stop_event, parent_pid: int, conn, exit_after_s: float, nice: int) -> None:
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid, conn, stop_event, exit_after_s),
                     name="napari-ssl-parent-watch", daemon=True).start()
    state = {"terminal": False}

    def events(ev: dict) -> None:
        if ev.get("type") in TERMINAL:
            if state["terminal"]:
                return
            state["terminal"] = True
        q.put(ev)

    try:
        fn = resolve_target(target)
        result = fn(config, events, stop_event)
        if not state["terminal"]:
            events({"type": "done", "out": result if isinstance(result, (str, type(None))) else str(result),
                    "stopped": bool(stop_event.is_set())})
    except BaseException as exc:  # noqa: BLE001 - everything becomes an error event
        events({"type": "error", "message": _one_line(exc), "traceback": traceback.format_exc()})
    finally:
        q.close()
        q.join_thread()  # flush what we sent (the parent is alive, or the watcher exits us)


# ----------------------------------------------------------------------------- used by the parent, starting the child
class _main_not_reimported:
    """While starting the child: keep spawn from re-running the parent's ``__main__`` script.

    The job is named by import path, so the child never needs the parent's main module. Without
    this, a user's script that opens napari at top level (no ``if __name__ == "__main__":`` guard)
    would be re-executed in the child, opening a second viewer there and failing to start the job.
    A job defined in ``__main__`` itself keeps the default behaviour (it needs the module).
    """

    def __init__(self, target: str):
        self.active = not target.startswith("__main__:")
        self.saved: dict = {}

    def __enter__(self):
        main = sys.modules.get("__main__")
        if not self.active or main is None:
            return self
        for attr in ("__file__", "__spec__"):
            if attr in vars(main):
                self.saved[attr] = vars(main)[attr]
        if "__file__" in self.saved:
            del main.__file__
        if self.saved.get("__spec__") is not None:
            main.__spec__ = None
        return self

    def __exit__(self, *exc):
        main = sys.modules.get("__main__")
        if main is not None:
            for attr, value in self.saved.items():
                setattr(main, attr, value)
        return False
