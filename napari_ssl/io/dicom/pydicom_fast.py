"""Every reach into pydicom's internals, in one place: what it replaces, why, and how to re-check it.

pydicom's generic machinery (per-element conversion and validation, per-add bookkeeping, its file writer) is
correct but slow on the two hot paths of this package: the header scan of a whole series, and a DICOM-SEG of a
300-slice series (thousands of small nested items). What is done here instead:

* :func:`value` -- ``ds.get(keyword)`` read straight from the still-raw element in ``Dataset._dict`` (numbers, UIDs,
  code strings), without pydicom's per-element conversion; anything else goes through pydicom.
* :func:`header_copy` -- a copy of a header whose elements can be replaced without touching the original: a new
  ``_dict`` sharing the elements (about 300x cheaper than a deep copy; highdicom only reads them).
* :func:`element` / :func:`dataset` -- a DataElement with pydicom's per-value validation off (values taken from
  validated headers) and a Dataset built from a dict in one go (no per-add bookkeeping).
* :func:`encode_file` -- a pydicom Dataset written as an explicit VR little endian file, byte for byte as pydicom
  does, faster. The common value representations (UI, CS, SH/LO in ASCII, DS/IS, binary numbers, sequences) are
  encoded directly, items shared between frames (code items, derivation references, plane positions) are encoded
  once, and anything else (PN, dates, non-ASCII text, ambiguous VRs, raw elements, oversized values) goes through
  pydicom's own element writer (``pydicom.filewriter.write_data_element``); the preamble and file meta come from
  pydicom. On any doubt the whole file falls back to ``Dataset.save_as``.

Also relied on (documented where used): pydicom's ``dcmread(..., stop_before_pixels=True)`` leaves the file
positioned at the pixel data element (:func:`napari_ssl.io.dicom.discovery.read_header` reads its offset there).

Re-check after a pydicom upgrade (they compare against pydicom's own results)::

    .venv/bin/python -m pytest tests/test_io_dicom.py tests/test_seg_export.py -q
    # test_fast_file_encoding_gives_pydicoms_bytes: encode_file's bytes == Dataset.save_as(..., enforce_file_format=True)
    # test_fast_build_equals_highdicoms_own: the SEG built with element/dataset/header_copy == highdicom's own
"""
from __future__ import annotations

import copy
import struct
from typing import Any, Optional

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

# --- reading raw header values ---------------------------------------------------------
_FAST_STRING_VRS = {"UI", "CS", "DS", "IS", "AS", "DA", "TM"}
_FAST_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FD": "d", "FL": "f"}
_TAGS: dict[str, tuple[int, str]] = {}


def _tag_vr(keyword: str) -> tuple[int, str]:
    hit = _TAGS.get(keyword)
    if hit is None:
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(keyword)
        hit = _TAGS[keyword] = (int(tag), dictionary_VR(tag))
    return hit


def value(ds: Any, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword)`` without pydicom's per-element conversion machinery, for the hot
    attributes of the header scan (numbers, UIDs, code strings). Multi-valued numbers come back
    as lists of float/int, single ones as float/int, strings as str; anything else (text with a
    character set, sequences) goes through pydicom."""
    tag, dict_vr = _tag_vr(keyword)
    elem = ds._dict.get(tag)
    if elem is None:
        return default
    raw = getattr(elem, "is_raw", False) and getattr(elem, "value", None)
    if not raw or getattr(elem, "is_undefined_length", False):
        return ds.get(keyword, default)
    vr = elem.VR or dict_vr
    data: bytes = elem.value
    if vr in _FAST_STRING_VRS:
        text = data.decode("latin-1").strip("\x00 ")
        if vr in ("DS", "IS"):
            try:
                nums = [float(p) if vr == "DS" else int(float(p)) for p in text.split("\\") if p.strip()]
            except ValueError:
                return ds.get(keyword, default)
            return default if not nums else nums[0] if len(nums) == 1 else nums
        return text
    code = _FAST_BINARY.get(vr)
    if code is not None:
        size = struct.calcsize(code)
        if len(data) % size:
            return ds.get(keyword, default)
        vals = struct.unpack(("<" if elem.is_little_endian else ">") + code * (len(data) // size), data)
        return default if not vals else vals[0] if len(vals) == 1 else list(vals)
    return ds.get(keyword, default)


# --- building datasets -------------------------------------------------------------------
def header_copy(ds):
    """A copy of a header whose elements can be replaced without touching `ds` (the elements
    themselves are shared, not copied: highdicom only reads them). 300x cheaper than a deep copy."""
    out = copy.copy(ds)
    object.__setattr__(out, "_dict", dict(ds._dict))
    return out


def element(tag: int, vr: str, val: Any):
    """A DataElement without pydicom's per-value validation (values from validated headers or built here)."""
    return DataElement(tag, vr, val, validation_mode=config.IGNORE)


