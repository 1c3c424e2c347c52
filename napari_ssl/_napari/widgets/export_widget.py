"""Export dock widget: a Labels layer as DICOM-SEG (referencing its DICOM source series) or NIfTI (in the
source's geometry), to a file or, when a PACS is configured, to the PACS; optionally also a de-identified
copy of the source series with the SEG (napari_ssl.io.dicom.deid).

The writing is napari_ssl.io.export.export_labels, run in a child process so a large series never
freezes the viewer. Segment names are editable; the SNOMED CT category and type follow the name
(pick a listed structure to get its code).
"""
from __future__ import annotations

import os

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ...io.volume import Volume
from ...train.events import Exported, Failed, Finished
from .common import LayerCombo, compact_combo, form_layout, image_layers, labels_layers, layer_volume, safe_name
from .job_dock import JobDockWidget
from .layer_meta import segment_names, source_layer_name
from .runs_list import ssl_home

FORMATS = ("DICOM-SEG", "NIfTI")


def structure_choices() -> list[str]:
    """Meanings of the coded structures export knows (the SNOMED CT table of napari_ssl.io.seg.codes)."""
    from ...io.seg import codes as seg_codes

    return sorted({meaning for _keys, _value, meaning, _cat in seg_codes._TABLE})


def codes_for(name: str) -> tuple[str, str]:
    """(category meaning, type meaning) that export will write for a segment called `name`."""
    from ...io.seg.codes import lookup

    cat, typ = lookup(name or "")
    return cat[2], typ[2]


def pacs_url() -> str | None:
    """The configured DICOMweb URL, if any ($NAPARI_SSL_PACS_URL)."""
    from ...settings import PACS_URL_ENV

    return os.environ.get(PACS_URL_ENV) or None


