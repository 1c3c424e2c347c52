"""Volume <-> napari layer data: the one place that decides scale, translate, contrast and metadata.

Convention (every widget relies on it):
  * ``layer.data`` is ``volume.array`` (z, y, x) in the canonical LPS-like order of
    :mod:`napari_ssl.io.orientation` (x to the patient's left, y to posterior, z to superior).
  * ``scale`` is ``volume.spacing`` (mm, z, y, x).
  * ``translate[t]`` is the voxel-(0,0,0) position projected on array axis ``t``'s own direction:
    ``origin . direction[:, t]``. With orthonormal directions the napari world coordinate of any
    voxel along axis t is then exactly its patient position projected on that axis, so every layer
    whose grid shares the direction cosines (an image, its masks, predictions, a SEG, any subset
    or crop of its slices) lines up to the voxel. For an axis-aligned canonical volume this is
    simply the LPS position mapped to (z, y, x) = (S, P, L).
  * ``metadata`` is ``volume.layer_metadata()``: ``metadata["volume"]`` is the Volume itself (geometry,
    identity, source datasets for DICOM-SEG export), ``metadata["napari_ssl"]`` a plain-dict copy
    (affine, modality, UIDs, units; for labels also ``segment_names`` {value: name}).
Use :func:`volume_from_layer` to get a Volume back from any layer made here (with the layer's
current data, e.g. what the user painted).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np

from ..io.orientation import axis_mapping, reorient_array
from ..io.volume import Volume

# CT window (HU) shown first: L 40 / W 400 (soft tissue, abdomen); bone and air saturate, the
# contrast slider range still covers the whole data range.
CT_WINDOW = (-160.0, 240.0)
# Percentiles for everything else (MR, PET, unknown NIfTI).
PERCENTILES = (0.5, 99.5)
_MAX_SAMPLES = 2_000_000


def layer_geometry(volume: Volume) -> dict[str, tuple[float, float, float]]:
    """``scale`` and ``translate`` (z, y, x, mm) of the napari layer for `volume` (see module doc)."""
    direction = volume.direction
    origin = np.asarray(volume.origin, dtype=float)
    # rounded to 1e-9 mm: float noise from direction normalisation would only clutter the display
    translate = tuple(round(float(origin @ direction[:, t]), 9) for t in range(3))
    return {"scale": tuple(round(float(s), 9) for s in volume.spacing), "translate": translate}


def is_ct(volume: Volume) -> bool:
    return volume.modality.upper() == "CT" or volume.units == "HU"


def _sample(array: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil((array.size / _MAX_SAMPLES) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step])


def default_contrast_limits(volume: Volume) -> tuple[float, float]:
    """CT in HU: the soft-tissue window; otherwise the 0.5-99.5 percentiles of the voxels."""
    sample = _sample(volume.array)
    lo_data, hi_data = float(sample.min()), float(sample.max())
    if is_ct(volume) and lo_data < CT_WINDOW[1] and hi_data > CT_WINDOW[0]:
        return CT_WINDOW
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
    if hi <= lo:  # constant image or a few bright voxels: fall back to the full range
        lo, hi = lo_data, hi_data if hi_data > lo_data else lo_data + 1.0
    return lo, hi


def layer_name(volume: Volume) -> str:
    """SeriesDescription, else modality + file/folder name; never the patient's name or ID."""
    desc = (volume.series_description or "").strip()
    if not desc:
        base = os.path.basename(os.path.normpath(volume.path)) if volume.path else ""
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        desc = base
    modality = (volume.modality or "").strip()
    first_word = desc.split()[0].upper() if desc.split() else ""
    name = f"{modality} {desc}".strip() if modality and first_word != modality.upper() else desc
    return name or modality or "image"


