"""What a user has said about one label map beyond its voxels: the classes, and the slices marked annotated-empty.

A plain object (no napari, no Qt): the Annotate & Train widget holds one for the labels layer it is bound to,
copies it into the layer's metadata (napari_ssl._napari.widgets.layer_meta) and into the autosave, and
reads it back from there when it binds to the layer again. Tests drive it without a viewer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.sparse_labels import annotated_slices

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe", "#008080", "#e6beff"]
DEFAULT_CLASS = "structure"


def palette_colour(i: int) -> str:
    """The default colour of the i-th class (0-based)."""
    return PALETTE[i % len(PALETTE)]


@dataclass
class SliceCounts:
    annotated: int  # slices holding a label or marked annotated-empty
    total: int
    with_labels: int
    empty: int  # marked annotated-empty and holding no label


@dataclass
class AnnotationState:
    """The annotation state of one label map: class names and colours (value i+1 is class i), empty slices."""

    image_layer: str | None = None  # the image the labels are drawn on
    classes: list[str] = field(default_factory=lambda: [DEFAULT_CLASS])
    colours: list[str] = field(default_factory=lambda: [palette_colour(0)])
    empty_slices: list[int] = field(default_factory=list)  # marked annotated-empty: the structure is absent there

    # --- classes
    def set_classes(self, names: list[str], colours: list[str] | None = None) -> None:
        self.classes = [str(n) for n in names]
        self.colours = list(colours) if colours is not None else [palette_colour(i) for i in range(len(names))]

    def segment_names(self) -> dict[int, str]:
        """Label value -> class name."""
        return {i + 1: n for i, n in enumerate(self.classes)}

    def label_dtype(self) -> type:
        return np.uint8 if len(self.classes) < 255 else np.uint16

    # --- slices
    def mark_empty(self, z: int) -> bool:
        """Mark slice `z` annotated-empty; False if it already was."""
        z = int(z)
        if z in self.empty_slices:
            return False
        self.empty_slices.append(z)
        return True

    def sorted_empty(self) -> list[int]:
        return sorted(int(z) for z in self.empty_slices)

    def annotated_mask(self, labels: np.ndarray) -> np.ndarray:
        """(z,) bool: slices holding any label, or marked annotated-empty (marks outside the volume are ignored)."""
        n = np.shape(labels)[0]
        return annotated_slices(labels, [z for z in self.empty_slices if 0 <= int(z) < n])

    def counts(self, labels: np.ndarray) -> SliceCounts:
        mask = self.annotated_mask(labels)
        n_empty = len([z for z in self.sorted_empty() if 0 <= z < mask.size and not np.any(labels[z])])
        return SliceCounts(annotated=int(mask.sum()), total=int(mask.size), with_labels=int(mask.sum()) - n_empty, empty=n_empty)

    def summary(self, labels: np.ndarray, current: int | None = None) -> str:
        """'5 of 34 slices annotated (4 with labels, 1 empty). Slice 16: not annotated.'"""
        c = self.counts(labels)
        here = ""
        if current is not None:
            here = f" Slice {current}: {'annotated' if self.annotated_mask(labels)[current] else 'not annotated'}."
        return f"{c.annotated} of {c.total} slices annotated ({c.with_labels} with labels, {c.empty} empty).{here}"

    def accept_slice(self, labels: np.ndarray, z: int, values: np.ndarray) -> None:
        """Copy `values` (e.g. a corrected prediction) into slice `z` of `labels`; an empty slice counts as annotated-empty."""
        labels[z] = np.asarray(values, dtype=labels.dtype)
        if not np.any(labels[z]):
            self.mark_empty(z)

    def next_unannotated(self, labels: np.ndarray, suggestions: list[dict]) -> int | None:
        """The first suggested slice ({"slice": z, ...}, in the order given) not yet annotated, or None."""
        mask = self.annotated_mask(labels)
        for s in suggestions:
            if not mask[int(s["slice"])]:
                return int(s["slice"])
        return None

    # --- stored form (layer metadata, the autosave's JSON)
    def to_meta(self) -> dict:
        return {"image_layer": self.image_layer, "empty_slices": list(self.empty_slices), "classes": list(self.classes),
                "colours": list(self.colours)}

    @classmethod
    def from_meta(cls, meta: dict | None) -> "AnnotationState":
        """From `to_meta`'s dict or an autosave's JSON; what is missing takes its default."""
        meta = meta or {}
        state = cls(image_layer=meta.get("image_layer"), empty_slices=[int(z) for z in meta.get("empty_slices") or []])
        if meta.get("classes"):
            names = [str(n) for n in meta["classes"]]
            colours = list(meta.get("colours") or [])
            state.set_classes(names, [colours[i] if i < len(colours) else palette_colour(i) for i in range(len(names))])
        return state
