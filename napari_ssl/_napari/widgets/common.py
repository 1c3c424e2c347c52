"""Small pieces the dock widgets share: device choices, layer pickers, turning layers into job inputs."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QDockWidget, QFormLayout, QFrame, QScrollArea, QSpinBox, QStyle, QVBoxLayout, QWidget

from ...io.nifti import is_itk_image_path


def device_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: the CPU and each GPU torch finds. Values are Lightning-style device strings."""
    out = [("CPU", "cpu")]
    try:
        import torch

        for i in range(torch.cuda.device_count()):
            out.append((f"GPU {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}"))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            out.append(("Apple GPU (MPS)", "mps"))
    except Exception:  # torch without a working CUDA runtime: CPU only
        pass
    return out


def safe_name(text: str, default: str = "run") -> str:
    """A file-system-safe name from a layer or run name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text or "").strip("-.")
    return s[:60] or default


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def report_error(status_label, message: str) -> None:
    """Show `message` in the widget's status line and as a napari error notification."""
    status_label.setText(f"Error: {message}")
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:
        pass


def image_layers(viewer):
    import napari.layers

    return [lay for lay in viewer.layers if isinstance(lay, napari.layers.Image) and np.ndim(lay.data) >= 2
            and not lay.metadata.get("napari_ssl_preview")]


def labels_layers(viewer):
    import napari.layers

    return [lay for lay in viewer.layers if isinstance(lay, napari.layers.Labels)
            and not lay.metadata.get("napari_ssl_placeholder")]  # (a result layer made ahead, empty until its result)


DOCK_WIDTH = 400  # preferred width of the dock widgets (the canvas keeps the rest of the window)


def compact_combo(combo: QComboBox, chars: int = 18) -> QComboBox:
    """A combo box whose width does not follow its longest entry (long run names would widen the dock)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


def device_combo() -> QComboBox:
    """A compact combo box of :func:`device_choices` (the value is the device string)."""
    combo = compact_combo(QComboBox())
    for label, value in device_choices():
        combo.addItem(label, value)
    return combo


def spin_box(lo: int, hi: int, value: int, step: int = 1, special: str | None = None) -> QSpinBox:
    """An integer spin box; `special` is the text shown for the lowest value (e.g. "auto")."""
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def form_layout(*rows) -> QFormLayout:
    """A form of rows: (label, widget or layout), or a lone widget spanning the row."""
    form = QFormLayout()
    for row in rows:
        if isinstance(row, tuple):
            form.addRow(*row)
        else:
            form.addRow(row)
    return form


class DockWidgetBase(QWidget):
    """What the three dock widgets share: contents in a scroll area, a sensible preferred width, and a tab
    title that shows '&'.

    The scroll area keeps the dock's changes to itself: a status line that wraps to one more line, or a
    progress bar appearing, otherwise re-lays out napari's main window, and the whole window (its
    OpenGL canvas included) is repainted: 50-150 ms each with software OpenGL, measured by
    benchmarks/bench_ui_latency.py --scenario ct at the Train click. It also lets a tall dock fit a small screen.

    Qt reads '&' in a tab label as a keyboard mnemonic, so the docked tab of "Annotate & Train"
    would read "Annotate _Train"; the dock's window title (which only the tab bar uses; napari's
    own title bar shows the name) is escaped once the widget is docked.
    """

    _content: QWidget | None = None

    def content_layout(self) -> QVBoxLayout:
        """The layout to put the widget's contents in (inside the scroll area)."""
        area = QScrollArea(self)
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.NoFrame)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self._content = QWidget()
        area.setWidget(self._content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(area)
        return QVBoxLayout(self._content)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt naming
        """As wide as the contents need (the scroll area itself would allow any width), any height (it scrolls)."""
        if self._content is None:
            return super().minimumSizeHint()
        scrollbar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        return QSize(self._content.minimumSizeHint().width() + scrollbar, 120)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt naming
        hint = self._content.sizeHint() if self._content is not None else super().sizeHint()
        return QSize(max(DOCK_WIDTH, self.minimumSizeHint().width()), hint.height())

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        QTimer.singleShot(0, self._escape_dock_title)

    def _escape_dock_title(self) -> None:
        w = self.parentWidget()
        while w is not None and not isinstance(w, QDockWidget):
            w = w.parentWidget()
        if w is None:
            return
        title = w.windowTitle()
        if "&" in title and "&&" not in title:
            w.setWindowTitle(title.replace("&", "&&"))


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of one kind, kept in sync with the layer list."""

    def __init__(self, viewer, lister, parent=None):
        super().__init__(parent)
        compact_combo(self)
        self.viewer = viewer
        self.lister = lister
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            ev.connect(self.refresh)
        self.refresh()

    def refresh(self, *args) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        for lay in self.lister(self.viewer):
            self.addItem(lay.name)
        i = self.findText(current)
        self.setCurrentIndex(i if i >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def showPopup(self) -> None:  # noqa: N802 - layers renamed since the last insert/remove show under their names
        self.refresh()
        super().showPopup()

    def layer(self):
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def select(self, name: str) -> None:
        self.refresh()
        i = self.findText(name)
        if i >= 0:
            self.setCurrentIndex(i)


def layer_volume(layer):
    """The Volume behind an image layer (geometry from the napari-ssl reader, else from scale/translate)."""
    from ...io.volume import Volume
    from ..layers import volume_from_layer

    try:
        return volume_from_layer(layer)
    except ValueError:
        data = np.asarray(layer.data)
        if data.ndim == 2:
            data = data[None]
        aff = np.eye(4)
        scale = list(layer.scale)[-3:] if len(layer.scale) >= 3 else [1.0, *layer.scale[-2:]]
        trans = list(layer.translate)[-3:] if len(layer.translate) >= 3 else [0.0, *layer.translate[-2:]]
        # canonical display order (z, y, x) = (S, P, L): index -> LPS
        aff[:3, :3] = np.array([[0, 0, scale[2]], [0, scale[1], 0], [scale[0], 0, 0]], dtype=float)
        aff[:3, 3] = [trans[2], trans[1], trans[0]]
        return Volume(array=data, affine=aff, path="", series_description=layer.name)


def layer_as_path(layer, staging: str | os.PathLike) -> str:
    """A file the training process can read for this image layer.

    The reader's own file when the layer is exactly one NIfTI/NRRD/MHA volume; otherwise (a DICOM
    series, a folder that may hold other series, an in-memory image) the layer's voxels and geometry
    written to `staging` as uncompressed NIfTI (fast to write, read once by the job).
    """
    meta = (layer.metadata or {}).get("napari_ssl") or {}
    path = meta.get("path") or ""
    vol = layer_volume(layer)
    if path and os.path.isfile(path) and is_itk_image_path(path) and vol.array is (layer.metadata or {}).get("volume", vol).array:
        return path
    from ...io.nifti import write_itk_volume

    Path(staging).mkdir(parents=True, exist_ok=True)
    out = os.path.join(os.fspath(staging), safe_name(layer.name, "image") + ".nii")
    write_itk_volume(np.asarray(vol.array), vol.affine, out)
    return out
