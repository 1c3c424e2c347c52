"""Pretrain dock widget: self-supervised pretraining of a U-Net encoder, in a child process.

Data: image layers and/or folders. Method (one-line explanation each), encoder, epochs, device;
for joint-embedding methods the positives (augment / micle / position), and "Start from" an earlier
run's encoder (hierarchical pretraining, the CLI's --init).
Start turns into Stop. Progress shows in napari's activity dock, the loss curve here, and the
method's previews (in-painted image, heatmaps, feature PCA) as image layers that are updated in place.
"""
from __future__ import annotations

import os

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...train.events import Checkpoint, Failed, Finished, Loss, Preview, Progress, Status
from .common import compact_combo, device_combo, form_layout, image_layers, layer_as_path, safe_name, spin_box, timestamp
from .job_dock import JobDockWidget
from .loss_plot import LossPlot
from .runs_list import RunsList, list_runs, runs_dir

PREVIEW_PREFIX = "preview: "
_ROLE_KIND = Qt.UserRole + 1  # "layer" or "folder"


def method_choices() -> list[tuple[str, str]]:
    """(name, one-line summary) of every registered pretraining method."""
    from ...pretext import METHODS

    return [(name, getattr(cls, "summary", "") or "") for name, cls in METHODS.items()]


PAIR_CHOICES = (
    ("augment", "two augmentations of one slice"),
    ("micle", "two slices of the same patient/study (MICLe)"),
    ("position", "slices at the same relative depth of two volumes (same anatomy, same direction)"),
)
NO_INIT = "(random init)"


def method_kinds() -> dict[str, str]:
    from ...pretext import METHODS

    return {name: str(getattr(cls, "kind", "")) for name, cls in METHODS.items()}


