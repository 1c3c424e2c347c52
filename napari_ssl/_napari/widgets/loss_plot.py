"""A light live loss curve drawn with QPainter (no matplotlib redraw cost in the event loop).

Points are appended as loss events arrive; the widget repaints at most every `min_repaint_ms`.
The y axis is logarithmic when the values span more than a decade.
"""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

_MAX_POINTS = 4000


class LossPlot(QWidget):
    def __init__(self, title: str = "loss", parent: QWidget | None = None, min_repaint_ms: int = 200):
        super().__init__(parent)
        self.title = title
        self.steps: list[float] = []
        self.values: list[float] = []
        self.min_repaint_ms = min_repaint_ms
        self._pending = False
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def clear(self) -> None:
        self.steps.clear()
        self.values.clear()
        self.update()

    def add_point(self, step: float, value: float) -> None:
        if value is None or not math.isfinite(float(value)):
            return
        self.steps.append(float(step))
        self.values.append(float(value))
        if len(self.steps) > _MAX_POINTS:  # keep every other point of the oldest half
            half = len(self.steps) // 2
            self.steps[:half] = self.steps[:half:2]
            self.values[:half] = self.values[:half:2]
        if not self._pending:  # coalesce: one repaint per interval, however many points arrive
            self._pending = True
            QTimer.singleShot(self.min_repaint_ms, self._repaint)

    def add_loss(self, ev) -> None:
        """A job's Loss event (napari_ssl.train.events): its "loss" value, at its step."""
        if "loss" in (ev.values or {}):
            self.add_point(ev.step if ev.step is not None else len(self.values), ev.values["loss"])

    def _repaint(self) -> None:
        self._pending = False
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt naming
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        pal = self.palette()
        fg = pal.color(pal.ColorRole.WindowText)
        bg = pal.color(pal.ColorRole.Base)
        p.fillRect(self.rect(), bg)
        fm = p.fontMetrics()
        left, right, top, bottom = fm.horizontalAdvance("0.0000") + 10, 10, fm.height() + 6, fm.height() + 8
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QPen(fg, 1))
        p.drawText(QRectF(0, 0, self.width(), top), Qt.AlignHCenter | Qt.AlignVCenter, self._title_text())
        p.drawRect(plot)
        if len(self.values) < 1:
            p.drawText(plot, Qt.AlignCenter, "no data yet")
            p.end()
            return
        ys = self.values
        log = min(ys) > 0 and max(ys) / min(ys) > 10
        tr = (lambda v: math.log10(v)) if log else (lambda v: v)
        lo, hi = tr(min(ys)), tr(max(ys))
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
        x0, x1 = self.steps[0], self.steps[-1]
        if x1 <= x0:
            x1 = x0 + 1

        def pt(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (tr(y) - lo) / (hi - lo) * plot.height())

        path = QPainterPath(pt(self.steps[0], ys[0]))
        for x, y in zip(self.steps[1:], ys[1:]):
            path.lineTo(pt(x, y))
        p.setPen(QPen(QColor(80, 160, 255), 1.5))
        p.drawPath(path)
        p.setPen(QPen(fg, 1))
        hi_v, lo_v = (10 ** hi, 10 ** lo) if log else (hi, lo)
        p.drawText(QRectF(0, plot.top() - fm.height() / 2, left - 4, fm.height()), Qt.AlignRight, f"{hi_v:.3g}")
        p.drawText(QRectF(0, plot.bottom() - fm.height() / 2, left - 4, fm.height()), Qt.AlignRight, f"{lo_v:.3g}")
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height()), Qt.AlignLeft, f"{x0:g}")
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), fm.height()), Qt.AlignRight, f"step {x1:g}")
        p.end()

    def _title_text(self) -> str:
        if not self.values:
            return self.title
        return f"{self.title}: {self.values[-1]:.4g} (step {self.steps[-1]:g})"
