"""Annotate & Train dock widget: the active-learning loop.

1. Create a Labels layer bound to an image (same shape, scale, translate; the image's geometry and
   identity in metadata) with named, coloured classes. It is autosaved as the user paints.
2. Paint a few slices; mark slices where the structure is absent as annotated-empty.
3. Train: fine-tune a U-Net (from a pretrained encoder, or from scratch; warm-started from the last
   model on later rounds) in a child process, then predict the image: a prediction Labels layer (an outline)
   and an uncertainty Image layer (hidden until its eye is ticked) appear, with the slices worth annotating next.
4. Next slice jumps to the top suggestion; Accept copies the (corrected) prediction of the current slice
   into the annotations; Train again.

"Fill between slices" gives an instant, training-free completion of the annotated slices as its own
layer (it also starts by itself when Train is clicked, so there is something to look at while the model
trains). Results are read off the GUI thread and shown one layer per event-loop turn (result_layers).

The pieces: the annotation state is a plain object (napari_ssl.active.annotation_state.AnnotationState) copied
into the layer's metadata by layer_meta; the panels are class_table.ClassTable, train_controls.TrainControls and
review_panel.ReviewPanel; training is annotate_training.TrainingMixin, results annotate_results.ResultLayersMixin.
"""
from __future__ import annotations

import os

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from ...active.annotation_state import DEFAULT_CLASS, PALETTE, AnnotationState  # noqa: F401 - PALETTE re-exported (tests import it here)
from ..annotations_autosave import AnnotationAutosave, autosave_folder, read_annotations
from . import result_layers
from .annotate_results import ResultLayersMixin
from .annotate_training import TrainingMixin
from .class_table import ClassTable
from .common import LayerCombo, form_layout, image_layers, layer_volume
from .job_dock import JobDockWidget
from .layer_meta import (  # noqa: F401 - re-exported
    ANNOTATION_SUFFIX,
    FILL_BETWEEN_SUFFIX,
    PREDICTION_SUFFIX,
    UNCERTAINTY_SUFFIX,
    apply_classes,
    class_colormap,
    labels_metadata,
    read_state,
    store_state,
)
from .loss_plot import LossPlot
from .review_panel import ReviewPanel
from .train_controls import TrainControls

# the panels' controls, also reachable as attributes of the widget (scripts and tests drive them there)
_CONTROLS = ("init_combo", "warm_start", "steps", "image_size", "batch_size", "semi_supervised", "device", "train_button",
             "settings_note", "progress_bar", "settings_label")
_REVIEW = ("suggest_list", "next_button", "accept_button")


