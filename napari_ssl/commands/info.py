"""`napari-ssl info PATH [--json]`: every DICOM series and NIfTI/NRRD/MHA volume under PATH.

Headers only (no pixel data is decoded), so a large tree is listed quickly. Shape and
spacing are given in the canonical array order that the viewer and ``load_volumes`` use.
No patient names or IDs are printed.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

HELP = "list the image series/volumes found under a path (DICOM, NIfTI, NRRD, MHA)"


def add_arguments(parser) -> None:
    parser.add_argument("path", nargs="+", help="file or folder (searched recursively)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _canonical(shape: tuple[int, int, int], affine) -> tuple[list[int], list[float]]:
    import numpy as np

    from ..io.orientation import canonical_mapping, reoriented_affine

    perm, flips = canonical_mapping(affine)
    new = reoriented_affine(affine, shape, perm, flips)
    return [int(shape[p]) for p in perm], [round(float(s), 6) for s in np.linalg.norm(new[:3, :3], axis=0)]


def _dicom_entries(path: str) -> tuple[list[dict[str, Any]], Any]:
    from ..io.dicom.pixels import stored_dtype
    from ..io.dicom.series import plan_dicom_series

    plans, scan = plan_dicom_series(path)
    out = []
    for p in plans:
        shape, spacing = _canonical(p.shape, p.stack.affine)
        ds = p.ds
        out.append({
            "path": p.path,
            "format": "dicom",
            "modality": p.modality or None,
            "series_instance_uid": p.series_instance_uid,
            "study_instance_uid": str(ds.get("StudyInstanceUID")) if ds.get("StudyInstanceUID") else None,
            "series_description": str(ds.get("SeriesDescription", "") or ""),
            "shape": shape,
            "spacing": spacing,
            "stored_dtype": str(stored_dtype(ds)),
            "num_files": p.num_files,
            "warnings": list(p.warnings),
        })
    return out, scan


def _itk_entry(path: str) -> dict[str, Any]:
    import SimpleITK as sitk

    from ..errors import NapariSSLError
    from ..io.volume import affine_from_itk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise NapariSSLError(f"cannot read {path}: not a readable NIfTI/NRRD/MHA image") from None
    size = list(reader.GetSize())
    dim = reader.GetDimension()
    warnings = []
    if dim == 2:
        size, spacing_xyz, origin, direction = (size + [1], list(reader.GetSpacing()) + [1.0], list(reader.GetOrigin()) + [0.0],
                                                (1, 0, 0, 0, 1, 0, 0, 0, 1))
        d2 = reader.GetDirection()
        direction = (d2[0], d2[1], 0, d2[2], d2[3], 0, 0, 0, 1)
    elif dim == 3:
        spacing_xyz, origin, direction = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    else:
        raise NapariSSLError(f"{path} is {dim}-D; only 3-D volumes are supported")
    if reader.GetNumberOfComponents() != 1:
        warnings.append(f"{reader.GetNumberOfComponents()} components per voxel; only scalar images can be opened")
    affine = affine_from_itk(spacing_xyz, origin, direction)
    shape, spacing = _canonical((size[2], size[1], size[0]), affine)
    return {
        "path": path,
        "format": os.path.basename(path).lower().split(".", 1)[-1],
        "modality": None,
        "series_instance_uid": None,
        "study_instance_uid": None,
        "series_description": "",
        "shape": shape,
        "spacing": spacing,
        "stored_dtype": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
        "num_files": 1,
        "warnings": warnings,
    }


def collect(paths: list[str]) -> list[dict[str, Any]]:
    """Header-only descriptions of every volume under `paths` (raises NoImageFound if none)."""
    from ..errors import NapariSSLError, NoImageFound
    from ..io import _itk_files_under
    from ..io.dicom.series import _no_image_message

    entries: list[dict[str, Any]] = []
    empty_notes = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise NapariSSLError(f"no such file or folder: {path}")
        start = len(entries)
        for f in _itk_files_under(path):
            try:
                entries.append(_itk_entry(f))
            except NapariSSLError as exc:
                print(f"warning: {exc}", file=sys.stderr)
        dicom, scan = _dicom_entries(path)
        entries.extend(dicom)
        entries[start:] = sorted(entries[start:], key=lambda e: e["path"])
        if not dicom and not scan.itk_files:
            empty_notes.append(_no_image_message(path, scan))
    if not entries:
        raise NoImageFound("; ".join(empty_notes) or "no image found")
    return entries


def _table(entries: list[dict[str, Any]]) -> str:
    rows = [("#", "modality", "shape z,y,x", "spacing z,y,x mm", "files", "series", "path")]
    for i, e in enumerate(entries, 1):
        series = e["series_description"] or (e["series_instance_uid"] or "")
        if len(series) > 40:
            series = "..." + series[-37:]
        rows.append((str(i), e["modality"] or "-", "x".join(map(str, e["shape"])),
                     " ".join(f"{s:.3g}" for s in e["spacing"]), str(e["num_files"]), series or "-", e["path"]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(r[c].ljust(widths[c]) for c in range(len(widths))) + "  " + r[-1])
        if k:
            lines.extend(f"    warning: {w}" for w in entries[k - 1]["warnings"])
    return "\n".join(lines)


def run(args) -> int:
    entries = collect(args.path)
    if args.json:
        json.dump(entries, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_table(entries))
        n_warn = sum(len(e["warnings"]) for e in entries)
        print(f"{len(entries)} volume(s)" + (f", {n_warn} warning(s)" if n_warn else ""))
    return 0