def dataset(*elems):
    """A Dataset of `elems` through pydicom's dict constructor: no per-add bookkeeping."""
    return Dataset({BaseTag(e.tag): e for e in elems})


# --- writing files ---------------------------------------------------------------------------
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_STRING_PAD = {"UI": "\0", "CS": " ", "AE": " ", "AS": " ", "UR": " "}   # pydicom's write_string
_TEXT = {"SH", "LO", "LT", "ST", "UC", "UT"}                              # pydicom's write_text
_NUMBERS = {"US": "H", "UL": "L", "SL": "l", "FD": "d", "FL": "f", "SV": "q", "UV": "Q"}
_NUMBER_STRINGS = {"DS", "IS"}


class _Fallback(Exception):
    """Something this encoder does not reproduce: let pydicom write the whole file."""


_MULTI: tuple = ()


def _multi(value: Any) -> bool:
    global _MULTI
    if not _MULTI:
        from pydicom.multival import MultiValue

        _MULTI = (MultiValue, list, tuple)
    return isinstance(value, _MULTI)


class _Encoder:
    def __init__(self) -> None:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
        from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

        self._bytes_io = DicomBytesIO
        self._correct = correct_ambiguous_vr_element
        self._write_element = write_data_element
        self._long = {str(v) for v in EXPLICIT_VR_LENGTH_32}
        self._items: dict[tuple[int, str], tuple[Any, bytes]] = {}

    # --- pydicom for what is not reproduced here --------------------------------------
    def _pydicom(self, elem: Any, encoding: Any) -> bytes:
        buf = self._bytes_io()
        buf.is_little_endian = True
        buf.is_implicit_VR = False
        self._write_element(buf, elem, encoding)
        return buf.getvalue()

    def _header(self, tag: int, vr: str, length: int) -> bytes:
        if vr in self._long:
            return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)

    # --- datasets and elements --------------------------------------------------------
    def dataset(self, ds: Any, parent_encoding: Any) -> bytes:
        charset = ds._dict.get(0x00080005)   # SpecificCharacterSet, as pydicom's write_dataset looks it up
        encoding = parent_encoding if charset is None else ds[0x00080005].value
        out = []
        for tag in sorted(ds._dict):
            if (tag & 0xFFFF) == 0 and (tag >> 16) > 6:
                continue  # retired group lengths are not written (as pydicom)
            out.append(self.element(ds, tag, encoding))
        return b"".join(out)

    def element(self, ds: Any, tag: int, encoding: Any) -> bytes:
        elem = ds._dict[tag]
        if getattr(elem, "is_raw", False):
            elem = ds[tag]  # what pydicom's writer does when it re-encodes
        vr = elem.VR
        if not vr or len(vr) != 2:
            elem = self._correct(elem, ds, True)
            vr = elem.VR
            if not vr or len(vr) != 2:
                raise _Fallback(f"ambiguous VR {vr} for {elem.tag}")
        if elem.is_buffered:
            raise _Fallback("buffered value")
        if vr == "SQ":
            return self.sequence(elem, encoding)
        value = elem.value
        if elem.is_empty:
            data = b""
        elif vr in _STRING_PAD:
            text = "\\".join(value) if _multi(value) else value
            if not isinstance(text, str) or not text.isascii():
                return self._pydicom(elem, encoding)
            if len(text) % 2:
                text += _STRING_PAD[vr]
            data = text.encode("ascii")
        elif vr in _TEXT:
            if _multi(value) or not isinstance(value, str) or not value.isascii():
                return self._pydicom(elem, encoding)
            data = (value + " " if len(value) % 2 else value).encode("ascii")
        elif vr in _NUMBER_STRINGS:
            if _multi(value):
                text = "\\".join(x.original_string if hasattr(x, "original_string") else str(x) for x in value)
            else:
                text = value.original_string if hasattr(value, "original_string") else str(value)
            if len(text) % 2:
                text += " "
            data = text.encode("iso8859")
        elif vr in _NUMBERS:
            code = _NUMBERS[vr]
            if hasattr(value, "append"):
                data = struct.pack(f"<{len(value)}{code}", *value)
            else:
                data = struct.pack("<" + code, value)
        else:
            return self._pydicom(elem, encoding)
        if elem.is_undefined_length or (vr not in self._long and len(data) > 0xFFFF):
            return self._pydicom(elem, encoding)
        return self._header(tag, vr, len(data)) + data

    def sequence(self, elem: Any, encoding: Any) -> bytes:
        body = b"".join(self.item(item, encoding) for item in elem.value)
        tag = int(elem.tag)
        if elem.is_undefined_length:
            return self._header(tag, "SQ", 0xFFFFFFFF) + body + _SEQ_END
        return self._header(tag, "SQ", len(body)) + body

    def item(self, ds: Any, encoding: Any) -> bytes:
        key = (id(ds), repr(encoding))
        hit = self._items.get(key)
        if hit is not None and hit[0] is ds:
            return hit[1]
        body = self.dataset(ds, encoding)
        if getattr(ds, "is_undefined_length_sequence_item", False):
            data = _ITEM + b"\xff\xff\xff\xff" + body + _ITEM_END
        else:
            data = _ITEM + struct.pack("<L", len(body)) + body
        self._items[key] = (ds, data)   # keeps `ds` alive, so its id is not reused meanwhile
        return data