class ExportWidget(JobDockWidget):
    EVENT_HANDLERS = {Exported: "_on_exported"}

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.last_summary: dict | None = None
        self.labels_combo = LayerCombo(napari_viewer, labels_layers)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        self.source_combo = LayerCombo(napari_viewer, image_layers)
        self.source_combo.currentIndexChanged.connect(self._update_state)
        self.format = QComboBox()
        self.format.addItems(FORMATS)
        self.format.currentIndexChanged.connect(self._on_format)
        self.labelmap = QCheckBox("LABELMAP encoding")
        self.labelmap.setToolTip("DICOM-SEG as one LABELMAP frame per slice instead of one BINARY frame per segment and slice")
        self.segments = self._segments_table()
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)

        lay = self.content_layout()
        lay.addLayout(self._form())
        seg_help = QLabel("Segments (names editable; the code follows the name or the chosen structure):")
        seg_help.setWordWrap(True)
        lay.addWidget(seg_help)
        lay.addWidget(self.segments)
        lay.addWidget(self.export_button)
        lay.addWidget(self.status)
        lay.addStretch(1)
        napari_viewer.layers.events.inserted.connect(self._on_labels_changed)
        self._on_labels_changed()

    def _segments_table(self) -> QTableWidget:
        table = QTableWidget(0, 4)
        table.setHorizontalHeaderLabels(["Value", "Name", "Structure", "Category / type"])
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        table.horizontalHeader().setSectionResizeMode(3, QHeaderView.Stretch)
        table.verticalHeader().setVisible(False)
        table.setMinimumHeight(90)
        table.itemChanged.connect(self._on_segment_edited)
        return table

    def _form(self):
        self.path = QLineEdit()
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        prow = QHBoxLayout()
        prow.addWidget(self.path)
        prow.addWidget(browse)
        self.to_pacs = QCheckBox("Also send to PACS")
        self.pacs = QLineEdit(pacs_url() or "")
        self.pacs.setPlaceholderText("DICOMweb URL (configure $NAPARI_SSL_PACS_URL)")
        self.deid = QCheckBox("Also write a de-identified copy (images + SEG)")
        self.deid.setToolTip("DICOM PS3.15 Basic Profile, keyed pseudonyms (napari-ssl deidentify): the source series and the SEG, "
                             "into the folder below. Key: the key file, else $NAPARI_SSL_DEID_KEY / $NAPARI_SSL_DEID_KEY_FILE")
        self.deid_out = QLineEdit()
        self.deid_out.setPlaceholderText("new folder (default: <output>_deid)")
        self.deid_key = QLineEdit(os.environ.get("NAPARI_SSL_DEID_KEY_FILE", ""))
        self.deid_key.setPlaceholderText("key file (or $NAPARI_SSL_DEID_KEY)")
        return form_layout(("Labels", self.labels_combo), ("Source image", self.source_combo), ("Format", self.format),
                           ("", self.labelmap), ("Output file", prow), self.to_pacs, ("PACS", self.pacs), self.deid,
                           ("De-identified to", self.deid_out), ("Key file", self.deid_key))

    # --- state
    def labels_layer(self):
        return self.labels_combo.layer()

    def source_volume(self) -> Volume | None:
        """The labels' own source (carried in their metadata), else the chosen image layer's Volume."""
        lab = self.labels_layer()
        own = (lab.metadata or {}).get("volume") if lab is not None else None
        if isinstance(own, Volume) and own.shape == tuple(np.shape(lab.data)[-3:]) and own.is_dicom:
            return own
        img = self.source_combo.layer()
        if img is not None:
            try:
                return layer_volume(img)
            except Exception:
                pass
        return own if isinstance(own, Volume) else None

    def _on_labels_changed(self, *args) -> None:
        lab = self.labels_layer()
        if lab is None:
            self.segments.setRowCount(0)
            self._update_state()
            return
        src_name = source_layer_name(lab)
        if src_name:
            self.source_combo.select(src_name)
        names = segment_names(lab)
        values = sorted(int(v) for v in np.unique(np.asarray(lab.data)) if v != 0)
        values = sorted(set(values) | set(names)) or [1]
        self.segments.blockSignals(True)
        self.segments.setRowCount(0)
        choices = structure_choices()
        for v in values:
            r = self.segments.rowCount()
            self.segments.insertRow(r)
            item = QTableWidgetItem(str(v))
            item.setFlags(item.flags() & ~Qt.ItemIsEditable)
            self.segments.setItem(r, 0, item)
            self.segments.setItem(r, 1, QTableWidgetItem(names.get(v, f"segment {v}")))
            combo = compact_combo(QComboBox(), 10)
            combo.addItem("(from name)")
            combo.addItems(choices)
            combo.currentTextChanged.connect(lambda text, row=r: self._on_structure(row, text))
            self.segments.setCellWidget(r, 2, combo)
            code = QTableWidgetItem("")
            code.setFlags(code.flags() & ~Qt.ItemIsEditable)
            self.segments.setItem(r, 3, code)
            self._update_codes(r)
        self.segments.blockSignals(False)
        self.segments.resizeColumnToContents(0)
        if not self.path.text():
            self.path.setText(self.default_path())
        self._update_state()

    def _on_structure(self, row: int, text: str) -> None:
        if text and text != "(from name)":
            self.segments.item(row, 1).setText(text)  # the code follows the name

    def _on_segment_edited(self, item) -> None:
        if item.column() == 1:
            self.segments.blockSignals(True)
            self._update_codes(item.row())
            self.segments.blockSignals(False)

    def _update_codes(self, row: int) -> None:
        cat, typ = codes_for(self.segments.item(row, 1).text())
        self.segments.item(row, 3).setText(f"{cat} / {typ}")

    def segment_names(self) -> dict[int, str]:
        return {int(self.segments.item(r, 0).text()): self.segments.item(r, 1).text().strip()
                for r in range(self.segments.rowCount())}

    def _on_format(self, *args) -> None:
        p = self.path.text()
        if p:
            stem = p[: -len(".nii.gz")] if p.endswith(".nii.gz") else os.path.splitext(p)[0]
            self.path.setText(stem + (".dcm" if self.format.currentText() == "DICOM-SEG" else ".nii.gz"))
        self._update_state()

    def default_path(self) -> str:
        lab = self.labels_layer()
        name = safe_name(lab.name if lab is not None else "labels", "labels")
        ext = ".dcm" if self.format.currentText() == "DICOM-SEG" else ".nii.gz"
        return str(ssl_home() / "exports" / (name + ext))

    def _update_state(self, *args) -> None:
        seg = self.format.currentText() == "DICOM-SEG"
        vol = self.source_volume()
        dicom = vol is not None and vol.is_dicom
        self.labelmap.setEnabled(seg)
        self.deid.setEnabled(seg)
        if not seg:
            self.deid.setChecked(False)
        self.to_pacs.setEnabled(seg and bool(self.pacs.text().strip()))
        if not seg:
            self.to_pacs.setChecked(False)
        self.export_button.setEnabled(self.labels_layer() is not None and not self.running)
        if seg and vol is not None and not dicom:
            self.status.setText("DICOM-SEG needs a DICOM source series: this image is not DICOM (choose NIfTI, or a DICOM image).")
        elif self.status.text().startswith("DICOM-SEG needs"):
            self.status.setText("Ready.")

    def _browse(self) -> None:
        seg = self.format.currentText() == "DICOM-SEG"
        path, _ = QFileDialog.getSaveFileName(self, "Export labels", self.path.text() or self.default_path(),
                                              "DICOM-SEG (*.dcm)" if seg else "NIfTI (*.nii.gz *.nii)")
        if path:
            self.path.setText(path)

    # --- export
    def build_config(self) -> dict:
        lab = self.labels_layer()
        if lab is None:
            raise ValueError("choose a Labels layer to export")
        vol = self.source_volume()
        if vol is None:
            raise ValueError("choose the source image the labels were drawn on")
        seg = self.format.currentText() == "DICOM-SEG"
        if seg and not vol.is_dicom:
            raise ValueError("DICOM-SEG needs a DICOM source series; this image is not DICOM: export NIfTI instead")
        out = self.path.text().strip() or self.default_path()
        if seg and not out.lower().endswith(".dcm"):
            out += ".dcm"
        if not seg and not out.lower().endswith((".nii", ".nii.gz", ".nrrd")):
            out += ".nii.gz"
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        data = np.asarray(lab.data)
        if data.shape != vol.shape:
            raise ValueError(f"labels shape {list(data.shape)} does not match the source image {list(vol.shape)}")
        info = (lab.metadata or {}).get("napari_ssl") or {}
        cfg = {"labels": np.array(data, copy=True), "source": vol, "out_path": out, "labels_affine": vol.affine,
               "names": self.segment_names()}
        if seg:
            cfg["labelmap"] = self.labelmap.isChecked()
            if info.get("model"):
                cfg["model"] = os.path.basename(str(info["model"]))
            if self.to_pacs.isChecked() and self.pacs.text().strip():
                cfg["stow_url"] = self.pacs.text().strip()
            if self.deid.isChecked():
                sources = [p for p in vol.source_paths if p and os.path.isfile(p)]
                if not sources:
                    raise ValueError("a de-identified copy needs the source series' files on disk")
                stem = out[: -len(".dcm")] if out.lower().endswith(".dcm") else out
                cfg["deidentify"] = {"sources": sources, "out": self.deid_out.text().strip() or stem + "_deid",
                                     "key_file": self.deid_key.text().strip() or None}
        return cfg

    def export(self) -> None:
        config = self.new_job_config()
        if config is None:
            return
        self.last_result = None
        self.start_job("napari_ssl.train.jobs:export_job", config, label=f"Export {self.format.currentText()}")
        self.export_button.setEnabled(False)
        self.status.setText(f"Writing {config['out_path']} ...")

    def _on_exported(self, ev: Exported) -> None:
        self.last_summary = ev.summary

    def _on_finished(self, ev: Finished | Failed) -> None:
        self.last_result = ev
        self.export_button.setEnabled(True)
        if isinstance(ev, Finished):
            summary = self.last_summary or {}
            extra = f", sent to {summary['stored_to']}" if summary.get("stored_to") else ""
            if summary.get("deidentified"):
                extra += f", de-identified copy in {summary['deidentified']['out']}"
            self.status.setText(f"Exported {summary.get('format', '')} to {ev.out}{extra}")
            try:
                from napari.utils.notifications import show_info

                show_info(f"napari-ssl: exported {ev.out}{extra}")
                from napari.utils.notifications import show_warning

                for w in summary.get("warnings", []):   # e.g. a series with a gap: frames on their own images
                    show_warning(f"napari-ssl export: {w}")
            except Exception:
                pass
        else:
            self._error(ev.message or "export failed")