class AnnotateTrainWidget(ResultLayersMixin, TrainingMixin, JobDockWidget):
    # its own progress bar, time left and Stop button are in the dock; napari's activity dock builds a progress
    # widget per job (100-230 ms of the event loop at each Train with software OpenGL)
    ACTIVITY_PROGRESS = False

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.labels_layer = None
        self.image_layer = None
        self.state: AnnotationState | None = None  # of the bound labels layer
        self.autosave: AnnotationAutosave | None = None
        self.last_model: str | None = None
        self.suggestions: list[dict] = []
        self.preview_every_s = 5.0
        self.threads: int | None = None
        self._staged = result_layers.StagedSteps(self)
        self._starting: result_layers.BackgroundCall | None = None  # the job's inputs being written
        self._loading: result_layers.BackgroundCall | None = None  # prediction arrays being read
        self._filling: result_layers.BackgroundCall | None = None  # fill between slices being computed
        self._finish_pending = None
        self.fill_between_auto = True  # Train also starts fill between slices (the instant result)
        self._train_round = 0  # Train clicks so far
        self._shown_round = 0  # the round whose prediction is on screen
        from ..warm_imports import warm_imports

        result_layers.executor().submit(warm_imports)  # off the event loop, before "Create labels layer" needs them

        self.controls = TrainControls()
        self.controls.train_button.clicked.connect(self._train_or_stop)
        self.review = ReviewPanel()
        self.review.slice_chosen.connect(self.go_to_slice)
        self.review.next_button.clicked.connect(self.next_slice)
        self.review.accept_button.clicked.connect(self.accept_current_slice)
        for panel, names in ((self.controls, _CONTROLS), (self.review, _REVIEW)):
            for name in names:
                setattr(self, name, getattr(panel, name))
        self.plot = LossPlot("fine-tuning loss")
        self.plot.setMinimumHeight(110)
        lay = self.content_layout()
        # the status line (what runs, time left) right under Train and its progress bar: in view while training
        for w in (self._setup_box(), self._annotate_box(), self.controls, self.status, self.review, self.plot):
            lay.addWidget(w)
        lay.addStretch(1)

        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(300)
        self._count_timer.timeout.connect(self.update_count)
        napari_viewer.dims.events.current_step.connect(self._on_slice_changed)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self.add_class(DEFAULT_CLASS)
        self._update_buttons()

    def _setup_box(self) -> QGroupBox:
        """1. The image, the classes, Create labels layer."""
        self.image_combo = LayerCombo(self.viewer, image_layers)
        self.class_table = ClassTable()
        self.class_table.changed.connect(self._on_classes_edited)
        self.create_button = QPushButton("Create labels layer")
        self.create_button.clicked.connect(self.create_labels_layer)
        self.class_table.buttons.addWidget(self.create_button)
        setup = QGroupBox("1. Labels for an image")
        setup.setLayout(form_layout(("Image", self.image_combo), self.class_table))
        return setup

    def _annotate_box(self) -> QGroupBox:
        """2. Mark slice annotated-empty, the count of annotated slices, Fill between slices."""
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
        return ann

    # --- classes
    def add_class(self, name: str, colour: str | None = None) -> None:
        self.class_table.add_class(name, colour)

    def set_classes(self, names: list[str]) -> None:
        self.class_table.set_classes(names)

    def class_names(self) -> list[str]:
        return self.class_table.names()

    def class_colours(self) -> list[str]:
        return self.class_table.colours()

    def _on_classes_edited(self, *args) -> None:
        """Keep the labels layer's names, colours and features in step with the table."""
        if self.labels_layer is None:
            return
        self.state.set_classes(self.class_names(), self.class_colours())
        apply_classes(self.labels_layer, self.state)
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
        folder = autosave_folder(image.name, vol.series_instance_uid or vol.path or image.name)
        data, state, restored = self._restored_or_blank(vol.shape, folder, image.name)
        layer = self.viewer.add_labels(data, name=name, scale=tuple(image.scale), translate=tuple(image.translate),
                                       metadata=labels_metadata(image, vol, state), opacity=0.6)
        # paint mode in the next event-loop turn: its first use builds napari's brush-circle overlay, a block about
        # as long as the layer's own creation with software OpenGL; so the click's freeze comes in two halves
        QTimer.singleShot(0, lambda: setattr(layer, "mode", "paint") if layer in self.viewer.layers else None)
        self.bind(layer, image, autosave_dir=folder)
        layer.selected_label = 1
        self.viewer.layers.selection.active = layer
        if restored is not None:
            self.status.setText(f"Restored annotations autosaved {restored.get('saved_at', '')} from {folder}")
        return layer

    def _restored_or_blank(self, shape, folder, image_name: str) -> tuple[np.ndarray, AnnotationState, dict | None]:
        """The labels and state autosaved for this image (their classes go to the table), else blank ones."""
        state = AnnotationState(image_layer=image_name)
        data = np.zeros(shape, dtype=np.uint8 if len(self.class_names()) < 255 else np.uint16)
        restored = read_annotations(folder)
        if restored is None or restored[0].shape != data.shape:
            return data, state, None
        state.empty_slices = [int(z) for z in restored[1].get("empty_slices", [])]
        if restored[1].get("classes"):
            self.set_classes(list(restored[1]["classes"]))
        return restored[0].astype(data.dtype), state, restored[1]

    def bind(self, layer, image, autosave_dir: str | os.PathLike | None = None) -> None:
        if self.autosave is not None:
            self.autosave.flush()
            self.autosave.disconnect_layer()
        self.labels_layer, self.image_layer = layer, image
        self.state = read_state(layer)  # each layer keeps its own state: binding to it again brings it back
        self.state.image_layer = self.state.image_layer or image.name
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
        return [] if self.labels_layer is None else self.state.sorted_empty()

    def _on_layer_removed(self, event) -> None:
        if event.value is self.labels_layer:
            if self.autosave:
                self.autosave.flush()
                self.autosave.disconnect_layer()
            self.labels_layer = self.autosave = self.state = None
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
        self.state.mark_empty(z)
        store_state(self.labels_layer, self.state)
        if np.any(self.labels_layer.data[z]):
            self.status.setText(f"Slice {z} holds labels; it already counts as annotated (kept them).")
        else:
            self.status.setText(f"Slice {z} marked annotated-empty.")
        self.autosave.schedule()
        self.update_count()

    def annotated_mask(self) -> np.ndarray:
        return self.state.annotated_mask(self.labels_layer.data)

    def _schedule_count(self, *args) -> None:
        self._count_timer.start()

    def update_count(self) -> None:
        if self.labels_layer is None:
            self.count_label.setText("No labels layer yet.")
            return
        self.count_label.setText(self.state.summary(np.asarray(self.labels_layer.data), self.current_slice()))

    def _on_slice_changed(self, *args) -> None:
        if self.labels_layer is not None:
            self._schedule_count()

    # --- training settings
    def refresh_init_choices(self) -> None:
        self.controls.refresh_init_choices()

    def select_pretrained(self, path: str) -> None:
        self.controls.select_pretrained(path)

    def show_settings_note(self, text: str) -> None:
        """Show (or with "" hide) a note about the training settings, e.g. that they will be slow on this machine."""
        self.controls.show_settings_note(text)

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
        z = self.state.next_unannotated(self.labels_layer.data, self.suggestions)
        if z is None:
            self.status.setText("Every suggested slice is annotated: Train again for new suggestions.")
            return None
        self.go_to_slice(z)
        self.review.select_slice(z)
        self.status.setText(f"Slice {z}: correct the prediction (or paint), then Accept.")
        return z

    def accept_current_slice(self) -> int | None:
        pred = self.prediction_layer()
        z = self.current_slice()
        if pred is None or z is None:
            self._error("no prediction to accept yet")
            return None
        self.state.accept_slice(self.labels_layer.data, z, pred.data[z])
        store_state(self.labels_layer, self.state)
        self.labels_layer.refresh()
        self.autosave.schedule()
        self.update_count()
        self.status.setText(f"Slice {z} accepted into the annotations.")
        return z

    # --- misc
    def _update_buttons(self) -> None:
        has_labels = self.labels_layer is not None
        self.empty_button.setEnabled(has_labels)
        self.train_button.setEnabled(has_labels and not (self.stop_requested and self.running))
        self.next_button.setEnabled(bool(self.suggestions))
        self.accept_button.setEnabled(self.prediction_layer() is not None)
        self.fill_button.setEnabled(has_labels and not (self._filling is not None and self._filling.running))

    def before_close(self) -> None:
        if self.autosave is not None:
            self.autosave.flush()