class RunCombo(QComboBox):
    """Earlier pretraining runs (their encoder is the starting point); the list is re-read when opened."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.refresh()

    def refresh(self) -> None:
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        self.addItem(NO_INIT, None)
        for run in list_runs(kind="pretrain"):
            if os.path.isfile(os.path.join(run.path, "encoder.safetensors")):
                self.addItem(run.label, run.path)
                self.setItemData(self.count() - 1, f"{run.encoder} - {run.path}", Qt.ToolTipRole)
        idx = self.findData(current)
        self.setCurrentIndex(max(idx, 0))
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 (Qt)
        self.refresh()
        super().showPopup()


def encoder_choices() -> tuple[str, ...]:
    from ...models.unet import ENCODERS

    return tuple(ENCODERS)


class PretrainWidget(JobDockWidget):
    EVENT_HANDLERS = {Loss: "_on_loss", Progress: "_on_progress", Preview: "_on_preview", Checkpoint: "_on_checkpoint",
                      Status: "_on_status"}

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.out_dir: str | None = None
        self.preview_layers: dict[str, object] = {}
        self.preview_every_s = 5.0
        self.threads: int | None = None  # torch threads in the child (None: torch's default)

        data_box = self._data_box()
        form = self._settings_form()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self._start_or_stop)
        self.plot = LossPlot("loss")
        self.runs = RunsList(kind="pretrain")
        runs_box = QGroupBox("Pretraining runs")
        QVBoxLayout(runs_box).addWidget(self.runs)

        lay = self.content_layout()
        lay.addWidget(data_box)
        lay.addLayout(form)
        lay.addWidget(self.start_button)
        lay.addWidget(self.status)
        lay.addWidget(self.plot)
        lay.addWidget(runs_box)
        lay.addStretch(1)

        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()
        self._on_method()

    def _data_box(self) -> QGroupBox:
        self.data_list = QListWidget()
        self.data_list.setMinimumHeight(70)
        add_folder = QPushButton("Add folder...")
        add_folder.clicked.connect(self._browse_folder)
        remove = QPushButton("Remove folder")
        remove.clicked.connect(self._remove_selected_folder)
        data_box = QGroupBox("Data (checked image layers and folders)")
        dl = QVBoxLayout(data_box)
        dl.addWidget(self.data_list)
        row = QHBoxLayout()
        row.addWidget(add_folder)
        row.addWidget(remove)
        dl.addLayout(row)
        return data_box

    def _settings_form(self):
        self.method = compact_combo(QComboBox())
        self.method_help = QLabel()
        self.method_help.setWordWrap(True)
        self.method_help.setStyleSheet("font-style: italic;")
        for name, summary in method_choices():
            self.method.addItem(name)
            self.method.setItemData(self.method.count() - 1, summary, Qt.ToolTipRole)
        self.method.currentIndexChanged.connect(self._on_method)
        self.encoder = compact_combo(QComboBox())
        self.encoder.addItems(encoder_choices())
        self.kinds = method_kinds()
        self.pairs = compact_combo(QComboBox())
        for value, tip in PAIR_CHOICES:
            self.pairs.addItem(value, value)
            self.pairs.setItemData(self.pairs.count() - 1, tip, Qt.ToolTipRole)
        self.pairs.setToolTip("Positive pairs of the joint-embedding methods")
        self.init_from = compact_combo(RunCombo())
        self.init_from.setToolTip("Continue from an earlier run's encoder (hierarchical pretraining)")
        self.image_size = spin_box(32, 1024, 128, step=32)
        self.epochs = spin_box(1, 100000, 10)
        self.steps = spin_box(0, 10_000_000, 0, special="by epochs")
        self.batch_size = spin_box(1, 4096, 32)
        self.device = device_combo()
        self.run_name = QLineEdit()
        self.run_name.setPlaceholderText("default: METHOD-DATE")
        self.show_previews = QCheckBox("Show previews as layers")
        self.show_previews.setChecked(True)
        return form_layout(("Method", self.method), ("", self.method_help), ("Positives", self.pairs), ("Encoder", self.encoder),
                           ("Start from", self.init_from), ("Image size", self.image_size), ("Epochs", self.epochs),
                           ("Steps", self.steps), ("Batch size", self.batch_size), ("Device", self.device),
                           ("Run name", self.run_name), ("", self.show_previews))

    # --- data list
    def _refresh_layers(self, *args) -> None:
        checked = {self.data_list.item(i).text(): self.data_list.item(i).checkState()
                   for i in range(self.data_list.count())}
        folders = [(self.data_list.item(i).text(), self.data_list.item(i).checkState())
                   for i in range(self.data_list.count()) if self.data_list.item(i).data(_ROLE_KIND) == "folder"]
        self.data_list.clear()
        for layer in image_layers(self.viewer):
            if layer.name.startswith(PREVIEW_PREFIX):
                continue
            self._add_item(layer.name, "layer", checked.get(layer.name, Qt.Checked))
        for path, state in folders:
            self._add_item(path, "folder", state)

    def _add_item(self, text: str, kind: str, state=Qt.Checked) -> None:
        item = QListWidgetItem(text)
        item.setData(_ROLE_KIND, kind)
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(state)
        item.setToolTip("image layer" if kind == "layer" else "folder: every scan under it")
        self.data_list.addItem(item)

    def add_folder(self, path: str) -> None:
        self._add_item(os.path.abspath(path), "folder")

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of scans (DICOM, NIfTI, ...)")
        if folder:
            self.add_folder(folder)

    def _remove_selected_folder(self) -> None:
        for item in self.data_list.selectedItems():
            if item.data(_ROLE_KIND) == "folder":
                self.data_list.takeItem(self.data_list.row(item))

    def selected_data(self) -> tuple[list, list[str]]:
        """(checked image layers, checked folders)."""
        layers, folders = [], []
        for i in range(self.data_list.count()):
            item = self.data_list.item(i)
            if item.checkState() != Qt.Checked:
                continue
            if item.data(_ROLE_KIND) == "folder":
                folders.append(item.text())
            elif item.text() in self.viewer.layers:
                layers.append(self.viewer.layers[item.text()])
        return layers, folders

    def _on_method(self, *args) -> None:
        summary = self.method.currentData(Qt.ToolTipRole) or ""
        self.method_help.setText(summary)
        self.pairs.setEnabled(self.kinds.get(self.method.currentText()) == "joint-embedding")

    # --- job
    def _start_or_stop(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def build_config(self) -> dict:
        layers, folders = self.selected_data()
        if not layers and not folders:
            raise ValueError("choose at least one image layer or folder to pretrain on")
        method = self.method.currentText()
        name = safe_name(self.run_name.text().strip() or f"{method}-{timestamp()}")
        out = runs_dir() / name
        if out.exists():
            out = runs_dir() / f"{name}-{timestamp()}"
        staging = runs_dir() / ".inputs" / out.name
        data = [layer_as_path(lay, staging) for lay in layers] + list(folders)
        cfg = {
            "method": method, "data": data, "out": str(out), "encoder": self.encoder.currentText(),
            "image_size": int(self.image_size.value()), "epochs": int(self.epochs.value()),
            "steps": int(self.steps.value()) or None, "batch_size": int(self.batch_size.value()),
            "devices": self.device.currentData() or "cpu", "preview_every_s": float(self.preview_every_s),
        }
        if self.pairs.isEnabled() and self.pairs.currentData() not in (None, "augment"):
            cfg["pairs"] = self.pairs.currentData()
        init = self.init_from.currentData()
        if init:
            cfg["init"] = str(init)
        if self.threads:
            cfg["threads"] = int(self.threads)
        return cfg

    def start(self) -> None:
        config = self.new_job_config()
        if config is None:
            return
        self.out_dir = config["out"]
        self.last_result = None
        self.plot.clear()
        self.start_job("napari_ssl.train.jobs:pretrain_job", config, label=f"Pretraining ({config['method']})")
        self.start_button.setText("Stop")
        self.status.setText(f"Starting {config['method']} on {len(config['data'])} input(s) -> {config['out']}")

    def stop(self) -> None:
        if self.running:
            self.stop_job(self.start_button)
            self.status.setText("Stopping: saving the last weights...")

    def _on_loss(self, ev: Loss) -> None:
        self.plot.add_loss(ev)

    def _on_progress(self, ev: Progress) -> None:
        if not self.stop_requested and self.job.progress_due:
            from ...progress_text import step_text

            self.status.setText(step_text("Pretraining the encoder", int(ev.step or 0), ev.total_steps, self.job.seconds_left) +
                                (f" (epoch {int(ev.epoch) + 1})" if ev.epoch is not None else ""))

    def _on_preview(self, ev: Preview) -> None:
        if self.show_previews.isChecked():
            self.show_preview_images(ev.images or {})

    def _on_checkpoint(self, ev: Checkpoint) -> None:
        self.status.setText(f"Saved weights: {ev.path}")

    def _on_status(self, ev: Status) -> None:
        self.status.setText(str(ev.message))

    def _on_finished(self, ev: Finished | Failed) -> None:
        self.last_result = ev
        self.start_button.setEnabled(True)
        self.start_button.setText("Start")
        if isinstance(ev, Finished):
            how = "stopped, last weights saved" if ev.stopped else "finished"
            self.status.setText(f"Pretraining {how}: {ev.out}")
            self.runs.refresh()
            if ev.out:
                self.runs.select_path(ev.out)
        else:
            self._error(ev.message or "the job failed")

    # --- previews as layers, reused
    def show_preview_images(self, images: dict) -> None:
        if not images:
            return
        x0, y0, height = self._preview_anchor()
        gap = 0.05 * height
        x = x0
        created = False
        for name, img in images.items():
            img = np.asarray(img, dtype=np.float32)
            if img.ndim == 3 and img.shape[-1] not in (3, 4):
                img = img[img.shape[0] // 2]
            scale = height / max(1, img.shape[0])
            layer_name = PREVIEW_PREFIX + name.replace("_", " ")
            layer = self.viewer.layers[layer_name] if layer_name in self.viewer.layers else None
            if layer is not None and np.shape(layer.data) == img.shape:
                layer.data = img
                layer.translate = (y0, x)
                layer.scale = (scale, scale)
            else:
                if layer is not None:
                    self.viewer.layers.remove(layer)
                rgb = img.ndim == 3
                created = True
                layer = self.viewer.add_image(img, name=layer_name, rgb=rgb, scale=(scale, scale), translate=(y0, x),
                                              colormap=None if rgb else ("magma" if "heat" in name.lower() else "gray"),
                                              metadata={"napari_ssl_preview": True})
            if not img.ndim == 3:
                lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
                layer.contrast_limits = (lo, hi if hi > lo else lo + 1.0)
            self.preview_layers[name] = layer
            x += img.shape[1] * scale + gap
        if created:  # the previews sit beside the scans: show both
            self.viewer.reset_view()

    def _preview_anchor(self) -> tuple[float, float, float]:
        """(x, y, height) in world units: to the right of the scans, as tall as they are."""
        ext = None
        for lay in self.viewer.layers:
            if lay.metadata.get("napari_ssl_preview"):
                continue
            e = np.asarray(lay.extent.world)[:, -2:]
            ext = e if ext is None else np.array([np.minimum(ext[0], e[0]), np.maximum(ext[1], e[1])])
        if ext is None:
            return 0.0, 0.0, 128.0
        height = float(ext[1, 0] - ext[0, 0]) or 128.0
        return float(ext[1, 1] + 0.05 * height), float(ext[0, 0]), height
