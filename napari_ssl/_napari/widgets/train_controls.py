"""Step 3 of Annotate & Train: where training starts from, its settings, the Train button and its progress."""
from __future__ import annotations

import os

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QGroupBox, QLabel, QProgressBar, QPushButton, QWidget

from .common import compact_combo, device_combo, form_layout, spin_box
from .runs_list import list_runs

_ROLE_KIND = Qt.UserRole + 1  # of a "Start from" entry: "pretrain" (an encoder) or "model"


class TrainControls(QGroupBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__("3. Train and predict", parent)
        self.init_combo = compact_combo(QComboBox())
        self.init_combo.setToolTip("A pretrained encoder (the U-Net's encoder starts from it), a fine-tuned model "
                                   "(the whole U-Net starts from it), or random weights")
        self.refresh_init_choices()
        self.warm_start = QCheckBox("Warm-start from the last model")
        self.warm_start.setEnabled(False)
        self.steps = spin_box(0, 1_000_000, 0, special="auto")
        self.steps.setToolTip("auto: about a minute of training on this device (300-600 steps, fewer for a larger tile)")
        self.image_size = spin_box(0, 1024, 0, step=32, special="auto")
        self.image_size.setToolTip("auto: a crop around the drawn structure at the resolution this device trains "
                                   "in about a minute (napari_ssl/train/auto_config.py)")
        self.batch_size = spin_box(1, 1024, 8)
        self.semi_supervised = QCheckBox("Learn from unannotated slices too")
        self.semi_supervised.setChecked(True)
        self.semi_supervised.setToolTip("Semi-supervised: the image's unannotated slices help too: the side (coronal, sagittal) "
                                        "planes train on the rows crossing your slices, and beyond your outermost slices the drawing "
                                        "is carried along the image to guide the result; slices drawn one per image over several images "
                                        "are carried a few slices along their own image and train too. Kept only for this run; never saved "
                                        "as annotation")
        self.device = device_combo()
        self.train_button = QPushButton("Train")
        # where a warning about the chosen settings shows (e.g. slow on this machine): see show_settings_note
        self.settings_note = QLabel("")
        self.settings_note.setWordWrap(True)
        self.settings_note.setVisible(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        self.progress_bar.setTextVisible(True)
        keep = self.progress_bar.sizePolicy()
        keep.setRetainSizeWhenHidden(True)  # showing it at Train does not re-lay out the window (resizing napari's canvas)
        self.progress_bar.setSizePolicy(keep)
        self.settings_label = QLabel("Settings: chosen from the scan and the drawing when you press Train.")
        self.settings_label.setWordWrap(True)
        self.setLayout(form_layout(("Start from", self.init_combo), ("", self.warm_start), ("Steps", self.steps),
                                   ("Image size", self.image_size), ("Batch size", self.batch_size), ("", self.semi_supervised),
                                   ("Device", self.device), self.settings_note, self.train_button, self.progress_bar,
                                   self.settings_label))

    def refresh_init_choices(self) -> None:
        current = self.init_combo.currentData()
        self.init_combo.clear()
        self.init_combo.addItem("random initialisation (from scratch)", None)
        for r in list_runs():
            what = "encoder" if r.kind == "pretrain" else "model"
            i = self.init_combo.count()
            self.init_combo.addItem(f"{what}: {r.name} ({r.method}, {r.date})", r.path)
            self.init_combo.setItemData(i, r.kind, _ROLE_KIND)
            self.init_combo.setItemData(i, f"{r.path}\n{r.method}, {r.encoder}, {r.date}\ndata: {r.data}", Qt.ToolTipRole)
        i = self.init_combo.findData(current)
        self.init_combo.setCurrentIndex(max(0, i))

    def select_pretrained(self, path: str) -> None:
        self.refresh_init_choices()
        i = self.init_combo.findData(path)
        if i < 0:
            self.init_combo.addItem(os.path.basename(path), path)
            i = self.init_combo.count() - 1
        self.init_combo.setCurrentIndex(i)

    def device_value(self) -> str:
        return self.device.currentData() or "cpu"

    def training_options(self) -> dict:
        """The fine-tuning settings chosen here (FinetuneConfig fields)."""
        return {"steps": int(self.steps.value()) or None, "batch_size": int(self.batch_size.value()),
                "image_size": int(self.image_size.value()) or None, "devices": self.device_value(),
                "semi_supervised": self.semi_supervised.isChecked()}

    def start_from(self, last_model: str | None) -> dict:
        """{"init_model": path} (warm start, or a fine-tuned model chosen), {"encoder_weights": path} or {}."""
        if self.warm_start.isChecked() and last_model:
            return {"init_model": last_model}
        if self.init_combo.currentData():
            kind = self.init_combo.itemData(self.init_combo.currentIndex(), _ROLE_KIND)
            return {"init_model" if kind == "model" else "encoder_weights": self.init_combo.currentData()}
        return {}

    def show_settings_note(self, text: str) -> None:
        """Show (or with "" hide) a note about the training settings, e.g. that they will be slow on this machine."""
        self.settings_note.setText(text)
        self.settings_note.setVisible(bool(text))

    def set_bar(self, value: int, total: int, fmt: str) -> None:
        bar = self.progress_bar
        # QProgressBar repaints at once (not at the next paint) on a new range or value: 15-20 ms each with
        # software OpenGL; with updates off meanwhile, it is one ordinary repaint when they come back on
        # An unknown total shows as 0 of 1, never as Qt's busy bar (range 0-0): its animation repaints the bar
        # every few ms, and each repaint makes the window's GL canvas compose the whole window again
        bar.setUpdatesEnabled(False)
        try:
            top = max(1, total)
            if (bar.minimum(), bar.maximum()) != (0, top):
                bar.setRange(0, top)
            bar.setValue(min(value, total) if total > 0 else 0)
            bar.setFormat(fmt)
            bar.setVisible(True)
        finally:
            bar.setUpdatesEnabled(True)
