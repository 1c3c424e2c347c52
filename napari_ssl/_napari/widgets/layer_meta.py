"""The napari-ssl metadata of the layers the widgets make, built and read in this one place.

``layer.metadata["napari_ssl"]`` holds the source image's geometry and identity (``affine``, the DICOM UIDs,
``modality``, ``path``), ``segment_names`` ({value: name}) and, on an annotations layer, ``annotation``
(:meth:`AnnotationState.to_meta`); ``layer.metadata["volume"]`` the source Volume. Result layers
(prediction, fill between) carry the same without ``annotation``, plus what they are a result of.
"""
from __future__ import annotations

import copy

import numpy as np
from qtpy.QtGui import QColor

from ...active.annotation_state import AnnotationState

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


def labels_metadata(image, vol, state: AnnotationState) -> dict:
    """Metadata of a new annotations layer on `image` (whose Volume is `vol`)."""
    meta = copy.copy(image.metadata) if image.metadata else {}
    info = dict(meta.get("napari_ssl") or {})
    info.update({"affine": vol.affine.tolist(), "series_instance_uid": vol.series_instance_uid,
                 "study_instance_uid": vol.study_instance_uid, "frame_of_reference_uid": vol.frame_of_reference_uid,
                 "modality": vol.modality, "path": vol.path, "units": ""})
    info["annotation"] = state.to_meta()
    meta["napari_ssl"] = info
    meta["volume"] = vol
    return meta


def store_state(layer, state: AnnotationState) -> None:
    """Copy the annotation state into the layer's metadata (what Export and a later bind read)."""
    info = layer.metadata.setdefault("napari_ssl", {})
    info["segment_names"] = state.segment_names()
    info["annotation"] = state.to_meta()


def apply_classes(layer, state: AnnotationState) -> None:
    """The state's classes on the layer: metadata, colours and the features table (names in the layer list's tooltip)."""
    store_state(layer, state)
    layer.colormap = class_colormap(state.colours)
    layer.features = class_features(state)


def class_features(state: AnnotationState) -> dict:
    names = ["background", *state.classes]
    return {"index": np.arange(len(names)), "name": names}


def read_state(layer) -> AnnotationState:
    """The annotation state stored on a layer (defaults where it has none)."""
    info = (layer.metadata or {}).get("napari_ssl") or {}
    return AnnotationState.from_meta(info.get("annotation"))


def result_metadata(labels_layer, **extra) -> dict:
    """Metadata of a result layer of `labels_layer` (its source's, without the annotation state), plus `extra`."""
    info = {k: v for k, v in labels_layer.metadata["napari_ssl"].items() if k != "annotation"}
    return {"napari_ssl": {**info, **extra}, "volume": labels_layer.metadata.get("volume")}


def source_layer_name(layer) -> str | None:
    """The image a labels layer was drawn on or predicted for."""
    info = (layer.metadata or {}).get("napari_ssl") or {}
    return (info.get("annotation") or {}).get("image_layer") or info.get("prediction_of")


def segment_names(layer) -> dict[int, str]:
    info = (layer.metadata or {}).get("napari_ssl") or {}
    return {int(k): str(v) for k, v in (info.get("segment_names") or {}).items()}
