"""The annotation state of the Annotate & Train loop, driven without napari or Qt (napari_ssl.active.annotation_state)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from napari_ssl.active.annotation_state import PALETTE, AnnotationState


def _labels(shape=(10, 8, 8), drawn=(2, 5)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    for z in drawn:
        lab[z, 2:5, 2:5] = 1
    return lab


def test_slices_annotated_with_labels_or_marked_empty():
    lab = _labels()
    state = AnnotationState(image_layer="scan")
    assert state.classes == ["structure"] and state.colours == [PALETTE[0]]
    assert state.mark_empty(7) and not state.mark_empty(7)  # once
    assert state.mark_empty(5)  # holds labels: annotated anyway, not counted as empty
    state.empty_slices.append(42)  # outside the volume (an autosave of another scan): ignored
    assert np.flatnonzero(state.annotated_mask(lab)).tolist() == [2, 5, 7]
    c = state.counts(lab)
    assert (c.annotated, c.total, c.with_labels, c.empty) == (3, 10, 2, 1)
    assert state.summary(lab, current=7) == "3 of 10 slices annotated (2 with labels, 1 empty). Slice 7: annotated."
    assert state.summary(lab, current=3).endswith("Slice 3: not annotated.")
    assert state.sorted_empty() == [5, 7, 42]


def test_accepting_a_slice_and_the_next_suggestion():
    lab = _labels()
    state = AnnotationState()
    suggestions = [{"slice": 2, "uncertainty": 0.9}, {"slice": 4, "uncertainty": 0.8}, {"slice": 6, "uncertainty": 0.1}]
    assert state.next_unannotated(lab, suggestions) == 4  # slice 2 is drawn already
    pred = np.zeros((8, 8), np.int64)
    pred[1, 1] = 2
    state.accept_slice(lab, 4, pred)
    assert lab[4, 1, 1] == 2 and lab.dtype == np.uint8 and 4 not in state.empty_slices
    state.accept_slice(lab, 6, np.zeros((8, 8)))  # an empty prediction accepted: the slice is annotated-empty
    assert state.empty_slices == [6] and state.next_unannotated(lab, suggestions) is None


def test_classes_and_the_stored_form():
    state = AnnotationState(image_layer="scan", empty_slices=[3, 1])
    state.set_classes(["anterior", "posterior"])
    assert state.segment_names() == {1: "anterior", 2: "posterior"} and state.colours == PALETTE[:2]
    meta = state.to_meta()
    assert meta == {"image_layer": "scan", "empty_slices": [3, 1], "classes": ["anterior", "posterior"], "colours": PALETTE[:2]}
    back = AnnotationState.from_meta(meta)
    assert back == state and back.empty_slices is not state.empty_slices  # a copy, not shared lists
    # an older autosave without colours, and no metadata at all
    old = AnnotationState.from_meta({"classes": ["a", "b", "c"], "colours": ["#000000"], "empty_slices": ["4"]})
    assert old.colours == ["#000000", PALETTE[1], PALETTE[2]] and old.empty_slices == [4]
    assert AnnotationState.from_meta(None) == AnnotationState()
    assert AnnotationState().label_dtype() is np.uint8
    state.set_classes([f"c{i}" for i in range(300)])
    assert state.label_dtype() is np.uint16 and len(state.colours) == 300


def test_the_state_needs_neither_napari_nor_qt():
    code = ("import sys; import napari_ssl.active.annotation_state; "
            "print(sorted(m for m in ('napari', 'qtpy', 'PySide6', 'PyQt5', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
