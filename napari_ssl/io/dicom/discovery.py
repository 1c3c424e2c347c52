"""Finding DICOM files under a path and reading their headers (never their pixels).

A file is tried as DICOM when it has the ``DICM`` prefix at byte 128, or (older files
written without a preamble) when it starts like a little-endian data set. Anything else is
skipped quietly. A file that looks like DICOM but cannot be parsed, or whose pixel data
runs past the end of the file, is reported as a problem naming the file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from ..nifti import is_itk_image_path
from .pydicom_fast import value

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_PIXEL_DATA = 0x7FE00009
# Values larger than this stay on disk (the pixel data in particular); the reader uses
# their file offset to read pixels straight into the output array.
DEFER_SIZE = 1024

# Modalities / SOP classes that carry no image to show as a volume. DICOM-SEG has its own reader.
NON_IMAGE_MODALITIES = {"SEG", "SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "PR", "KO", "REG", "FID",
                        "RWV", "DOC", "PLAN", "AU", "ECG", "HD", "RESP", "M3D", "OT_NOIMAGE"}
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",     # raw data, spatial registration, fiducials, SEG (66.4), ...
    "1.2.840.10008.5.1.4.1.1.88",     # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11",     # presentation states
    "1.2.840.10008.5.1.4.1.1.481",    # radiotherapy objects (RTDOSE, RTSTRUCT, RTPLAN, ...)
    "1.2.840.10008.5.1.4.1.1.104",    # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.9",      # waveforms
    "1.2.840.10008.1.3.10",           # media storage directory (DICOMDIR)
)
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1",    # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",    # Legacy converted enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1",    # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.4",    # Legacy converted enhanced MR
    "1.2.840.10008.5.1.4.1.1.130",    # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy converted enhanced PET
    "1.2.840.10008.5.1.4.1.1.13.1.3", # Breast tomosynthesis
    "1.2.840.10008.5.1.4.1.1.6.2",    # Enhanced US volume
}


@dataclass
class Header:
    """One DICOM file's header plus where its pixel data lies on disk."""

    path: str
    ds: Any                     # pydicom Dataset, pixel data deferred (not read)
    pixel_offset: int = -1      # byte offset of the pixel data value in the file
    pixel_length: int = 0       # 0xFFFFFFFF for encapsulated (compressed) data
    has_pixels: bool = False
    transfer_syntax: str = ""


@dataclass
class Scan:
    """What a walk over a path found: image headers, skipped objects and problems."""

    headers: list[Header] = field(default_factory=list)
    non_image: int = 0                     # DICOM objects without an image (SEG, SR, DICOMDIR...)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    itk_files: int = 0                     # NIfTI/NRRD/MHA files seen (read elsewhere)


def iter_files(path: str) -> Iterator[str]:
    """Regular files under `path` (or `path` itself), hidden files and folders left out."""
    if os.path.isfile(path):
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                yield os.path.join(root, f)


