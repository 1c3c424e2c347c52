"""Step 4 of Annotate & Train: the slices the model suggests annotating next, Next slice and Accept."""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from ...active.next_slice import NEXT_SLICE_NOTE


class ReviewPanel(QGroupBox):
    """The suggestion list (double-click: ``slice_chosen(z)``) and the Next slice / Accept buttons."""

    slice_chosen = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("4. Review", parent)
        self.suggest_list = QListWidget()
        self.suggest_list.setMaximumHeight(150)
        self.suggest_list.setWordWrap(True)  # the reason is a sentence: wrapped, not cut off at the panel's edge
        self.suggest_list.itemDoubleClicked.connect(lambda item: self.slice_chosen.emit(int(item.data(Qt.UserRole))))
        self.next_button = QPushButton("Next slice")
        self.next_button.setToolTip(NEXT_SLICE_NOTE)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Copy the (corrected) prediction of this slice into the annotations")
        rl = QVBoxLayout(self)
        rl.addWidget(QLabel("Suggested slices, most likely wrong first\n(in tests as good as evenly spaced slices, not better):"))
        rl.addWidget(self.suggest_list)
        row = QHBoxLayout()
        row.addWidget(self.next_button)
        row.addWidget(self.accept_button)
        rl.addLayout(row)

    def show_suggestions(self, suggestions: list[dict]) -> None:
        """List the suggestions ({"slice", "uncertainty" or "score"}) in the order given."""
        self.suggest_list.clear()
        for s in suggestions:
            score = s.get("uncertainty", s.get("score", 0))
            item = QListWidgetItem(f"slice {s['slice']}: {s.get('reason') or 'uncertainty'} (score {score:.3f})")
            item.setToolTip(item.text())
            item.setData(Qt.UserRole, int(s["slice"]))
            self.suggest_list.addItem(item)

    def select_slice(self, z: int) -> None:
        for i in range(self.suggest_list.count()):
            self.suggest_list.item(i).setSelected(self.suggest_list.item(i).data(Qt.UserRole) == z)
