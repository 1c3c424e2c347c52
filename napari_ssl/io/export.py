"""Exporting label maps: onto the source series' grid, as NIfTI or DICOM-SEG.

:func:`export_labels` is the one entry used by the CLI and the Export widget. Labels may
be a path (NIfTI/NRRD/MHA), a :class:`Volume`, or an array with its affine (what a napari
Labels layer gives, in any axis order of the source grid), a DICOM-SEG or an RTSTRUCT (placed on the
source's grid; ROI names become segment names); the source is a path or a Volume.
Nothing is ever resampled: a mask on another grid is an error, not a silent interpolation.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import NapariSSLError
from .label_grid import labels_on_source_grid, native_affine
from .volume import Volume


def load_source(source: Volume | str | os.PathLike) -> Volume:
    """The source series as a Volume in its native order (DICOM folder/file, or NIfTI)."""
    if isinstance(source, Volume):
        return source
    from . import load_volume

    return load_volume(os.fspath(source), canonical=False)


def labels_with_affine(
    labels: Volume | np.ndarray | str | os.PathLike, labels_affine: Optional[np.ndarray] = None, source: Optional[Volume] = None,
    rois: Optional[Sequence[str] | str] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(array, affine) from a path (NIfTI/NRRD/MHA, or a DICOM-SEG / RTSTRUCT placed on `source`), a Volume,
    or an array (+ its affine; None means the order of ``source.array``). `rois`: RTSTRUCT ROIs to take, in order."""
    if isinstance(labels, Volume):
        return labels.array, labels.affine
    if isinstance(labels, (str, os.PathLike)):
        path = os.fspath(labels)
        from .nifti import is_itk_image_path, read_itk_volume
        from .seg.on_source import read_single_on_source
        from .seg.read import is_segmentation_file

        if not os.path.isfile(path):
            raise NapariSSLError(f"no such labels file: {path}")
        from .dicom.rtstruct import is_rtstruct_file

        if source is not None and is_rtstruct_file(path):
            from .dicom.rtstruct import read_rtstruct_labels

            vol, _names, _colors = read_rtstruct_labels(path, source=source, rois=rois, canonical=False)
            return vol.array, source.affine
        if rois:
            raise NapariSSLError("--rois picks ROIs of an RTSTRUCT; the labels given are not an RTSTRUCT")
        if source is not None and is_segmentation_file(path):
            arr, _ = read_single_on_source(path, source)   # on the source's full grid (cropped SEGs too)
            return arr, source.affine
        if not is_itk_image_path(path):
            raise NapariSSLError(f"labels file {os.path.basename(path)}: give a NIfTI/NRRD/MHA label map, a DICOM-SEG or an RTSTRUCT")
        vol = read_itk_volume(path)
        return vol.array, vol.affine
    return np.asarray(labels), labels_affine


def rtstruct_names(labels: Any, rois: Optional[Sequence[str] | str] = None) -> Optional[dict[int, str]]:
    """{label value: ROI name} when `labels` is an RTSTRUCT path (the SEG's segment names), else None."""
    if not isinstance(labels, (str, os.PathLike)):
        return None
    from .dicom.rtstruct import is_rtstruct_file, pick_rois, read_structure_set

    if not os.path.isfile(os.fspath(labels)) or not is_rtstruct_file(labels):
        return None
    return {v: r.name for v, r in enumerate(pick_rois(read_structure_set(labels), rois), start=1)}


def export_nifti(labels, source: Volume | str | os.PathLike, out_path: str | os.PathLike, labels_affine: Optional[np.ndarray] = None,
                 rois: Optional[Sequence[str] | str] = None) -> str:
    """Write `labels` as NIfTI/NRRD in the source's native geometry (atomically)."""
    from .nifti import is_itk_image_path, write_itk_volume

    out_path = os.fspath(out_path)
    if not is_itk_image_path(out_path):
        raise NapariSSLError(f"{os.path.basename(out_path)}: give a .nii.gz, .nii, .nrrd or .mha output path")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise NapariSSLError(f"output folder does not exist: {folder}")
    src = load_source(source)
    arr, aff = labels_with_affine(labels, labels_affine, src, rois=rois)
    native = labels_on_source_grid(arr, src, aff)
    write_itk_volume(np.ascontiguousarray(native), native_affine(src), out_path)
    return out_path


def export_labels(
    labels,
    source: Volume | str | os.PathLike,
    out_path: str | os.PathLike,
    labels_affine: Optional[np.ndarray] = None,
    names: Mapping[int, str] | Sequence[str] | str | None = None,
    labelmap: bool = False,
    model: Optional[str] = None,
    stow_url: Optional[str] = None,
    rois: Optional[Sequence[str] | str] = None,
    **seg_kwargs: Any,
) -> dict[str, Any]:
    """Export a label map next to its source: DICOM-SEG for ``.dcm`` outputs, NIfTI/NRRD otherwise.

    With ``stow_url`` the SEG is also stored on that DICOMweb server (STOW-RS).
    Returns a JSON-friendly summary (no patient identifiers).
    """
    out_path = os.fspath(out_path)
    is_seg = out_path.lower().endswith((".dcm", ".seg"))
    if stow_url and not is_seg:
        raise NapariSSLError("only a DICOM-SEG can be stored on a PACS: give an output path ending in .dcm")
    if is_seg:
        from .seg.write import write_segmentation

        src = load_source(source)
        arr, aff = labels_with_affine(labels, labels_affine, src, rois=rois)
        if names is None:
            names = rtstruct_names(labels, rois)
        res = write_segmentation(arr, src, out_path, labels_affine=aff, names=names, labelmap=labelmap, model=model, **seg_kwargs)
        summary: dict[str, Any] = {
            "format": "DICOM-SEG",
            "path": res.path,
            "segmentation_type": res.segmentation_type,
            "frames": res.num_frames,
            "segments": {str(res.segment_numbers[v]): res.names[v] for v in res.segment_numbers},
            "label_to_segment": {str(k): v for k, v in res.segment_numbers.items()},
            "sop_instance_uid": res.sop_instance_uid,
            "series_instance_uid": res.series_instance_uid,
            "source_series_instance_uid": src.series_instance_uid,
        }
        if res.warnings:
            summary["warnings"] = list(res.warnings)
        if stow_url:
            from .pacs import store_instances

            store_instances(stow_url, [res.dataset])
            summary["stored_to"] = stow_url
        return summary
    path = export_nifti(labels, source, out_path, labels_affine=labels_affine, rois=rois)
    return {"format": "NIfTI", "path": path}
