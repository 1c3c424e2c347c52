"""NIfTI / NRRD / MHA (anything SimpleITK reads) into a Volume."""
from __future__ import annotations

import os

import numpy as np

from ..errors import NapariSSLError
from .volume import Volume, affine_from_itk, itk_from_affine

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk_image_path(path: str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def read_itk_volume(path: str) -> Volume:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise NapariSSLError(f"cannot read {os.path.basename(path)}: {first[-1] if first else 'unreadable image'}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise NapariSSLError(f"{os.path.basename(path)} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                             "only scalar images are supported")
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    elif img.GetDimension() == 4:
        raise NapariSSLError(f"{os.path.basename(path)} is 4-D; only 3-D volumes are supported")
    arr = sitk.GetArrayFromImage(img)  # z, y, x
    affine = affine_from_itk(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    return Volume(array=arr, affine=affine, path=str(path), num_files=1)


def write_itk_volume(array: np.ndarray, affine: np.ndarray, path: str, vector: bool = False) -> None:
    """Write `array` (z, y, x), or (z, y, x, k) components per voxel with `vector`, on grid `affine`
    atomically (temp file then rename)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    spacing, origin, direction = itk_from_affine(affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    path = str(path)
    base = os.path.basename(path)
    suffix = next((s for s in SUFFIXES if base.lower().endswith(s)), os.path.splitext(base)[1])
    from .atomic import atomic_path

    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(img, tmp, useCompression=True)