def image_layer_data(volume: Volume, name: Optional[str] = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """napari LayerData tuple ``(data, kwargs, "image")`` for a scan."""
    lo, hi = default_contrast_limits(volume)
    kwargs: dict[str, Any] = {
        "name": name or layer_name(volume),
        "metadata": volume.layer_metadata(),
        "contrast_limits": [lo, hi],
        "colormap": "gray",
        "blending": "translucent",
        **layer_geometry(volume),
    }
    return volume.array, kwargs, "image"


def labels_layer_data(
    labels: Volume,
    segment_names: Optional[Mapping[int, str]] = None,
    name: Optional[str] = None,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """napari LayerData tuple ``(data, kwargs, "labels")`` for a label map on its own grid.

    ``segment_names`` ({label value: name}) go to ``metadata["napari_ssl"]["segment_names"]`` and to
    the layer's ``features`` (napari shows the name under the cursor).
    """
    names = {int(k): str(v) for k, v in (segment_names or {}).items()}
    meta = labels.layer_metadata()
    meta["napari_ssl"]["segment_names"] = dict(names)
    data = labels.array
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data).astype(np.uint16 if data.max(initial=0) > 255 else np.uint8)
    kwargs: dict[str, Any] = {
        "name": name or (", ".join(names[k] for k in sorted(names)) if names else layer_name(labels) + " labels"),
        "metadata": meta,
        "opacity": 0.5,
        **layer_geometry(labels),
    }
    if names:
        top = max(max(names), int(data.max(initial=0)))
        kwargs["features"] = {
            "index": np.arange(top + 1),
            "name": [names.get(i, "background" if i == 0 else f"label {i}") for i in range(top + 1)],
        }
    return data, kwargs, "labels"


def resample_labels_to(labels: Volume, reference: Volume, tol_mm: float = 1e-3) -> Optional[Volume]:
    """`labels` placed on `reference`'s grid when the grids differ only by axis order/flips and a
    whole-voxel offset (e.g. a SEG covering some of the series' slices); None otherwise.

    Never interpolates: a mask on a really different grid stays on its own grid (it still lines up
    in napari through scale/translate when directions agree).
    """
    try:
        perm, flips = axis_mapping(labels.affine, reference.affine)
    except ValueError:
        return None
    arr = reorient_array(labels.array, labels.affine, reference.affine)
    # the labels' spacing along each reference axis must equal the reference spacing
    lab_spacing = np.asarray(labels.spacing)[perm]
    if not np.allclose(lab_spacing, reference.spacing, atol=tol_mm, rtol=1e-4):
        return None
    # the reoriented array's first voxel, as an index in the labels' own order, then in LPS,
    # then as a (whole-voxel, if the grids agree) index of the reference grid
    own_idx = np.zeros(3)
    for p, f in zip(perm, flips):
        own_idx[p] = (labels.shape[p] - 1) if f else 0
    src_pos = labels.affine[:3, :3] @ own_idx + labels.affine[:3, 3]
    ref_idx = np.linalg.solve(reference.affine[:3, :3], src_pos - reference.affine[:3, 3])
    offset = np.rint(ref_idx)
    if np.any(np.abs(ref_idx - offset) * np.asarray(reference.spacing) > max(tol_mm, 0.01 * min(reference.spacing))):
        return None
    offset = offset.astype(int)
    out = np.zeros(reference.shape, dtype=labels.array.dtype)
    dst = tuple(slice(max(o, 0), min(o + n, s)) for o, n, s in zip(offset, arr.shape, reference.shape))
    src = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, offset))
    if any(d.stop <= d.start for d in dst):
        return None
    out[dst] = arr[src]
    return reference.with_array(out, units="")


def volume_from_layer(layer: Any) -> Volume:
    """The Volume behind a layer made by this module, carrying the layer's current data.

    Raises ValueError for a layer that was not made here (no geometry in its metadata).
    """
    meta = getattr(layer, "metadata", {}) or {}
    vol = meta.get("volume")
    data = np.asarray(layer.data)
    if isinstance(vol, Volume):
        if data.shape == vol.array.shape:
            return vol if data is vol.array else vol.with_array(data)
        raise ValueError(f"layer {layer.name!r} data shape {data.shape} no longer matches its volume {vol.shape}")
    info = meta.get("napari_ssl") or {}
    if "affine" not in info:
        raise ValueError(f"layer {getattr(layer, 'name', '?')!r} carries no napari-ssl geometry (open scans with the napari-ssl reader)")
    return Volume(
        array=data,
        affine=np.asarray(info["affine"], dtype=float),
        modality=info.get("modality") or "",
        path=info.get("path") or "",
        study_instance_uid=info.get("study_instance_uid"),
        series_instance_uid=info.get("series_instance_uid"),
        frame_of_reference_uid=info.get("frame_of_reference_uid"),
        units=info.get("units") or "",
    )


def open_image_volumes() -> list[Volume]:
    """Volumes behind the image layers already open in the current viewer (none without one)."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:
        return []
    if viewer is None:
        return []
    out = []
    for layer in viewer.layers:
        vol = (getattr(layer, "metadata", None) or {}).get("volume")
        if type(layer).__name__ == "Image" and isinstance(vol, Volume):
            out.append(vol)
    return out
