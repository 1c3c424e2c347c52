"""The results of Annotate & Train arriving in the viewer: the prediction and uncertainty of a training round
and the instant "Fill between slices" layer, read off the GUI thread and shown one layer per event-loop turn
(result_layers). Part of :class:`AnnotateTrainWidget` (a mixin: the methods share the widget's state).
"""
from __future__ import annotations

import numpy as np

from ...train.events import Prediction
from . import result_layers
from .layer_meta import FILL_BETWEEN_SUFFIX, PREDICTION_SUFFIX, UNCERTAINTY_SUFFIX, class_colormap, result_metadata


class ResultLayersMixin:
    def show_prediction(self, ev: Prediction) -> None:
        """Read the prediction's arrays in the results thread, then show them one layer per event-loop turn."""
        self.status.setText("Prediction ready; loading it into the viewer...")
        self._loading = result_layers.BackgroundCall(
            result_layers.read_prediction_arrays, (ev.labels, ev.uncertainty, self.labels_layer.data.dtype),
            done=lambda arrays: self._stage_prediction(ev, *arrays), failed=self._error, parent=self)

    def uncertainty_name(self) -> str:
        return self.image_layer.name + UNCERTAINTY_SUFFIX

    def uncertainty_hint(self) -> str:
        """A pointer to the uncertainty layer while it is hidden (it arrives hidden), else ''."""
        name = self.uncertainty_name() if self.image_layer is not None else None
        if name is None or name not in self.viewer.layers or self.viewer.layers[name].visible:
            return ""
        return f" Uncertainty: layer {name!r}, hidden (show it with its eye in the layer list)."

    def _result_meta(self, **extra) -> dict:
        return result_metadata(self.labels_layer, **extra)

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

    def _stage_prediction(self, ev: Prediction, labels: np.ndarray, unc: np.ndarray) -> None:
        base = self.image_layer.name
        geo = {"scale": tuple(self.image_layer.scale), "translate": tuple(self.image_layer.translate)}
        meta = self._result_meta(prediction_of=base, model=ev.model)
        pname, uname = base + PREDICTION_SUFFIX, self.uncertainty_name()
        names = ["background", *self.class_names()]

        # each step its own event-loop turn: data into each (hidden, made ahead) layer, then the prediction shown and
        # the instant fill-between hidden in one turn, so the canvas redraws once (each redraw: 40-60 ms with
        # software OpenGL on a full-size CT, one late event-loop turn each when they were separate steps).
        # The uncertainty arrives hidden (its eye in the layer list shows it; a later round keeps the user's choice):
        # the outline over the image is what a reader looks at first, and one layer fewer to draw on every slice
        # change keeps scrolling a full-size CT fluid (benchmarks/RESULTS.md, UI latency, session 15)
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

        def show() -> None:
            if pname in self.viewer.layers:
                self.viewer.layers[pname].visible = True
            fill = self.viewer.layers[base + FILL_BETWEEN_SUFFIX] if base + FILL_BETWEEN_SUFFIX in self.viewer.layers else None
            self._shown_round = self._train_round
            if fill is not None:
                fill.visible = False  # the model's answer replaces the instant one on screen (the layer stays)

        def review() -> None:
            if self.labels_layer is not None and not result_layers.same_layer(self.viewer.layers.selection.active, self.labels_layer):
                self.viewer.layers.selection.active = self.labels_layer  # keep painting on the annotations
            self._show_suggestions(ev.suggestions or [])
            if self._finish_pending is not None:
                self._finish(self._finish_pending)

        self._staged.add(uncertainty, prediction, show, review)

    def _show_suggestions(self, suggestions: list[dict]) -> None:
        """The suggested slices, listed in the order of the score shown beside them (highest first)."""
        self.suggestions = sorted(suggestions, key=lambda s: -float(s.get("uncertainty", s.get("score", 0.0))))
        self.review.show_suggestions(self.suggestions)
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
        with_labels = int(labels.reshape(labels.shape[0], -1).any(axis=1).sum())
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
        if layer.visible != (hide_from_round is None or self._shown_round < hide_from_round):  # showing it: its own turn
            self._staged.add(lambda: self._show_fill_layer(layer, hide_from_round))
        names = ["background", *self.class_names()]
        layer.features = {"index": np.arange(len(names)), "name": names}
        if not self.running:
            self.status.setText(f"Fill between slices: layer {name!r} (no training; annotated slices as drawn).")

    def _show_fill_layer(self, layer, hide_from_round: int | None) -> None:
        if layer in self.viewer.layers:  # (the prediction of that round may have come meanwhile: then it stays hidden)
            layer.visible = hide_from_round is None or self._shown_round < hide_from_round
