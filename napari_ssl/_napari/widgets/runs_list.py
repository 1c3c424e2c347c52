"""Models and pretraining runs on disk, listed so a user can pick a previous one.

A run is any folder holding a ``model.json`` (written by napari_ssl.models.checkpoint.save_weights)
under the runs folder: ``$NAPARI_SSL_HOME/runs``, default ``~/.napari-ssl/runs``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from ... import settings
from ...errors import NapariSSLError
from ...models.metadata import read_model_meta


def ssl_home() -> Path:
    return settings.home()


def runs_dir() -> Path:
    return settings.runs_dir()


@dataclass
class RunInfo:
    path: str
    name: str
    kind: str          # "pretrain" (an encoder) or "model" (a fine-tuned segmentation model)
    method: str
    encoder: str
    date: str
    data: str
    meta: dict

    @property
    def label(self) -> str:
        return f"{self.name} ({self.method}, {self.date})"


def describe_data(data: Any) -> str:
    """One short line from model.json's data summary (volumes, slices, modalities, shapes)."""
    if isinstance(data, dict):
        parts = []
        for key, unit in (("volumes", "volumes"), ("num_volumes", "volumes"), ("slices", "slices"),
                          ("num_slices", "slices"), ("annotated_slices", "annotated slices")):
            v = data.get(key)
            if isinstance(v, (int, float)):
                parts.append(f"{v:g} {unit}")
            elif isinstance(v, (list, tuple)) and key in ("annotated_slices",):
                parts.append(f"{len(v)} {unit}")
        mods = data.get("modalities")
        if mods:
            parts.append("/".join(sorted(mods)) if isinstance(mods, (list, tuple, set)) else
                         ", ".join(f"{k} {v}" for k, v in mods.items()) if isinstance(mods, dict) else str(mods))
        if parts:
            return ", ".join(parts)
        return ", ".join(f"{k}={v}" for k, v in list(data.items())[:3])[:80]
    if isinstance(data, list):
        return f"{len(data)} volumes"
    return "" if data is None else str(data)[:80]


def list_runs(folders: list[str | os.PathLike] | None = None, kind: str | None = None) -> list[RunInfo]:
    """Runs under `folders` (default: the runs folder), newest first; unreadable ones are skipped."""
    folders = [runs_dir()] if folders is None else folders
    found: list[RunInfo] = []
    seen = set()
    for root in folders:
        root = Path(root)
        if not root.is_dir():
            continue
        candidates = [root] if (root / "model.json").is_file() else sorted(
            p.parent for p in root.glob("*/model.json")) + sorted(p.parent for p in root.glob("*/*/model.json"))
        for folder in candidates:
            real = os.path.realpath(folder)
            if real in seen or "/." in str(folder.relative_to(root.parent)):  # hidden/partial folders
                continue
            seen.add(real)
            try:
                meta = read_model_meta(folder)
            except (OSError, NapariSSLError):
                continue
            run_kind = "model" if meta.is_segmentation else "pretrain"
            info = RunInfo(
                path=str(folder), name=folder.name, kind=run_kind,
                method=str(meta.method or ("fine-tune" if run_kind == "model" else "?")),
                encoder=meta.encoder_name, date=meta.created.replace("T", " ")[:16],
                data=describe_data(meta.data), meta=meta.to_dict())
            if kind is None or info.kind == kind:
                found.append(info)
    found.sort(key=lambda r: r.date, reverse=True)
    return found


class RunsList(QWidget):
    """A table of runs (name, method, date, data) with Refresh and Browse; emits `selected(path)`."""

    selected = Signal(str)
    COLUMNS = ("name", "method", "encoder", "date", "data")

    def __init__(self, kind: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.kind = kind
        self.extra_folders: list[str] = []
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels([c.capitalize() for c in self.COLUMNS])
        self.tree.setRootIsDecorated(False)
        self.tree.setMinimumHeight(90)
        self.tree.itemSelectionChanged.connect(self._on_select)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(refresh)
        row.addWidget(browse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tree)
        lay.addLayout(row)
        self.runs: list[RunInfo] = []
        self.refresh()

    def refresh(self) -> None:
        current = self.selected_path()
        self.runs = list_runs([runs_dir(), *self.extra_folders], kind=self.kind)
        self.tree.clear()
        for r in self.runs:
            item = QTreeWidgetItem([r.name, r.method, r.encoder, r.date, r.data])
            item.setData(0, Qt.UserRole, r.path)
            for col in range(len(self.COLUMNS)):
                item.setToolTip(col, f"{r.name}\n{r.path}\n{r.method}, {r.encoder}, {r.date}\ndata: {r.data}")
            self.tree.addTopLevelItem(item)
            if r.path == current:
                item.setSelected(True)
        for i in range(len(self.COLUMNS) - 1):  # narrow columns; full name and path in the tooltip
            self.tree.resizeColumnToContents(i)
            self.tree.setColumnWidth(i, min(self.tree.columnWidth(i), 150 if i == 0 else 110))

    def selected_path(self) -> str | None:
        items = self.tree.selectedItems()
        return items[0].data(0, Qt.UserRole) if items else None

    def select_path(self, path: str) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            item.setSelected(os.path.realpath(item.data(0, Qt.UserRole)) == os.path.realpath(path))

    def _on_select(self) -> None:
        p = self.selected_path()
        if p:
            self.selected.emit(p)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder holding model.json or runs")
        if folder:
            self.extra_folders.append(folder)
            self.refresh()