def looks_like_dicom(head: bytes) -> Optional[bool]:
    """True: DICM prefix; None: no preamble but starts like a data set (try forcing); False: not DICOM."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, elem = struct.unpack_from("<HH", head, 0)
    # A preamble-less file starts with group 0002 (meta), 0008 (identity) or a group length.
    if group in (0x0002, 0x0008) and elem < 0x0100:
        vr = head[4:6]
        if vr.isalpha() and vr.isupper():
            return None
        (length,) = struct.unpack_from("<I", head, 4)
        if length < 1 << 16:
            return None
    return False


def _is_non_image(ds: Any) -> bool:
    sop = str(value(ds, "SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if sop.startswith(NON_IMAGE_SOP_PREFIXES):
        return True
    if str(value(ds, "Modality", "")).upper() in NON_IMAGE_MODALITIES:
        return True
    return False


_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UC", b"UR", b"UT", b"SV", b"UV"}
_PIXEL_TAGS = {PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA}


def read_header(path: str, force: bool = False) -> Header:
    """Parse one file's header, stopping before the pixel data, and note where that lies.

    pydicom leaves the file positioned at the pixel data element; its tag and length are
    decoded here so that uncompressed frames can later be read straight from disk.
    Raises on unreadable files.
    """
    import pydicom

    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
        start = fp.tell()
        head = fp.read(12)
    h = Header(path=path, ds=ds)
    meta = getattr(ds, "file_meta", None)
    h.transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    ds.filename = path
    if h.transfer_syntax == "1.2.840.10008.1.2.1.99":   # deflated: no file offsets to use
        full = pydicom.dcmread(path, force=force)
        h.has_pixels = any(t in full for t in _PIXEL_TAGS)
        return h
    if len(head) < 8:
        return h
    implicit = h.transfer_syntax == "1.2.840.10008.1.2" or (not h.transfer_syntax and getattr(ds, "is_implicit_VR", False))
    big = h.transfer_syntax == "1.2.840.10008.1.2.2"
    e = ">" if big else "<"
    group, elem = struct.unpack(e + "HH", head[:4])
    if ((group << 16) | elem) not in _PIXEL_TAGS:
        return h
    if implicit:
        (length,) = struct.unpack(e + "I", head[4:8])
        offset = start + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return h
        (length,) = struct.unpack(e + "I", head[8:12])
        offset = start + 12
    else:
        (length,) = struct.unpack(e + "H", head[6:8])
        offset = start + 8
    h.has_pixels = True
    h.pixel_offset = offset
    h.pixel_length = length
    return h


def is_truncated(h: Header, size: int) -> bool:
    """True when the file ends inside its meta header or inside its last element.

    pydicom stops quietly at the end of a cut file; the offsets of what it read tell.
    """
    ds = h.ds
    meta = getattr(ds, "file_meta", None)
    try:
        with open(h.path, "rb") as fp:
            has_preamble = fp.read(132)[128:132] == b"DICM"
        if has_preamble and meta is not None and "FileMetaInformationGroupLength" in meta:
            if 132 + 12 + int(meta.FileMetaInformationGroupLength) > size:
                return True
        keys = list(ds.keys())
        if keys:
            raw = ds.get_item(keys[-1], keep_deferred=True)
            tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
            if tell is not None and length is not None and length != 0xFFFFFFFF and tell + length > size:
                return True
    except (OSError, ValueError, TypeError):
        return True
    return False


def scan_path(path: str) -> Scan:
    """Walk `path`, read every DICOM header, sort them into images, non-images and problems."""
    from pydicom.errors import InvalidDicomError

    scan = Scan()
    for f in iter_files(path):
        if is_itk_image_path(f):
            scan.itk_files += 1
            continue
        try:
            with open(f, "rb") as fp:
                head = fp.read(132)
        except OSError as exc:
            scan.problems.append((f, f"cannot open {f}: {exc.strerror or exc}"))
            continue
        kind = looks_like_dicom(head)
        if kind is False:
            continue
        try:
            h = read_header(f, force=kind is None)
        except InvalidDicomError:
            if kind is None:
                continue  # guessed wrong: not DICOM after all
            scan.problems.append((f, f"{f}: unreadable DICOM file; left out"))
            continue
        except Exception as exc:  # pydicom raises many kinds on corrupt input
            if kind is None:
                continue
            scan.problems.append((f, f"{f}: unreadable DICOM file ({type(exc).__name__}); left out"))
            continue
        if kind is None and "SOPClassUID" not in h.ds and "Modality" not in h.ds:
            continue  # forced parse of a non-DICOM file that happened to look like one
        size = os.path.getsize(f)
        if is_truncated(h, size):
            scan.problems.append((f, f"{f}: truncated DICOM file; left out"))
            continue
        if _is_non_image(h.ds):
            scan.non_image += 1
            continue
        if not h.has_pixels:
            if "Rows" in h.ds and "Columns" in h.ds:
                scan.problems.append((f, f"{f}: image header without pixel data (truncated file?); left out"))
            else:
                scan.non_image += 1
            continue
        if h.pixel_length != 0xFFFFFFFF and h.pixel_offset >= 0 and h.pixel_offset + h.pixel_length > size:
            scan.problems.append((f, f"{f}: truncated DICOM file (pixel data cut short); left out"))
            continue
        scan.headers.append(h)
    return scan


def is_enhanced(ds: Any) -> bool:
    """Multi-frame object with functional groups (Enhanced CT/MR/PET and legacy-converted)."""
    if str(value(ds, "SOPClassUID", "")) in ENHANCED_SOP_CLASSES:
        return True
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
