"""The whole loop on a sample study, driven through the plugin's own widgets (what `napari-ssl demo` shows).

Stages, each through the same widget calls a user's clicks make:
  opened -> pretrain (MR only: a short in-painting run on the image) -> annotate (a few slices copied from
  the sample's expert labels) -> fill between slices (the instant result) -> train and predict (prediction
  outline + uncertainty) -> suggest (Next slice jumps to the top suggestion) -> export (DICOM-SEG for the
  DICOM CT, NIfTI for both).

The loop runs from the Qt event loop (a polling timer moves from stage to stage), so with a display the
viewer stays usable while it runs and stays open afterwards with every result layer. ``on_stage(name)`` is
called after each stage (the headless demo takes a screenshot there). Nothing here blocks.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..train.events import Finished


@dataclass
class LoopSettings:
    """Short on purpose: the demo must finish in a few minutes on a laptop CPU."""
    annotate_slices: int = 3  # slices copied from the expert labels, at the (i+1)/(k+1) quantiles of the structure's extent
    pretrain_steps: int = 0  # 0: no pretraining stage
    pretrain_image_size: int = 64
    finetune_steps: int = 80
    image_size: int = 0  # 0: the model's / default
    batch_size: int = 8
    export_seg: bool = False
    export_nifti: bool = True


def dice(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Mean Dice over the foreground labels present in either map (None when both are empty)."""
    values = []
    for v in sorted(set(np.unique(a)) | set(np.unique(b)) - {0}):
        x, y = a == v, b == v
        s = int(x.sum()) + int(y.sum())
        if s:
            values.append(2.0 * int((x & y).sum()) / s)
    return float(np.mean(values)) if values else None


def pick_slices(labels: np.ndarray, k: int) -> list[int]:
    """k slices at the (i+1)/(k+1) quantiles of the labelled extent along axis 0 (as the benchmarks place them)."""
    zs = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return []
    k = max(1, min(int(k), zs.size))
    if zs.size <= k + 1 and k >= 2:  # a short extent (the 3-slice CT): spread over it, ends included
        return sorted({int(zs[int(round(i * (zs.size - 1) / (k - 1)))]) for i in range(k)})
    picks = [int(zs[int(round((i + 1) * (zs.size - 1) / (k + 1)))]) for i in range(k)]
    return sorted(set(picks))


