"""How far apart two geometries may be and still count as one: every tolerance in one place.

Real series carry rounding noise in their headers: the same direction cosine is written
``-0.059771`` in some files and ``-0.0597709`` in others (different writers, PACS and
anonymisers round the last digit differently), positions with 6 or 2 decimals. That noise
must not split a series, stop a DICOM-SEG export or shift a mask; a real difference (a second
orientation, a gantry tilt, a missing slice) must still be noticed.

* Orientation: two ImageOrientationPatient values are the same orientation when every
  direction cosine differs by at most :data:`ORIENTATION_TOL` (1e-4; at 250 mm from the
  centre of the image that moves a voxel by 0.025 mm). Frames further apart are split into
  separate stacks, with a warning.
* Positions: an ImagePositionPatient is rounding noise when it lies within
  :data:`POSITION_TOL_REL` of the slice step (and at least :data:`POSITION_TOL_MM`) of the
  regular grid derived from the series. Beyond that: uneven spacing (:data:`UNEVEN_REL`), a
  missing slice (a step :data:`GAP_FACTOR` times the typical one) or in-plane drift (gantry
  tilt) are reported as warnings on the volume.
* One consistent geometry is written: a DICOM-SEG on a series whose files differ within these
  tolerances gets the orientation most of the files carry (:func:`consensus_orientation`),
  the same one the series' affine is built from, so it reads back voxel-exact.
* Label grids (a mask, a SEG placed on a series): the same grid when the voxel size agrees
  within :data:`VOXEL_SIZE_REL` and the origin within :data:`GRID_SHIFT_VOXELS` of a voxel.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

ORIENTATION_TOL = 1e-4      # max |difference| of any direction cosine within one orientation
POSITION_TOL_REL = 0.05     # position noise allowed, as a fraction of the slice step ...
POSITION_TOL_MM = 1e-3      # ... but at least this many mm
SAME_POSITION_MM = 1e-3     # two frames closer than this along the normal share a position
UNEVEN_REL = 0.01           # relative deviation of a slice step that counts as uneven
GAP_FACTOR = 1.5            # a step this many times the typical one means missing slices
DRIFT_TOL_REL = 0.05        # in-plane drift of the positions (gantry tilt), fraction of the step ...
DRIFT_TOL_MM = 0.01         # ... but at least this many mm
VOXEL_SIZE_REL = 0.01       # label grid vs series: relative voxel-size difference allowed
GRID_SHIFT_VOXELS = 0.05    # label grid vs series: origin offset allowed, in voxels (after whole-voxel shifts)


def same_orientation(a: Sequence[float], b: Sequence[float], tol: float = ORIENTATION_TOL) -> bool:
    """Whether two ImageOrientationPatient values (6 cosines) are one orientation within `tol`."""
    return bool(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))) <= tol)


def consensus_orientation(orientations: Sequence[Optional[Sequence[float]]]) -> tuple[int, float]:
    """(index of the orientation to use for all, largest deviation of any other from it).

    The one to use is the value most of the frames carry exactly (ties: the first of them), so
    the geometry written is one a scanner wrote, not an average. ``None`` entries (no
    orientation) are skipped; all ``None`` gives ``(0, 0.0)``.
    """
    vals = [None if o is None else tuple(float(v) for v in o) for o in orientations]
    counts: dict[tuple, int] = {}
    first: dict[tuple, int] = {}
    for i, v in enumerate(vals):
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
            first.setdefault(v, i)
    if not counts:
        return 0, 0.0
    best = max(counts, key=lambda v: (counts[v], -first[v]))
    ref = np.asarray(best)
    dev = max(float(np.max(np.abs(np.asarray(v) - ref))) for v in counts)
    return first[best], dev
