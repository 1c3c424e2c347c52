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
            result_layers.read_prediction_arrays, (ev.labels, ev.uncertainty),
            done=lambda arrays: self._stage_prediction(ev, *arrays), failed=self._error, parent=self)

    def _result_meta(self, **extra) -> dict:
        return result_metadata(self.labels_layer, **extra)

    def _stage_prediction(self, ev: Prediction, labels: np.ndarray, unc: np.ndarray) -> None:
        import napari.layers

        base = self.image_layer.name
        geo = {"scale": tuple(self.image_layer.scale), "translate": tuple(self.image_layer.translate)}
        meta = self._result_meta(prediction_of=base, model=ev.model)
        pname, uname = base + PREDICTION_SUFFIX, base + UNCERTAINTY_SUFFIX
        names = ["background", *self.class_names()]

        def uncertainty() -> None:
            if uname in self.viewer.layers:
                ul = self.viewer.layers[uname]
                ul.data = unc
                ul.contrast_limits = (0, result_layers.UNCERTAINTY_LEVELS)
            else:
                ul = napari.layers.Image(unc, name=uname, colormap=result_layers.uncertainty_colormap(), blending="translucent",
                                         opacity=0.8, contrast_limits=(0, result_layers.UNCERTAINTY_LEVELS),
                                         metadata={"napari_ssl_preview": True, "uncertainty_scale": 1.0 / result_layers.UNCERTAINTY_LEVELS},
                                         **geo)
                result_layers.insert_below(self.viewer, ul, self.labels_layer)
            ul.visible = True

        def prediction() -> None:
            if pname in self.viewer.layers:
                pl = self.viewer.layers[pname]
                pl.data = labels.astype(pl.data.dtype, copy=False)
                pl.metadata.update(meta)
            else:
                pl = napari.layers.Labels(labels, name=pname, opacity=1.0, metadata=meta,
                                          colormap=class_colormap(self.class_colours()), **geo)
                pl.contour = result_layers.outline_width(labels.shape)
                result_layers.insert_below(self.viewer, pl, self.labels_layer)
            pl.colormap = class_colormap(self.class_colours())
            pl.features = {"index": np.arange(len(names)), "name": names}

        def review() -> None:
            fill = self.viewer.layers[base + FILL_BETWEEN_SUFFIX] if base + FILL_BETWEEN_SUFFIX in self.viewer.layers else None
            self._shown_round = self._train_round
            if fill is not None:
                fill.visible = False  # the model's answer replaces the instant one on screen (the layer stays)
            if self.labels_layer is not None and self.viewer.layers.selection.active is not self.labels_layer:
                self.viewer.layers.selection.active = self.labels_layer  # keep painting on the annotations
            self._show_suggestions(ev.suggestions or [])
            if self._finish_pending is not None:
                self._finish(self._finish_pending)

        self._staged.add(uncertainty, prediction, review)

    def _show_suggestions(self, suggestions: list[dict]) -> None:
        """The suggested slices, listed in the order of the score shown beside them (highest first)."""
        self.suggestions = sorted(suggestions, key=lambda s: -float(s.get("uncertainty", s.get("score", 0.0))))
        self.review.show_suggestions(self.suggestions)
        self._update_buttons()

    # --- fill between slices: the instant result
    def fill_between(self, quiet: bool = False) -> bool:
        """Start "Fill between slices" on the annotations (in the results thread); its layer appears when done.

        Needs two annotated slices holding labels; `quiet` (the automatic start with Train) skips the error."""
        if self.labels_layer is None:
            if not quiet:
                self._error("create a labels layer and annotate a few slices first")
            return False
        if self._filling is not None and self._filling.running:
            return False
        labels = np.array(self.labels_layer.data, copy=True)
        mask = self.annotated_mask()
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
        import napari.layers

        self.fill_button.setEnabled(self.labels_layer is not None)
        if image is None or image not in self.viewer.layers:
            return
        name = image.name + FILL_BETWEEN_SUFFIX
        colours = self.class_colours()
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = filled.astype(layer.data.dtype, copy=False)
        else:
            layer = napari.layers.Labels(filled, name=name, opacity=0.35, colormap=class_colormap(colours),
                                         scale=tuple(image.scale), translate=tuple(image.translate),
                                         metadata=self._result_meta(fill_between_of=image.name))
            result_layers.insert_below(self.viewer, layer, labels_layer)
            if labels_layer is not None and labels_layer in self.viewer.layers:
                self.viewer.layers.selection.active = labels_layer
        layer.visible = hide_from_round is None or self._shown_round < hide_from_round
        names = ["background", *self.class_names()]
        layer.features = {"index": np.arange(len(names)), "name": names}
        if not self.running:
            self.status.setText(f"Fill between slices: layer {name!r} (no training; annotated slices as drawn).")
