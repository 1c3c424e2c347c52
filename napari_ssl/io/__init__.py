"""Reading scans into :class:`Volume` objects: DICOM series, NIfTI/NRRD/MHA, DICOM-SEG."""
from __future__ import annotations

import os
from typing import Iterable

from ..errors import NapariSSLError, NoImageFound
from .nifti import SUFFIXES as ITK_SUFFIXES, is_itk_image_path, read_itk_volume, write_itk_volume
from .orientation import canonicalize
from .volume import Volume

__all__ = ["Volume", "load_volumes", "load_volume", "load_image", "write_itk_volume", "canonicalize"]


def _itk_files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path] if is_itk_image_path(path) else []
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            if is_itk_image_path(f) and not f.startswith("."):
                found.append(os.path.join(root, f))
    return found


def load_volumes(paths: str | os.PathLike | Iterable[str | os.PathLike], canonical: bool = True) -> list[Volume]:
    """Every image volume found under one or more paths (files, folders, folder trees).

    DICOM series are discovered and grouped; NIfTI/NRRD/MHA files are read one volume each.
    With ``canonical`` (default) arrays are reordered to the canonical LPS-like order so the
    same scan looks the same whatever file it came from (see :mod:`napari_ssl.io.orientation`).
    """
    from .dicom.series import load_dicom_volumes

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    volumes: list[Volume] = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.exists(p):
            raise NapariSSLError(f"no such file or folder: {p}")
        for f in _itk_files_under(p):
            volumes.append(read_itk_volume(f))
        if os.path.isfile(p) and is_itk_image_path(p):
            continue
        volumes.extend(load_dicom_volumes(p))
    if not volumes:
        raise NoImageFound(f"no image found under {', '.join(os.fspath(p) for p in paths)} (looked for DICOM series and {', '.join(ITK_SUFFIXES)})")
    if canonical:
        volumes = [canonicalize(v) for v in volumes]
    return volumes


def load_volume(path: str | os.PathLike, canonical: bool = True) -> Volume:
    """Exactly one volume from `path`; an error naming the series if there are several."""
    vols = load_volumes(path, canonical=canonical)
    if len(vols) > 1:
        names = "; ".join(f"{v.series_description or os.path.basename(v.path)} {list(v.shape)}" for v in vols[:5])
        raise NapariSSLError(f"{path} holds {len(vols)} image series ({names}); point to one series folder or file")
    return vols[0]


def load_image(item) -> Volume:
    """A Volume on the canonical grid from a path (one image file or one DICOM series) or a Volume (returned as is)."""
    if isinstance(item, Volume):
        return item
    path = os.fspath(item)
    if os.path.isfile(path) and is_itk_image_path(path):
        return canonicalize(read_itk_volume(path))
    return load_volume(path)
