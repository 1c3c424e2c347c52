"""npe2 reader: DICOM files/folders/DICOMDIR, DICOM-SEG, RTSTRUCT, NIfTI/NRRD/MHA -> napari layers.

``napari_get_reader`` only says whether a path looks like something this plugin reads (cheap:
suffix, DICM magic, a bounded look into folders) and returns None otherwise, so napari can try
other readers. The reader function turns user-caused errors (NapariSSLError) into one-line
notifications and returns napari's "handled, nothing to add" sentinel ``[(None,)]`` instead of
raising, so the user never sees a traceback for bad input. Layer conventions: see ``layers.py``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence, Union

from ..errors import NapariSSLError
from ..io.nifti import is_itk_image_path
from .layers import image_layer_data, labels_layer_data, layer_name, open_image_volumes, resample_labels_to

log = logging.getLogger(__name__)

PathOrPaths = Union[str, Sequence[str]]
LayerData = tuple

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
}
# Files that napari's own reader handles; a folder holding only these (and no scan) is not ours.
_OTHER_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".npy", ".npz", ".zarr",
                         ".zarray", ".zattrs", ".zgroup", ".csv", ".h5", ".hdf5", ".czi", ".lif", ".nd2")
_MAX_FILES_LOOKED_AT = 2000
_MAX_WARNINGS_SHOWN = 5
NULL_LAYER = [(None,)]


# --- what is ours --------------------------------------------------------------------------
def _has_dicom_magic(path: str) -> bool:
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_dicomdir(path: str) -> bool:
    return os.path.basename(path).upper() == "DICOMDIR"


def _is_scan_file(path: str) -> bool:
    if is_itk_image_path(path) or _is_dicomdir(path):
        return True
    return path.lower().endswith(DICOM_SUFFIXES) or _has_dicom_magic(path)


def _folder_is_ours(folder: str) -> bool:
    """A folder holding a scan, or holding nothing napari's own reader would want (so that an
    empty or irrelevant folder gets this plugin's clear "no image found" message)."""
    if folder.rstrip(os.sep).lower().endswith(".zarr"):
        return False
    seen, other = 0, False
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = os.path.join(root, f)
            if _is_scan_file(p):
                return True
            other = other or f.lower().endswith(_OTHER_IMAGE_SUFFIXES)
            seen += 1
            if seen >= _MAX_FILES_LOOKED_AT:
                return not other
    return not other


def _is_ours(path: str) -> bool:
    if os.path.isdir(path):
        return _folder_is_ours(path)
    return os.path.isfile(path) and _is_scan_file(path)