def _preamble_and_meta(ds: Any) -> bytes:
    """pydicom's own preamble, 'DICM' and file meta for `ds` (written from a two-element shell)."""
    from pydicom.filebase import DicomBytesIO

    shell = Dataset()
    shell.file_meta = ds.file_meta
    if getattr(ds, "preamble", None) is not None:
        shell.preamble = ds.preamble
    shell.SOPClassUID = ds.SOPClassUID
    shell.SOPInstanceUID = ds.SOPInstanceUID
    buf = DicomBytesIO()
    shell.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    (group_length,) = struct.unpack_from("<L", data, 132 + 8)  # (0002,0000) UL, explicit VR
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise _Fallback("unexpected file meta layout")
    return data[: 132 + 12 + group_length]


def encode_file(ds: Any) -> Optional[list[bytes]]:
    """The DICOM file of `ds` (explicit VR little endian) as chunks of bytes to write in order,
    or None where pydicom must write it. Pixel data is a chunk of its own (never copied)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) != _EXPLICIT_LE:
        return None
    if "PixelData" in ds:
        ds["PixelData"].is_undefined_length = False  # as dcmwrite does for a native transfer syntax
    try:
        chunks = [_preamble_and_meta(ds)]
        enc = _Encoder()
        encoding = ds.get("SpecificCharacterSet", "iso8859")
        pending = []
        for tag in sorted(ds._dict):
            if (tag & 0xFFFF) == 0 and (tag >> 16) > 6:
                continue
            elem = ds._dict[tag]
            value = getattr(elem, "value", None)
            if tag == 0x7FE00010 and not getattr(elem, "is_raw", False) and len(elem.VR or "") != 2:
                elem = enc._correct(elem, ds, True)  # "OB or OW" -> OB/OW from BitsAllocated, as pydicom
            if (tag == 0x7FE00010 and not getattr(elem, "is_raw", False) and elem.VR in ("OB", "OW")
                    and isinstance(value, bytes) and len(value) % 2 == 0):
                chunks.append(b"".join(pending))
                chunks.append(enc._header(tag, elem.VR, len(value)))
                chunks.append(value)
                pending = []
            else:
                pending.append(enc.element(ds, tag, encoding))
        chunks.append(b"".join(pending))
    except Exception:  # _Fallback, or a value this encoder cannot pack: pydicom writes (and reports) it
        return None
    return chunks
