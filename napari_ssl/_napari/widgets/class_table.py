"""The classes of an annotations layer: one row per class, its name (editable) and colour (double-click)."""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QColorDialog, QHBoxLayout, QHeaderView, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ...active.annotation_state import palette_colour


class ClassTable(QWidget):
    """Row i is label value i + 1. ``changed`` fires after every edit (name, colour, a row added or removed)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Class", "Colour"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(True)
        self.table.setMaximumHeight(110)
        self.table.cellDoubleClicked.connect(self._pick_colour)
        self.table.itemChanged.connect(lambda *args: self.changed.emit())
        add_cls = QPushButton("+ class")
        add_cls.clicked.connect(lambda: self.add_class(f"class {self.table.rowCount() + 1}"))
        del_cls = QPushButton("- class")
        del_cls.clicked.connect(self.remove_last)
        self.buttons = QHBoxLayout()  # the caller may add its own buttons to this row
        self.buttons.addWidget(add_cls)
        self.buttons.addWidget(del_cls)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.table)
        lay.addLayout(self.buttons)

    def add_class(self, name: str, colour: str | None = None) -> None:
        r = self.table.rowCount()
        colour = colour or palette_colour(r)
        self.table.blockSignals(True)
        self.table.insertRow(r)
        self.table.setItem(r, 0, QTableWidgetItem(name))
        c = QTableWidgetItem("")
        c.setFlags(c.flags() & ~Qt.ItemIsEditable)
        c.setBackground(QColor(colour))
        c.setData(Qt.UserRole, colour)
        c.setToolTip("double-click to change")
        self.table.setItem(r, 1, c)
        self.table.blockSignals(False)
        self.changed.emit()

    def set_classes(self, names: list[str]) -> None:
        self.table.setRowCount(0)
        for n in names:
            self.add_class(n)

    def remove_last(self) -> None:
        if self.table.rowCount() > 1:
            self.table.removeRow(self.table.rowCount() - 1)
            self.changed.emit()

    def names(self) -> list[str]:
        return [(self.table.item(r, 0).text().strip() or f"class {r + 1}") for r in range(self.table.rowCount())]

    def colours(self) -> list[str]:
        return [self.table.item(r, 1).data(Qt.UserRole) for r in range(self.table.rowCount())]

    def _pick_colour(self, row: int, col: int) -> None:
        if col != 1:
            return
        c = QColorDialog.getColor(QColor(self.table.item(row, 1).data(Qt.UserRole)), self, "Class colour")
        if c.isValid():
            self.table.item(row, 1).setBackground(c)
            self.table.item(row, 1).setData(Qt.UserRole, c.name())
            self.changed.emit()