@dataclass
class DemoLoop:
    viewer: Any
    name: str
    settings: LoopSettings
    export_dir: str
    on_stage: Callable[[str], None] = lambda name: None
    on_done: Callable[["DemoLoop"], None] = lambda loop: None
    log: Callable[[str], None] = print
    stages: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    error: Optional[str] = None
    finished: bool = False

    def __post_init__(self):
        from qtpy.QtCore import QTimer

        self._plan: list[tuple[str, Callable[[], Optional[Callable[[], bool]]]]] = []
        if self.settings.pretrain_steps:
            self._plan.append(("pretrain", self._pretrain))
        self._plan += [("annotate", self._annotate), ("fill_between", self._fill_between), ("train", self._train),
                       ("suggest", self._suggest), ("export", self._export)]
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        self._waiting: Optional[Callable[[], bool]] = None
        self._current: Optional[str] = None
        self._t_stage = 0.0
        self._t0 = 0.0

    # --- widgets (docked by the caller, as from Plugins > napari-ssl)
    def _widget(self, title: str):
        for name, dock in self.viewer.window.dock_widgets.items():
            if title in name:
                return dock.widget() if hasattr(dock, "widget") and callable(dock.widget) else dock
        raise RuntimeError(f"the {title} widget is not docked")

    def _raise(self, title: str) -> None:
        """Bring a docked widget's tab to the front (what the stage's screenshot should show)."""
        from qtpy.QtWidgets import QDockWidget

        w = self._widget(title)
        while w is not None and not isinstance(w, QDockWidget):
            w = w.parentWidget()
        if w is not None:
            w.raise_()

    def _layers(self):
        image = next(ly for ly in self.viewer.layers if type(ly).__name__ == "Image" and not ly.metadata.get("napari_ssl_preview"))
        expert = next((ly for ly in self.viewer.layers if type(ly).__name__ == "Labels"), None)
        return image, expert

    # --- driving
    def start(self) -> None:
        self._t0 = time.monotonic()
        self.on_stage("opened")
        self.stages.append({"stage": "opened", "seconds": 0.0})
        self._timer.start()
        self._next()

    def _next(self) -> None:
        if not self._plan:
            self._finish()
            return
        self._current, step = self._plan.pop(0)
        self._t_stage = time.monotonic()
        self.log(f"[{self.name}] {self._current.replace('_', ' ')}...")
        self._busy = True  # widgets may process events while starting a job: no re-entrant poll meanwhile
        try:
            self._waiting = step()
        except Exception as exc:  # noqa: BLE001 - reported in the summary and on the console
            self._fail(f"{self._current}: {exc}")
        finally:
            self._busy = False

    def _poll(self) -> None:
        if self.finished or self._current is None or getattr(self, "_busy", False):
            return
        try:
            if self._waiting is not None and not self._waiting():
                return
        except Exception as exc:  # noqa: BLE001
            self._fail(f"{self._current}: {exc}")
            return
        name = self._current
        self.stages.append({"stage": name, "seconds": round(time.monotonic() - self._t_stage, 2)})
        self._current = None
        self._busy = True
        try:
            self.on_stage(name)
        finally:
            self._busy = False
        self._next()

    def _fail(self, message: str) -> None:
        self.error = message
        self.log(f"[{self.name}] failed: {message}")
        self._finish()

    def _finish(self) -> None:
        self._timer.stop()
        self.finished = True
        self.summary["total_seconds"] = round(time.monotonic() - self._t0, 2)
        self.summary["stages"] = self.stages
        if self.error:
            self.summary["error"] = self.error
        self.on_done(self)

    # --- stages
    def _pretrain(self):
        w = self._widget("Pretrain")
        self._raise("Pretrain")
        w.method.setCurrentText("inpainting")
        w.image_size.setValue(self.settings.pretrain_image_size)
        w.batch_size.setValue(self.settings.batch_size)
        w.steps.setValue(self.settings.pretrain_steps)
        w.preview_every_s = 3.0
        w.start()
        if w.job is None:
            raise RuntimeError(w.status.text())
        self._pretrain_widget = w

        def done() -> bool:
            if w.running or w.last_result is None:
                return False
            res = w.last_result
            if not isinstance(res, Finished):
                raise RuntimeError(res.message or "pretraining failed")
            self.summary["pretrained"] = {"method": "inpainting", "steps": self.settings.pretrain_steps, "out": os.path.basename(res.out or "")}
            return True
        return done

    def _annotate(self):
        w = self._widget("Annotate & Train")
        self._raise("Annotate & Train")
        image, expert = self._layers()
        if expert is None:
            raise RuntimeError("the sample has no labels to copy annotations from")
        self.expert = np.asarray(expert.data)
        names = (expert.metadata.get("napari_ssl") or {}).get("segment_names") or {}
        w.image_combo.select(image.name)
        w.set_classes([str(names.get(v, names.get(str(v), f"class {v}"))) for v in range(1, int(self.expert.max()) + 1)])
        labels = w.create_labels_layer()
        labels.data = np.zeros_like(labels.data)  # an autosave of an earlier demo run would come back: start blank
        w.state.empty_slices.clear()
        self.annotated = pick_slices(self.expert, self.settings.annotate_slices)
        for z in self.annotated:  # what a user's brush does, one slice at a time
            labels.data[z] = self.expert[z].astype(labels.data.dtype)
        labels.refresh()
        w.update_count()
        w.go_to_slice(self.annotated[len(self.annotated) // 2])
        if getattr(self, "_pretrain_widget", None) is not None:  # the previews sit beside the scan: shown, now removed
            for lay in list(self._pretrain_widget.preview_layers.values()):
                if lay in self.viewer.layers:
                    self.viewer.layers.remove(lay)
            self._pretrain_widget.preview_layers.clear()
            self.viewer.reset_view()
        expert.visible = False  # from here on the screen shows what the user drew and what the model made
        self.widget, self.labels = w, labels
        self.summary["annotated_slices"] = list(self.annotated)
        self.summary["slices"] = int(self.expert.shape[0])
        return None

    def _fill_between(self):
        w = self.widget
        if len(self.annotated) < 2 or not w.fill_between():
            self.summary["fill_between"] = "needs two annotated slices"
            return None
        name = w.image_layer.name + " fill between"

        def done() -> bool:
            if name not in self.viewer.layers:
                if not w._filling.running and w.status.text().startswith("Error"):
                    raise RuntimeError(w.status.text())
                return False
            self.summary["dice_fill_between"] = self._dice(np.asarray(self.viewer.layers[name].data))
            return True
        return done

    def _train(self):
        w = self.widget
        w.fill_between_auto = False  # already shown
        pretrained = (self.summary.get("pretrained") or {}).get("out")
        if pretrained and getattr(self, "_pretrain_widget", None) is not None and self._pretrain_widget.last_result:
            w.select_pretrained(self._pretrain_widget.last_result.out)
        w.steps.setValue(self.settings.finetune_steps)
        w.image_size.setValue(self.settings.image_size)
        w.batch_size.setValue(self.settings.batch_size)
        w.train()
        if not w.running:
            raise RuntimeError(w.status.text())

        def done() -> bool:
            if w.running or w.results_pending or w.last_result is None:
                return False
            res = w.last_result
            if not isinstance(res, Finished):
                raise RuntimeError(res.message or "training failed")
            pred = w.prediction_layer()
            unc = w.uncertainty_name()
            if unc in self.viewer.layers:  # it arrives hidden; the demo shows every result, as a user ticking its eye
                self.viewer.layers[unc].visible = True
            # show a slice the model completed on its own: between the first two annotated slices
            between = [z for z in range(self.annotated[0] + 1, self.annotated[-1]) if z not in self.annotated]
            if between:
                w.go_to_slice(between[len(between) // 2] if len(self.annotated) < 3 else (self.annotated[0] + self.annotated[1]) // 2)
            self.summary["model"] = os.path.basename(str(w.last_model))
            self.summary["dice_prediction"] = self._dice(np.asarray(pred.data))
            self.summary["finetune_steps"] = self.settings.finetune_steps
            return True
        return done

    def _suggest(self):
        w = self.widget
        z = w.next_slice()
        self.summary["suggested_slices"] = [int(s["slice"]) for s in w.suggestions]
        self.summary["went_to_slice"] = z
        return None

    def _export(self):
        ex = self._widget("Export")
        self._raise("Export")
        pred = self.widget.prediction_layer()
        os.makedirs(self.export_dir, exist_ok=True)
        todo = []
        if self.settings.export_seg:
            todo.append(("DICOM-SEG", os.path.join(self.export_dir, f"{self.name}_prediction_seg.dcm")))
        if self.settings.export_nifti:
            todo.append(("NIfTI", os.path.join(self.export_dir, f"{self.name}_prediction.nii.gz")))
        self.summary["exports"] = []
        state = {"i": -1}

        def start_next() -> None:
            state["i"] += 1
            fmt, path = todo[state["i"]]
            ex.labels_combo.select(pred.name)
            ex.format.setCurrentText(fmt)
            ex.path.setText(path)
            ex.last_result = None
            ex.export()
            if ex.job is None or ex.last_result is not None:
                raise RuntimeError(ex.status.text())

        def done() -> bool:
            if ex.job is not None and ex.job.running or ex.last_result is None:
                return False
            if not isinstance(ex.last_result, Finished):
                raise RuntimeError(ex.last_result.message or "export failed")
            fmt, path = todo[state["i"]]
            self.summary["exports"].append({"format": fmt, "file": os.path.basename(path), "bytes": os.path.getsize(path)})
            if state["i"] + 1 < len(todo):
                start_next()
                return False
            return True
        start_next()
        return done

    # --- scores
    def _dice(self, pred: np.ndarray) -> dict:
        """Against the sample's expert labels: all slices, and only the slices the demo did not annotate."""
        rest = np.ones(self.expert.shape[0], bool)
        rest[self.annotated] = False
        out = {"all_slices": dice(pred, self.expert)}
        if rest.any():
            out["unannotated_slices"] = dice(pred[rest], self.expert[rest])
        return {k: (round(v, 4) if v is not None else None) for k, v in out.items()}
