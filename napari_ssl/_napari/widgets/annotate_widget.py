"""Annotate & Train dock widget: the active-learning loop.

1. Create a Labels layer bound to an image (same shape, scale, translate; the image's geometry and
   identity in metadata) with named, coloured classes. It is autosaved as the user paints.
2. Paint a few slices; mark slices where the structure is absent as annotated-empty.
3. Train: fine-tune a U-Net (from a pretrained encoder, or from scratch; warm-started from the last
   model on later rounds) in a child process, then predict the image: a prediction Labels layer and an
   uncertainty Image layer appear, with the slices worth annotating next.
4. Next slice jumps to the top suggestion; Accept copies the (corrected) prediction of the current slice
   into the annotations; Train again.

"Fill between slices" gives an instant, training-free completion of the annotated slices as its own
layer (it also starts by itself when Train is clicked, so there is something to look at while the model
trains). Results are read off the GUI thread and shown one layer per event-loop turn (result_layers).
"""
from __future__ import annotations

import copy
import os

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (QCheckBox, QColorDialog, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView,
                            QLabel, QListWidget, QListWidgetItem, QProgressBar, QPushButton, QSpinBox, QTableWidget,
                            QTableWidgetItem, QVBoxLayout, QWidget)

from ..annotations_autosave import AnnotationAutosave, autosave_folder, read_annotations
from ..job_runner import QtJob
from .common import (DockWidgetBase, LayerCombo, compact_combo, device_choices, image_layers, layer_volume, report_error, safe_name,
                     timestamp)
from . import result_layers
from .loss_plot import LossPlot
from .runs_list import list_runs, runs_dir

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff"]
ANNOTATION_SUFFIX = " annotations"
PREDICTION_SUFFIX = " prediction"
UNCERTAINTY_SUFFIX = " uncertainty"
FILL_BETWEEN_SUFFIX = " fill between"


def class_colormap(colors: list[str]):
    from napari.utils.colormaps import DirectLabelColormap

    d = {0: np.zeros(4), None: np.array([0.5, 0.5, 0.5, 1.0])}
    for i, c in enumerate(colors):
        d[i + 1] = QColor(c).getRgbF()
    return DirectLabelColormap(color_dict=d)


def annotated_slice_mask(labels: np.ndarray, empty_slices) -> np.ndarray:
    """(z,) bool: slices holding any label, or marked annotated-empty."""
    a = np.asarray(labels)
    flat = a.reshape(a.shape[0], -1)
    # (max > 0 reads unsigned labels ~3x faster than any(): this runs in the event loop, on a full CT at Train)
    mask = flat.max(axis=1) > 0 if flat.size and np.issubdtype(flat.dtype, np.unsignedinteger) else flat.any(axis=1)
    for z in empty_slices or ():
        if 0 <= int(z) < mask.shape[0]:
            mask[int(z)] = True
    return mask