def napari_get_reader(path: PathOrPaths) -> Optional[Callable[[PathOrPaths], list[LayerData]]]:
    """npe2 ``get_reader``: the reader function if every path is something we read, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    paths = [os.fspath(p) for p in paths]
    if not all(_is_ours(p) for p in paths):
        return None
    return read_scans


# --- reading -------------------------------------------------------------------------------
def _sop_class(path: str) -> str:
    """SOP Class UID of a DICOM file from its meta header only ('' if none)."""
    if not _has_dicom_magic(path):
        return ""
    try:
        from pydicom.filereader import read_file_meta_info

        return str(read_file_meta_info(path).get("MediaStorageSOPClassUID", "") or "")
    except Exception:  # not parseable: let the image reader name the problem
        return ""


RTSTRUCT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.3"}


def _seg_files_under(path: str, classes: set = SEG_SOP_CLASSES) -> list[str]:
    if os.path.isfile(path):
        return [path] if _sop_class(path) in classes else []
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            p = os.path.join(root, f)
            if not f.startswith(".") and not is_itk_image_path(f) and _sop_class(p) in classes:
                found.append(p)
    return found


def read_segmentation_layers(seg_path: str, images: Sequence[Any] = ()) -> list[LayerData]:
    """Labels layers for one DICOM-SEG file, each placed on the grid of the image it belongs to
    (same frame of reference and grid) when that image is among `images`."""
    from ..io.orientation import canonicalize
    from ..io.seg import read_segmentation

    placed_on_source = _read_on_known_source(seg_path, images)
    if placed_on_source is not None:
        return [_seg_layer(labels, names, seg_path) for labels, names in placed_on_source]
    layers = []
    for labels, names in read_segmentation(seg_path):
        labels = canonicalize(labels)
        placed = None
        for image in images:
            same_for = not labels.frame_of_reference_uid or not image.frame_of_reference_uid \
                or labels.frame_of_reference_uid == image.frame_of_reference_uid
            if same_for:
                placed = resample_labels_to(labels, image)
                if placed is not None:
                    break
        target = placed if placed is not None else labels
        data, kwargs, kind = labels_layer_data(target, names)
        kwargs["metadata"]["napari_ssl"]["seg_path"] = seg_path
        if labels.series_description and not names:
            kwargs["name"] = labels.series_description
        layers.append((data, kwargs, kind))
    return layers


def _seg_layer(labels: Any, names: dict, seg_path: str) -> LayerData:
    data, kwargs, kind = labels_layer_data(labels, names)
    kwargs["metadata"]["napari_ssl"]["seg_path"] = seg_path
    return data, kwargs, kind


def _read_on_known_source(seg_path: str, images: Sequence[Any]) -> Optional[list]:
    """The SEG's label maps on the full grid of the series it references, when that series is
    among `images`, open in the viewer, or on disk beside the SEG; None when it is not known
    (or the SEG does not lie on its grid: a warning, then the SEG opens on its own grid)."""
    from ..io.orientation import canonicalize
    from ..io.seg.on_source import find_source_series, read_on_source, referenced_series_uid

    uid = referenced_series_uid(seg_path)
    if not uid:
        return None
    source = next((v for v in list(images) + open_image_volumes() if v.series_instance_uid == uid), None)
    if source is None:
        found = find_source_series(seg_path)
        source = canonicalize(found) if found is not None else None
    if source is None:
        return None
    try:
        return read_on_source(seg_path, source)
    except NapariSSLError as exc:
        _notify("warning", f"{os.path.basename(seg_path)}: not placed on its source series ({exc}); shown on its own grid")
        return None


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)


def _show_volume_warnings(volumes: Sequence[Any]) -> None:
    """Each volume's warnings as napari warnings, at most a few in all (then a count)."""
    messages = list(dict.fromkeys(f"{layer_name(v)}: {w}" for v in volumes for w in v.warnings))
    for m in messages[:_MAX_WARNINGS_SHOWN]:
        _notify("warning", m)
    if len(messages) > _MAX_WARNINGS_SHOWN:
        _notify("warning", f"{len(messages) - _MAX_WARNINGS_SHOWN} more warnings; run `napari-ssl info PATH` to see them all")


def layers_from_paths(paths: Sequence[str]) -> list[LayerData]:
    """Image layers for every volume under `paths` and Labels layers for every DICOM-SEG there.

    Raises NapariSSLError for user-caused problems (no image found, unreadable file ...).
    """
    from ..io import load_volumes

    paths = [os.path.dirname(os.path.abspath(p)) if _is_dicomdir(p) else p for p in paths]
    seg_paths = [s for p in paths for s in _seg_files_under(p)]
    rt_paths = [s for p in paths for s in _seg_files_under(p, RTSTRUCT_SOP_CLASSES)]
    image_paths = [p for p in paths if p not in seg_paths and p not in rt_paths]
    volumes = []
    if image_paths:
        try:
            volumes = load_volumes(image_paths)
        except NapariSSLError:
            if not seg_paths and not rt_paths:  # a folder holding only SEGs / RTSTRUCTs is fine; anything else is not
                raise
    layers: list[LayerData] = [image_layer_data(v) for v in volumes]
    _show_volume_warnings(volumes)
    for s in seg_paths:
        try:
            layers.extend(read_segmentation_layers(s, volumes))
        except NapariSSLError as exc:
            if len(seg_paths) == 1 and not layers:
                raise
            _notify("warning", str(exc))  # the images still open
    for r in rt_paths:
        from .rtstruct_layers import read_rtstruct_layers

        try:
            new = read_rtstruct_layers(r, volumes)
        except NapariSSLError as exc:
            if len(rt_paths) == 1 and not layers:
                raise
            _notify("warning", str(exc))
            continue
        layers.extend(new)
        _show_volume_warnings([kw["metadata"]["volume"] for _d, kw, kind in new if kind == "labels"][:1])
    if not layers:
        raise NapariSSLError(f"no image found under {', '.join(paths)}")
    return layers


def read_scans(path: PathOrPaths) -> list[LayerData]:
    """npe2 reader function: layers, or ``[(None,)]`` after a notification when the input is bad."""
    paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]
    try:
        return layers_from_paths(paths)
    except NapariSSLError as exc:
        _notify("error", str(exc))
        return NULL_LAYER
