"""The in-memory scan: voxels, physical geometry (LPS) and DICOM identity.

Geometry convention (shared by every module):
  * ``array`` is indexed ``[z, y, x]`` (slice, row, column), as napari shows it.
  * ``affine`` is a 4x4 matrix mapping a voxel index ``(z, y, x, 1)`` to the patient
    coordinate ``(x_L, y_P, z_S, 1)`` in millimetres, LPS as in DICOM and ITK.
    Column 0 is the step along the slice axis, column 1 along rows (down the image),
    column 2 along columns (to the right of the image); column 3 is the position of
    voxel (0, 0, 0).
  * ``spacing``/``origin``/``direction`` are derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: str = ""
    path: str = ""
    patient_id: str = ""
    study_instance_uid: Optional[str] = None
    series_instance_uid: Optional[str] = None
    frame_of_reference_uid: Optional[str] = None
    series_description: str = ""
    num_files: int = 1
    warnings: list[str] = field(default_factory=list)
    # Ordered like array axis 0 for single-frame series (one per slice); one item for
    # an Enhanced multi-frame object. Paths on disk, when read from disk.
    source_paths: list[str] = field(default_factory=list)
    # The pydicom datasets of the source (headers; pixel data dropped) in the same order,
    # which is what a DICOM-SEG needs to reference the series.
    source_datasets: list[Any] = field(default_factory=list)
    # For Enhanced sources: frame number (1-based) of each z slice, in array order.
    source_frames: list[int] = field(default_factory=list)
    # Intensity unit of `array`: "HU" for CT after rescale, "" otherwise.
    units: str = ""
    # Affine of the array in the order of `source_datasets` / `source_frames` (the series'
    # own storage order, slices ascending along the normal). Display code may reorient
    # `array` (see io.orientation); export maps masks back through this.
    native_affine: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError("Volume.affine must be a 4x4 matrix")
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3-D (z, y, x); got shape {self.array.shape}")

    # --- geometry -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (z, y, x) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS position (mm) of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit direction vectors (LPS) of the z, y, x array axes, as columns."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def is_dicom(self) -> bool:
        return self.series_instance_uid is not None and bool(self.source_datasets or self.source_paths)

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """Same geometry and identity, other voxels (e.g. a label map)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.array.shape}")
        return replace(self, array=array, warnings=list(self.warnings), **changes)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary with no patient identifiers."""
        return {
            "path": self.path,
            "modality": self.modality or None,
            "series_instance_uid": self.series_instance_uid,
            "series_description": self.series_description,
            "shape": list(self.shape),
            "spacing": [round(s, 6) for s in self.spacing],
            "origin": [round(o, 6) for o in self.origin],
            "direction": np.round(self.direction, 6).tolist(),
            "dtype": str(self.array.dtype),
            "num_files": self.num_files,
            "warnings": list(self.warnings),
        }

    def layer_metadata(self) -> dict[str, Any]:
        """What a napari layer carries so that export never guesses the source."""
        return {
            "napari_ssl": {
                "affine": self.affine.tolist(),
                "modality": self.modality,
                "path": self.path,
                "study_instance_uid": self.study_instance_uid,
                "series_instance_uid": self.series_instance_uid,
                "frame_of_reference_uid": self.frame_of_reference_uid,
                "units": self.units,
            },
            "volume": self,
        }


def affine_from_itk(spacing_xyz, origin_xyz, direction_xyz) -> np.ndarray:
    """Build the (z, y, x)-index affine from ITK-style spacing/origin/direction (x, y, z order)."""
    d = np.asarray(direction_xyz, dtype=float).reshape(3, 3)
    s = np.asarray(spacing_xyz, dtype=float)
    m = d * s[None, :]  # columns: step along i (x), j (y), k (z)
    a = np.eye(4)
    a[:3, 0] = m[:, 2]
    a[:3, 1] = m[:, 1]
    a[:3, 2] = m[:, 0]
    a[:3, 3] = np.asarray(origin_xyz, dtype=float)
    return a


def itk_from_affine(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """Inverse of :func:`affine_from_itk`: (spacing_xyz, origin_xyz, direction_xyz flattened row-major)."""
    a = np.asarray(affine, dtype=float)
    m = np.stack([a[:3, 2], a[:3, 1], a[:3, 0]], axis=1)  # columns i, j, k
    s = np.linalg.norm(m, axis=0)
    d = m / s[None, :]
    return tuple(float(v) for v in s), tuple(float(v) for v in a[:3, 3]), tuple(float(v) for v in d.ravel())