class AnnotateTrainWidget(DockWidgetBase):
    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.labels_layer = None
        self.image_layer = None
        self.autosave: AnnotationAutosave | None = None
        self.job: QtJob | None = None
        self.last_model: str | None = None
        self.last_result: dict | None = None
        self.suggestions: list[dict] = []
        self.preview_every_s = 5.0
        self.threads: int | None = None
        self._staged = result_layers.StagedSteps(self)
        self._loading: result_layers.BackgroundCall | None = None  # prediction arrays being read
        self._filling: result_layers.BackgroundCall | None = None  # fill between slices being computed
        self._finish_pending: dict | None = None
        self.fill_between_auto = True  # Train also starts fill between slices (the instant result)
        self._train_round = 0  # Train clicks so far
        self._shown_round = 0  # the round whose prediction is on screen

        # --- annotation set-up
        self.image_combo = LayerCombo(napari_viewer, image_layers)
        self.classes = QTableWidget(0, 2)
        self.classes.setHorizontalHeaderLabels(["Class", "Colour"])
        self.classes.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.classes.verticalHeader().setVisible(True)
        self.classes.setMaximumHeight(110)
        self.classes.cellDoubleClicked.connect(self._pick_colour)
        self.classes.itemChanged.connect(self._on_classes_edited)
        add_cls = QPushButton("+ class")
        add_cls.clicked.connect(lambda: self.add_class(f"class {self.classes.rowCount() + 1}"))
        del_cls = QPushButton("- class")
        del_cls.clicked.connect(self._remove_class)
        self.create_button = QPushButton("Create labels layer")
        self.create_button.clicked.connect(self.create_labels_layer)
        setup = QGroupBox("1. Labels for an image")
        sl = QFormLayout(setup)
        sl.addRow("Image", self.image_combo)
        sl.addRow(self.classes)
        row = QHBoxLayout()
        row.addWidget(add_cls)
        row.addWidget(del_cls)
        row.addWidget(self.create_button)
        sl.addRow(row)

        # --- annotation state
        self.empty_button = QPushButton("Mark slice annotated-empty")
        self.empty_button.setToolTip("The structure is absent on this slice: train on it as background")
        self.empty_button.clicked.connect(self.mark_current_slice_empty)
        self.count_label = QLabel("No labels layer yet.")
        self.count_label.setWordWrap(True)
        self.fill_button = QPushButton("Fill between slices (instant)")
        self.fill_button.setToolTip("Interpolate the annotated slices through the slices between them, as 3D Slicer's "
                                    "'Fill between slices' does: no training; shown as its own layer")
        self.fill_button.clicked.connect(self.fill_between)
        ann = QGroupBox("2. Annotate")
        al = QVBoxLayout(ann)
        al.addWidget(self.empty_button)
        al.addWidget(self.count_label)
        al.addWidget(self.fill_button)

        # --- training
        self.init_combo = compact_combo(QComboBox())
        self.init_combo.setToolTip("A pretrained encoder (the U-Net's encoder starts from it), a fine-tuned model "
                                   "(the whole U-Net starts from it), or random weights")
        self.refresh_init_choices()
        self.warm_start = QCheckBox("Warm-start from the last model")
        self.warm_start.setEnabled(False)
        self.steps = QSpinBox()
        self.steps.setRange(0, 1_000_000)
        self.steps.setValue(300)
        self.steps.setSpecialValueText("auto")
        self.image_size = QSpinBox()
        self.image_size.setRange(0, 1024)
        self.image_size.setSingleStep(32)
        self.image_size.setSpecialValueText("auto")
        self.image_size.setToolTip("auto: a crop around the drawn structure at the resolution this device trains "
                                   "in about a minute (napari_ssl/train/auto_config.py)")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 1024)
        self.batch_size.setValue(8)
        self.semi_supervised = QCheckBox("Learn from unannotated slices too")
        self.semi_supervised.setChecked(True)
        self.semi_supervised.setToolTip("Semi-supervised: the image's unannotated slices also train, through pseudo-labels "
                                        "kept only for this run (fill between slices, confident predictions); never saved as annotation")
        self.device = compact_combo(QComboBox())
        for label, value in device_choices():
            self.device.addItem(label, value)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self._train_or_stop)
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
        train = QGroupBox("3. Train and predict")
        tl = QFormLayout(train)
        tl.addRow("Start from", self.init_combo)
        tl.addRow("", self.warm_start)
        tl.addRow("Steps", self.steps)
        tl.addRow("Image size", self.image_size)
        tl.addRow("Batch size", self.batch_size)
        tl.addRow("", self.semi_supervised)
        tl.addRow("Device", self.device)
        tl.addRow(self.settings_note)
        tl.addRow(self.train_button)
        tl.addRow(self.progress_bar)
        self.settings_label = QLabel("Settings: chosen from the scan and the drawing when you press Train.")
        self.settings_label.setWordWrap(True)
        tl.addRow(self.settings_label)

        # --- review
        self.suggest_list = QListWidget()
        self.suggest_list.setMaximumHeight(100)
        self.suggest_list.itemDoubleClicked.connect(lambda item: self.go_to_slice(item.data(Qt.UserRole)))
        self.next_button = QPushButton("Next slice")
        self.next_button.setToolTip("Go to the most uncertain slice not yet annotated")
        self.next_button.clicked.connect(self.next_slice)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Copy the (corrected) prediction of this slice into the annotations")
        self.accept_button.clicked.connect(self.accept_current_slice)
        review = QGroupBox("4. Review")
        rl = QVBoxLayout(review)
        rl.addWidget(QLabel("Suggested slices (highest uncertainty score first):"))
        rl.addWidget(self.suggest_list)
        row = QHBoxLayout()
        row.addWidget(self.next_button)
        row.addWidget(self.accept_button)
        rl.addLayout(row)

        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.plot = LossPlot("fine-tuning loss")
        self.plot.setMinimumHeight(110)

        lay = QVBoxLayout(self)
        for w in (setup, ann, train, review, self.status, self.plot):
            lay.addWidget(w)
        lay.addStretch(1)

        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(300)
        self._count_timer.timeout.connect(self.update_count)
        napari_viewer.dims.events.current_step.connect(self._on_slice_changed)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self.add_class("structure")
        self._update_buttons()

    # --- classes
    def add_class(self, name: str, colour: str | None = None) -> None:
        r = self.classes.rowCount()
        self.classes.blockSignals(True)
        self.classes.insertRow(r)
        self.classes.setItem(r, 0, QTableWidgetItem(name))
        c = QTableWidgetItem("")
        c.setFlags(c.flags() & ~Qt.ItemIsEditable)
        c.setBackground(QColor(colour or PALETTE[r % len(PALETTE)]))
        c.setData(Qt.UserRole, colour or PALETTE[r % len(PALETTE)])
        c.setToolTip("double-click to change")
        self.classes.setItem(r, 1, c)
        self.classes.blockSignals(False)
        self._on_classes_edited()

    def set_classes(self, names: list[str]) -> None:
        self.classes.setRowCount(0)
        for n in names:
            self.add_class(n)

    def _remove_class(self) -> None:
        if self.classes.rowCount() > 1:
            self.classes.removeRow(self.classes.rowCount() - 1)
            self._on_classes_edited()

    def class_names(self) -> list[str]:
        return [(self.classes.item(r, 0).text().strip() or f"class {r + 1}") for r in range(self.classes.rowCount())]

    def class_colours(self) -> list[str]:
        return [self.classes.item(r, 1).data(Qt.UserRole) for r in range(self.classes.rowCount())]

    def _pick_colour(self, row: int, col: int) -> None:
        if col != 1:
            return
        c = QColorDialog.getColor(QColor(self.classes.item(row, 1).data(Qt.UserRole)), self, "Class colour")
        if c.isValid():
            self.classes.item(row, 1).setBackground(c)
            self.classes.item(row, 1).setData(Qt.UserRole, c.name())
            self._on_classes_edited()

    def _on_classes_edited(self, *args) -> None:
        """Keep the labels layer's names, colours and features in step with the table."""
        lay = self.labels_layer
        if lay is None:
            return
        names, colours = self.class_names(), self.class_colours()
        info = lay.metadata.setdefault("napari_ssl", {})
        info["segment_names"] = {i + 1: n for i, n in enumerate(names)}
        info.setdefault("annotation", {})["classes"] = names
        info["annotation"]["colours"] = colours
        lay.colormap = class_colormap(colours)
        lay.features = {"index": np.arange(len(names) + 1), "name": ["background", *names]}
        if self.autosave:
            self.autosave.schedule()

    # --- the labels layer
    def create_labels_layer(self):
        image = self.image_combo.layer()
        if image is None:
            self._error("open an image first (File > Open, or File > Open Sample > napari-ssl)")
            return None
        vol = layer_volume(image)
        name = image.name + ANNOTATION_SUFFIX
        if name in self.viewer.layers:  # already there: bind to it
            self.bind(self.viewer.layers[name], image)
            return self.labels_layer
        data = np.zeros(vol.shape, dtype=np.uint8 if len(self.class_names()) < 255 else np.uint16)
        empty: list[int] = []
        identity = (vol.series_instance_uid or vol.path or image.name)
        folder = autosave_folder(image.name, identity)
        restored = read_annotations(folder)
        if restored is not None and restored[0].shape == data.shape:
            data = restored[0].astype(data.dtype)
            empty = [int(z) for z in restored[1].get("empty_slices", [])]
            if restored[1].get("classes"):
                self.set_classes(list(restored[1]["classes"]))
        meta = copy.copy(image.metadata) if image.metadata else {}
        info = dict(meta.get("napari_ssl") or {})
        info.update({"affine": vol.affine.tolist(), "series_instance_uid": vol.series_instance_uid,
                     "study_instance_uid": vol.study_instance_uid, "frame_of_reference_uid": vol.frame_of_reference_uid,
                     "modality": vol.modality, "path": vol.path, "units": ""})
        info["annotation"] = {"image_layer": image.name, "empty_slices": empty}
        meta["napari_ssl"] = info
        meta["volume"] = vol
        layer = self.viewer.add_labels(data, name=name, scale=tuple(image.scale), translate=tuple(image.translate),
                                       metadata=meta, opacity=0.6)
        self.bind(layer, image, autosave_dir=folder)
        layer.selected_label = 1
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        if restored is not None and restored[0].shape == data.shape:
            self.status.setText(f"Restored annotations autosaved {restored[1].get('saved_at', '')} from {folder}")
        return layer

    def bind(self, layer, image, autosave_dir: str | os.PathLike | None = None) -> None:
        if self.autosave is not None:
            self.autosave.flush()
            self.autosave.disconnect_layer()
        self.labels_layer, self.image_layer = layer, image
        vol = layer_volume(image)
        folder = autosave_dir or autosave_folder(image.name, vol.series_instance_uid or vol.path or image.name)
        self.autosave = AnnotationAutosave(layer, folder, vol.affine, self._autosave_meta, parent=self)
        from ...active.fill_between import start_worker

        start_worker()  # ITK loads in its worker process meanwhile, so Fill between slices answers at once
        layer.events.paint.connect(self._schedule_count)
        layer.events.data.connect(self._schedule_count)
        self._on_classes_edited()
        self.autosave.save_now()
        self.update_count()
        self._update_buttons()
        self._prepare_result_layers()

    def _autosave_meta(self) -> dict:
        vol = layer_volume(self.image_layer) if self.image_layer is not None else None
        return {
            "image_layer": self.image_layer.name if self.image_layer is not None else None,
            "series_instance_uid": vol.series_instance_uid if vol else None,
            "image_path": vol.path if vol else None,
            "shape": list(np.shape(self.labels_layer.data)),
            "classes": self.class_names(), "colours": self.class_colours(),
            "empty_slices": self.empty_slices(),
        }

    def empty_slices(self) -> list[int]:
        if self.labels_layer is None:
            return []
        return sorted(int(z) for z in self.labels_layer.metadata["napari_ssl"]["annotation"].get("empty_slices", []))

    def _on_layer_removed(self, event) -> None:
        if event.value is self.labels_layer:
            if self.autosave:
                self.autosave.flush()
                self.autosave.disconnect_layer()
            self.labels_layer = self.autosave = None
            self._update_buttons()

    # --- slices
    def _z_axis(self) -> int:
        return self.viewer.dims.ndim - 3

    def current_slice(self) -> int | None:
        lay = self.labels_layer
        if lay is None:
            return None
        z = int(np.round(lay.world_to_data(self.viewer.dims.point)[-3]))
        return z if 0 <= z < lay.data.shape[0] else None

    def go_to_slice(self, z: int) -> None:
        lay = self.labels_layer or self.image_layer
        if lay is None:
            return
        world = lay.data_to_world([int(z), 0, 0])
        self.viewer.dims.set_point(self._z_axis(), float(world[0]))

    def mark_current_slice_empty(self) -> None:
        z = self.current_slice()
        if z is None:
            self._error("create a labels layer first")
            return
        ann = self.labels_layer.metadata["napari_ssl"]["annotation"]
        if z not in ann.setdefault("empty_slices", []):
            ann["empty_slices"].append(z)
        if np.any(self.labels_layer.data[z]):
            self.status.setText(f"Slice {z} holds labels; it already counts as annotated (kept them).")
        else:
            self.status.setText(f"Slice {z} marked annotated-empty.")
        self.autosave.schedule()
        self.update_count()

    def annotated_mask(self) -> np.ndarray:
        return annotated_slice_mask(self.labels_layer.data, self.empty_slices())

    def _schedule_count(self, *args) -> None:
        self._count_timer.start()

    def update_count(self) -> None:
        if self.labels_layer is None:
            self.count_label.setText("No labels layer yet.")
            return
        mask = self.annotated_mask()
        n_empty = len([z for z in self.empty_slices() if not np.any(self.labels_layer.data[z])])
        z = self.current_slice()
        here = "" if z is None else f" Slice {z}: {'annotated' if mask[z] else 'not annotated'}."
        self.count_label.setText(f"{int(mask.sum())} of {mask.size} slices annotated "
                                 f"({int(mask.sum()) - n_empty} with labels, {n_empty} empty).{here}")

    def _on_slice_changed(self, *args) -> None:
        if self.labels_layer is not None:
            self._schedule_count()

    # --- training
    def refresh_init_choices(self) -> None:
        current = self.init_combo.currentData()
        self.init_combo.clear()
        self.init_combo.addItem("random initialisation (from scratch)", None)
        for r in list_runs():
            what = "encoder" if r.kind == "pretrain" else "model"
            i = self.init_combo.count()
            self.init_combo.addItem(f"{what}: {r.name} ({r.method}, {r.date})", r.path)
            self.init_combo.setItemData(i, r.kind, Qt.UserRole + 1)
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

    @property
    def running(self) -> bool:
        """A training job is starting (its inputs being written) or running."""
        starting = getattr(self, "_starting", None)
        return (starting is not None and starting.running) or (self.job is not None and self.job.running)

    def _train_or_stop(self) -> None:
        if self.running and self.job is not None and self.job.running:
            self.job.request_stop()
            self.train_button.setEnabled(False)
            self.train_button.setText("Stopping...")
        else:
            self.train()

    def build_config(self) -> dict:
        if self.labels_layer is None or self.image_layer is None:
            raise ValueError("create a labels layer and annotate a few slices first")
        mask = self.annotated_mask()
        if not mask.any():
            raise ValueError("no slice is annotated: paint the structure on a few slices (or mark slices empty)")
        # saved in the background (never waited for here: compressing a full CT's labels took seconds, with the
        # viewer frozen); the job trains on the copy of the layer's data taken below
        self.autosave.save_pending()
        image = layer_volume(self.image_layer)
        # not copied here (77 MB of a full CT: up to 0.8 s of the event loop on a loaded machine): train() writes it to
        # a file from the results thread right after the click (offload_arrays), and fill between reads it there too;
        # a stroke painted during those few hundred milliseconds may or may not be in this round
        labels = np.asarray(self.labels_layer.data)
        name = safe_name(self.image_layer.name, "image")
        out = runs_dir() / f"model-{name}-{timestamp()}"
        ft = {
            "images": [image], "labels": [labels], "out": str(out),
            "classes": self.class_names(), "empty_slices": [self.empty_slices()],
            "steps": int(self.steps.value()) or None, "batch_size": int(self.batch_size.value()),
            "image_size": int(self.image_size.value()) or None,
            "devices": self.device.currentData() or "cpu", "preview_every_s": float(self.preview_every_s),
            "semi_supervised": self.semi_supervised.isChecked(),
        }
        if self.warm_start.isChecked() and self.last_model:
            ft["init_model"] = self.last_model
        elif self.init_combo.currentData():
            kind = self.init_combo.itemData(self.init_combo.currentIndex(), Qt.UserRole + 1)
            ft["init_model" if kind == "model" else "encoder_weights"] = self.init_combo.currentData()
        cfg = {"finetune": ft,
               "predict": {"image": image, "out": str(runs_dir() / ".predictions" / out.name),
                           "annotated_slices": mask, "labels": labels, "keep_connected": self.semi_supervised.isChecked(),
                           "fill_between": self.semi_supervised.isChecked(),
                           "n": 5, "device": self.device.currentData() or "cpu"}}
        if self.threads:
            cfg["threads"] = int(self.threads)
        return cfg

    @property
    def results_pending(self) -> bool:
        """Results still being read or turned into layers (the job itself may have ended)."""
        return bool((self._loading is not None and self._loading.running) or self._staged.busy)

    def show_settings_note(self, text: str) -> None:
        """Show (or with "" hide) a note about the training settings, e.g. that they will be slow on this machine."""
        self.settings_note.setText(text)
        self.settings_note.setVisible(bool(text))

    def train(self) -> None:
        if self.running or self.results_pending:
            return
        try:
            config = self.build_config()
        except Exception as exc:  # noqa: BLE001
            self._error(str(exc))
            return
        self.plot.clear()
        self.last_result = None
        how = "warm start" if "init_model" in config["finetune"] else (
            "pretrained encoder" if config["finetune"].get("encoder_weights") else "from scratch")
        from ...data.auto_config import slow_setting_warning

        ft = config["finetune"]
        slow = slow_setting_warning(image_size=ft.get("image_size"),
                                    encoder="resnet18" if (ft.get("encoder_weights") or ft.get("init_model")) else None, steps=ft.get("steps"),
                                    devices=ft.get("devices"), batch_size=int(ft.get("batch_size") or 8))
        self.settings_label.setText("Settings: chosen from the scan and the drawing...")
        self.show_settings_note(slow or "")
        self._n_train_slices = int(config['predict']['annotated_slices'].sum())
        self._train_round += 1
        self.train_button.setEnabled(False)
        self.status.setText(f"Starting the training ({how}) on {self._n_train_slices} annotated slices...")
        self.progress_bar.setRange(0, 0)  # busy until the first step
        self.progress_bar.setFormat("starting")
        self.progress_bar.setVisible(True)
        # the image and labels go to the job as files written off the GUI thread (see jobs.offload_arrays)
        from ...train.jobs import offload_arrays

        staging = os.path.join(config["predict"]["out"], "inputs")
        self._starting = result_layers.BackgroundCall(
            offload_arrays, (config, staging), parent=self,
            done=lambda small: self._start_job(small, how), failed=self._start_failed)
        if self.fill_between_auto and self._filling is None:
            self.fill_between(quiet=True, snapshot=(config["predict"]["labels"], config["predict"]["annotated_slices"]))
        self._prepare_result_layers()

    def _prepare_result_layers(self) -> None:
        """The result layers, made ahead (hidden, one per event-loop turn; when the labels layer is bound, and
        again at Train for any the user removed) so that a result arriving only swaps its data in."""
        if self.image_layer is None or self.labels_layer is None:
            return
        if getattr(self, "_preparing", None) is None:
            self._preparing = result_layers.StagedSteps(self)  # its own queue: Train need not wait for it
        base, cmap = self.image_layer.name, class_colormap(self.class_colours())
        dtype = self.labels_layer.data.dtype
        wanted = [(base + FILL_BETWEEN_SUFFIX, "fill between", dtype, {"colormap": cmap, "metadata": self._result_meta(fill_between_of=base)}),
                  (base + UNCERTAINTY_SUFFIX, "uncertainty", np.uint8, {}),
                  (base + PREDICTION_SUFFIX, "prediction", dtype, {"colormap": cmap, "metadata": self._result_meta(prediction_of=base)})]
        result_layers.prepare(self.viewer, self._preparing, self.labels_layer, self.image_layer, wanted)

    def _start_failed(self, message: str) -> None:
        self.progress_bar.setVisible(False)
        self.train_button.setEnabled(True)
        self._error(f"could not start the training: {message}")

    def _start_job(self, config: dict, how: str) -> None:
        self.job = QtJob("napari_ssl.train.jobs:train_predict_job", config, label=f"Fine-tuning ({how})",
                         viewer=self.viewer, parent=self)
        self.job.event.connect(self._on_event)
        self.job.finished.connect(self._on_finished)
        self.job.start()
        self.train_button.setText("Stop")
        self._update_buttons()

    def _on_event(self, ev: dict) -> None:
        t = ev.get("type")
        if t == "loss" and "loss" in (ev.get("values") or {}):
            self.plot.add_point(ev.get("step", len(self.plot.values)), ev["values"]["loss"])
        elif t == "progress" and not self.job.runner.stop_requested:
            from ...progress_text import step_text

            total, step = ev.get("total_steps"), int(ev.get("step") or 0)
            what = f"Training the model on {getattr(self, '_n_train_slices', 0)} annotated slices"
            self.status.setText(step_text(what, step, total, self.job.seconds_left) + "; then the whole image is predicted.")
            if total:
                self._set_bar(step, int(total), "training: %p%")
        elif t == "trained":
            self.last_model = ev.get("out")
            self.status.setText("Trained; predicting the whole image...")
            self._set_bar(0, 0, "predicting")
        elif t == "status" and str(ev.get("message", "")).startswith("settings: "):
            self.settings_label.setText("Settings: " + str(ev["message"])[len("settings: "):])
        elif t == "status":
            self.status.setText(str(ev.get("message")))
            if ev.get("phase") == "predict" and ev.get("total"):
                self._set_bar(int(ev["done"]), int(ev["total"]), "predicting: %p%")
        elif t == "prediction":
            self.show_prediction(ev)

    def _set_bar(self, value: int, total: int, fmt: str) -> None:
        self.progress_bar.setRange(0, max(0, total))
        self.progress_bar.setValue(min(value, total) if total else 0)
        self.progress_bar.setFormat(fmt)
        self.progress_bar.setVisible(True)

    def _on_finished(self, ev: dict) -> None:
        self.progress_bar.setVisible(False)
        if ev.get("type") == "done" and self.results_pending:  # the layers are still on their way: finish after them
            self._finish_pending = ev
            return
        self._finish(ev)

    def _finish(self, ev: dict) -> None:
        self._finish_pending = None
        self.last_result = ev
        self.train_button.setEnabled(True)
        self.train_button.setText("Train again" if self.last_model else "Train")
        if ev.get("type") == "done":
            self.last_model = ev.get("out") or self.last_model
            self.warm_start.setEnabled(bool(self.last_model))
            self.warm_start.setChecked(bool(self.last_model))
            top = f" Top suggestion: slice {self.suggestions[0]['slice']}." if self.suggestions else ""
            self.status.setText(("Stopped; last weights saved. " if ev.get("stopped") else "Done. ") +
                                f"Model: {self.last_model}.{top}")
        else:
            self._error(ev.get("message", "training failed"))
        self._update_buttons()

    def show_prediction(self, ev: dict) -> None:
        """Read the prediction's arrays in the results thread, then show them one layer per event-loop turn."""
        self.status.setText("Prediction ready; loading it into the viewer...")
        self._loading = result_layers.BackgroundCall(
            result_layers.read_prediction_arrays, (ev["labels"], ev["uncertainty"], self.labels_layer.data.dtype),
            done=lambda arrays: self._stage_prediction(ev, *arrays), failed=self._error, parent=self)

    def _result_meta(self, **extra) -> dict:
        return {"napari_ssl": {**{k: v for k, v in self.labels_layer.metadata["napari_ssl"].items() if k != "annotation"}, **extra},
                "volume": self.labels_layer.metadata.get("volume")}

    def _stage_prediction(self, ev: dict, labels: np.ndarray, unc: np.ndarray) -> None:
        base = self.image_layer.name
        geo = {"scale": tuple(self.image_layer.scale), "translate": tuple(self.image_layer.translate)}
        meta = self._result_meta(prediction_of=base, model=ev.get("model"))
        pname, uname = base + PREDICTION_SUFFIX, base + UNCERTAINTY_SUFFIX
        names = ["background", *self.class_names()]

        # each step its own event-loop turn: data into the (hidden, made at the click) layer, then showing it
        def uncertainty() -> None:
            if result_layers.claim(self.viewer, uname, unc) is None:
                result_layers.insert_below(self.viewer, result_layers.new_layer("uncertainty", unc, name=uname, geo=geo),
                                           self.labels_layer)

        def prediction() -> None:
            pl = result_layers.claim(self.viewer, pname, labels)
            if pl is None:
                pl = result_layers.new_layer("prediction", labels, name=pname, geo=geo, metadata=meta,
                                             colormap=class_colormap(self.class_colours()))
                result_layers.insert_below(self.viewer, pl, self.labels_layer)
            pl.metadata.update(meta)
            pl.colormap = class_colormap(self.class_colours())
            pl.features = {"index": np.arange(len(names)), "name": names}

        def show(name: str) -> None:
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = True

        def review() -> None:
            fill = self.viewer.layers[base + FILL_BETWEEN_SUFFIX] if base + FILL_BETWEEN_SUFFIX in self.viewer.layers else None
            self._shown_round = self._train_round
            if fill is not None:
                fill.visible = False  # the model's answer replaces the instant one on screen (the layer stays)
            if self.labels_layer is not None and not result_layers.same_layer(self.viewer.layers.selection.active, self.labels_layer):
                self.viewer.layers.selection.active = self.labels_layer  # keep painting on the annotations
            self._show_suggestions(ev.get("suggestions") or [])
            if self._finish_pending is not None:
                self._finish(self._finish_pending)

        self._staged.add(uncertainty, lambda: show(uname), prediction, lambda: show(pname), review)

    def _show_suggestions(self, suggestions: list[dict]) -> None:
        """The suggested slices, listed in the order of the score shown beside them (highest first)."""
        self.suggestions = sorted(suggestions, key=lambda s: -float(s.get("uncertainty", s.get("score", 0.0))))
        self.suggest_list.clear()
        for s in self.suggestions:
            item = QListWidgetItem(f"slice {s['slice']}  (uncertainty score {s.get('uncertainty', s.get('score', 0)):.3f})")
            item.setData(Qt.UserRole, int(s["slice"]))
            self.suggest_list.addItem(item)
        self._update_buttons()

    # --- fill between slices: the instant result
    def fill_between(self, quiet: bool = False, snapshot: tuple | None = None) -> bool:
        """Start "Fill between slices" on the annotations (in the results thread); its layer appears when done.

        Needs two annotated slices holding labels; `quiet` (the automatic start with Train) skips the error."""
        if self.labels_layer is None:
            if not quiet:
                self._error("create a labels layer and annotate a few slices first")
            return False
        if self._filling is not None and self._filling.running:
            return False
        # `snapshot`: (labels, annotated mask) already taken by the caller (Train): not copied again in the event loop
        labels, mask = snapshot if snapshot is not None else (np.array(self.labels_layer.data, copy=True), self.annotated_mask())
        with_labels = int(annotated_slice_mask(labels, ()).sum())
        if with_labels < 2:
            if not quiet:
                self._error("fill between slices needs the structure drawn on at least two slices")
            return False
        from ...active.fill_between import fill_between_slices

        image, labels_layer = self.image_layer, self.labels_layer
        # started with Train: if that round's prediction is on screen first, the fill arrives hidden behind it
        shown_after = self._train_round if quiet else None
        if not quiet:
            self.status.setText(f"Filling between {with_labels} annotated slices...")
        self.fill_button.setEnabled(False)
        self._filling = result_layers.BackgroundCall(
            fill_between_slices, (labels, mask), parent=self,
            done=lambda filled: self._staged.add(lambda: self._show_fill_between(filled, image, labels_layer, shown_after)),
            failed=self._fill_failed)
        return True

    def _fill_failed(self, message: str) -> None:
        self.fill_button.setEnabled(self.labels_layer is not None)
        self._error(f"fill between slices: {message}")

    def _show_fill_between(self, filled: np.ndarray, image, labels_layer, hide_from_round: int | None = None) -> None:
        self.fill_button.setEnabled(self.labels_layer is not None)
        if image is None or image not in self.viewer.layers:
            return
        name = image.name + FILL_BETWEEN_SUFFIX
        colours = self.class_colours()
        layer = result_layers.claim(self.viewer, name, filled)
        if layer is None:
            layer = result_layers.new_layer("fill between", filled, name=name, colormap=class_colormap(colours),
                                            geo={"scale": tuple(image.scale), "translate": tuple(image.translate)},
                                            metadata=self._result_meta(fill_between_of=image.name))
            result_layers.insert_below(self.viewer, layer, labels_layer)
            if labels_layer is not None and labels_layer in self.viewer.layers:
                self.viewer.layers.selection.active = labels_layer
        if layer.visible != (hide_from_round is None or self._shown_round < hide_from_round):  # showing it is its own event-loop turn (it draws the slice)
            self._staged.add(lambda: self._show_fill_layer(layer, hide_from_round))
        names = ["background", *self.class_names()]
        layer.features = {"index": np.arange(len(names)), "name": names}
        if not self.running:
            self.status.setText(f"Fill between slices: layer {name!r} (no training; annotated slices as drawn).")

    def _show_fill_layer(self, layer, hide_from_round: int | None) -> None:
        if layer in self.viewer.layers:  # (the prediction of that round may have come meanwhile: then it stays hidden)
            layer.visible = hide_from_round is None or self._shown_round < hide_from_round

    # --- review
    def prediction_layer(self):
        if self.image_layer is None:
            return None
        name = self.image_layer.name + PREDICTION_SUFFIX
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def next_slice(self) -> int | None:
        if not self.suggestions or self.labels_layer is None:
            self._error("train first: suggestions come with the prediction")
            return None
        mask = self.annotated_mask()
        for s in self.suggestions:
            z = int(s["slice"])
            if not mask[z]:
                self.go_to_slice(z)
                for i in range(self.suggest_list.count()):
                    self.suggest_list.item(i).setSelected(self.suggest_list.item(i).data(Qt.UserRole) == z)
                self.status.setText(f"Slice {z}: correct the prediction (or paint), then Accept.")
                return z
        self.status.setText("Every suggested slice is annotated: Train again for new suggestions.")
        return None

    def accept_current_slice(self) -> int | None:
        pred = self.prediction_layer()
        z = self.current_slice()
        if pred is None or z is None:
            self._error("no prediction to accept yet")
            return None
        self.labels_layer.data[z] = np.asarray(pred.data[z], dtype=self.labels_layer.data.dtype)
        if not np.any(self.labels_layer.data[z]):
            ann = self.labels_layer.metadata["napari_ssl"]["annotation"]
            if z not in ann["empty_slices"]:
                ann["empty_slices"].append(z)
        self.labels_layer.refresh()
        self.autosave.schedule()
        self.update_count()
        self.status.setText(f"Slice {z} accepted into the annotations.")
        return z

    # --- misc
    def _update_buttons(self) -> None:
        has_labels = self.labels_layer is not None
        self.empty_button.setEnabled(has_labels)
        self.train_button.setEnabled(has_labels and not (self.job is not None and self.job.runner.stop_requested and self.running))
        self.next_button.setEnabled(bool(self.suggestions))
        self.accept_button.setEnabled(self.prediction_layer() is not None)
        self.fill_button.setEnabled(has_labels and not (self._filling is not None and self._filling.running))

    def _error(self, message: str) -> None:
        report_error(self.status, message)

    def closeEvent(self, event) -> None:  # noqa: N802
        if self.autosave is not None:
            self.autosave.flush()
        if self.job is not None and self.job.running:
            self.job.stop_and_wait(grace_s=15.0)
        super().closeEvent(event)
