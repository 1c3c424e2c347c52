"""De-identified copy of DICOM series with their SEG / RTSTRUCT (DICOM PS3.15 Basic Application Level
Confidentiality Profile).

Two maintained sources do the work, no tag list is written here:
  * **dicognito** (keyed ``Anonymizer(seed=key)``) replaces every UID, person name, ID, address,
    equipment identity and shifts every date/time by one offset, all derived from the key: the same
    key gives the same pseudonyms in every run, so a later study of one patient stays linked, and UIDs
    are remapped identically in the images and in the SEG/RTSTRUCT that reference them.
  * **dicom-anonymizer** ships PS3.15 Table E.1-1 as data (its newest ``dicomfields_*`` module). Every
    attribute the table lists that dicognito left unchanged gets the table's action: X removed, Z emptied,
    D given a dummy value, combinations (X/Z, X/D, X/Z/D, X/Z/U*) kept only when dicognito already replaced
    the value (sequences of references keep their remapped UIDs), else emptied (Z) or removed.
Options used (also written into DeidentificationMethodCodeSequence): Basic Profile (113100) and Retain
Longitudinal Temporal Information with Modified Dates (113107: dates shifted, intervals kept). Private
attributes are removed (the profile's default; no Retain Safe Private option). PatientIdentityRemoved
is YES; an image with BurnedInAnnotation YES is refused (``allow_burned_in`` writes it with
PatientIdentityRemoved NO and a warning).

The key (pseudonym seed) comes from ``key``, a key file or ``$NAPARI_SSL_DEID_KEY`` /
``$NAPARI_SSL_DEID_KEY_FILE``; it is never written out nor logged. Without a key the pseudonyms are
random (not linkable across runs) and the summary says so. One patient per run: a source holding several
patients is refused. The output folder appears complete or not at all (written beside it, then renamed).
"""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import shutil
import tempfile
from typing import Any, Optional, Sequence

from ...errors import NapariSSLError

log = logging.getLogger(__name__)

KEY_ENV = "NAPARI_SSL_DEID_KEY"
KEY_FILE_ENV = "NAPARI_SSL_DEID_KEY_FILE"
_ACTIONS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
            "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}


# --- the profile's table ----------------------------------------------------------------------
def basic_profile_table() -> tuple[str, dict[int, str], list[tuple[int, int, int, int, str]]]:
    """(edition, {tag: action}, [(group, element, group mask, element mask, action)]) of PS3.15 Table E.1-1
    as shipped by dicom-anonymizer (its newest edition)."""
    import dicomanonymizer.dicom_anonymization_databases as dbs

    editions = sorted(m.name for m in pkgutil.iter_modules(dbs.__path__) if m.name.startswith("dicomfields_"))
    if not editions:
        raise NapariSSLError("dicom-anonymizer ships no PS3.15 table; reinstall it")
    mod = importlib.import_module(f"{dbs.__name__}.{editions[-1]}")
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for attr, action in _ACTIONS.items():
        for t in getattr(mod, attr, []):
            if len(t) == 2:
                exact.setdefault((t[0] << 16) | t[1], action)
            else:
                masked.append((t[0], t[1], t[2], t[3], action))
    return editions[-1].replace("dicomfields_", ""), exact, masked


def action_for(tag: int, exact: dict[int, str], masked) -> Optional[str]:
    a = exact.get(int(tag))
    if a is not None:
        return a
    g, e = int(tag) >> 16, int(tag) & 0xFFFF
    for mg, me, gm, em, action in masked:
        if (g & gm) == mg and (e & em) == me:
            return action
    return None


# --- the key --------------------------------------------------------------------------------
def load_key(key: Optional[str] = None, key_file: Optional[str] = None) -> tuple[Optional[str], str]:
    """(key, where it came from). Never logs or returns the key's text anywhere but the first item."""
    if key:
        return key, "argument"
    path = key_file or os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read().strip()
        except OSError as exc:
            raise NapariSSLError(f"cannot read the key file {path} ({exc.strerror})") from None
        if not text:
            raise NapariSSLError(f"the key file {path} is empty")
        return text, "key file"
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return env, f"${KEY_ENV}"
    return None, "none (random pseudonyms, not linkable across runs)"


# --- one dataset ------------------------------------------------------------------------------
def _dummy(elem) -> Any:
    vr = elem.VR
    if vr in ("DA",):
        return "19000101"
    if vr == "TM":
        return "000000"
    if vr == "DT":
        return "19000101000000"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "UV", "SV"):
        return 0
    if vr == "CS":
        return "ANONYMIZED"
    if vr in ("OB", "OW", "OF", "OD", "OL", "UN"):
        return b"\x00\x00"
    return "ANONYMIZED"


def deidentify_dataset(ds, anonymizer, randomizer, table) -> list[str]:
    """De-identify `ds` in place (see module doc); returns notes (e.g. burned-in annotation).
    `randomizer`: a dicognito Randomizer with the anonymizer's seed (a UID left in another VR maps alike)."""
    _edition, exact, masked = table
    before: dict[int, tuple[Any, Any]] = {}

    def remember(_ds, elem):
        if action_for(elem.tag, exact, masked) is not None:
            before[id(elem)] = (elem, _copy_value(elem))

    ds.walk(remember)
    anonymizer.anonymize(ds)
    to_delete: list[tuple[Any, int]] = []

    def apply(parent, elem):
        action = action_for(elem.tag, exact, masked)
        if action is not None and _apply_action(elem, action, before.get(id(elem)), randomizer):
            to_delete.append((parent, elem.tag))

    ds.walk(apply)
    for parent, tag in to_delete:
        if tag in parent:
            del parent[tag]
    ds.remove_private_tags()
    return _mark_deidentified(ds)


def _apply_action(elem, action: str, seen: Optional[tuple[Any, Any]], randomizer) -> bool:
    """The table's `action` on an element dicognito may have changed already (`seen`: it and its value before);
    True when the element is to be removed."""
    import pydicom

    changed = seen is None or _copy_value(elem) != seen[1]
    empty = elem.value is None or (not isinstance(elem.value, (int, float)) and len(elem.value) == 0)
    if action == "X":
        return True
    if elem.VR == "SQ":
        if action in ("X/Z/U*", "D", "U"):
            return False  # references / content: kept, their UIDs and names replaced inside
        if action in ("Z", "Z/D"):
            elem.value = pydicom.Sequence([])
            return False
        return True  # X/Z, X/D, X/Z/D: removed (an empty sequence is invalid where the sequence is optional)
    if changed or empty:
        return False  # replaced by a pseudonym / shifted date, or nothing there
    if action == "U":
        elem.value = "2." + str(10**39 + randomizer.to_int(str(elem.value)))  # dicognito's own UID formula
    elif "D" in action:  # D, Z/D, X/D, X/Z/D: a dummy is valid whatever the attribute's type
        elem.value = _dummy(elem)
    else:  # Z, X/Z, X/Z/U*: emptied (valid for type 2 and 3)
        elem.value = None if elem.VR in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV") else ""
    return False


def _mark_deidentified(ds) -> list[str]:
    """PatientIdentityRemoved (NO with burned-in annotation) and the de-identification method; returns notes."""
    import pydicom
    from pydicom.sr.codedict import codes

    notes = []
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper() == "YES"
    ds.PatientIdentityRemoved = "NO" if burned else "YES"
    if burned:
        notes.append("burned-in annotation")
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = ["PS3.15 Basic Application Confidentiality Profile",
                                 "Retain Longitudinal Temporal Info Modified Dates",
                                 "napari-ssl deidentify (dicognito, PS3.15 E.1-1)"]
    seq = []
    for code in (codes.DCM.BasicApplicationConfidentialityProfile, codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption):
        item = pydicom.Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
        seq.append(item)
    ds.DeidentificationMethodCodeSequence = pydicom.Sequence(seq)
    return notes


def _copy_value(elem) -> Any:
    """A comparable snapshot of an element's value (sequences by identity: their items are walked)."""
    from pydicom.multival import MultiValue

    v = elem.value
    if elem.VR == "SQ":
        return id(v)
    return list(v) if isinstance(v, (list, MultiValue)) else v


# --- a folder ---------------------------------------------------------------------------------
def _dicom_files(paths: Sequence[str]) -> tuple[list[str], int]:
    from .discovery import iter_files

    files, skipped = [], 0
    for p in paths:
        if not os.path.exists(p):
            raise NapariSSLError(f"no such file or folder: {p}")
        for f in ([p] if os.path.isfile(p) else iter_files(p)):
            try:
                with open(f, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                skipped += 1
                continue
            if head[128:132] == b"DICM" and os.path.basename(f).upper() != "DICOMDIR":  # a DICOMDIR indexes the original files
                files.append(f)
            else:
                skipped += 1
    return sorted(dict.fromkeys(files)), skipped


def deidentify(sources: Sequence[str], out_dir: str, key: Optional[str] = None, key_file: Optional[str] = None,
               allow_burned_in: bool = False) -> dict[str, Any]:
    """Write a de-identified copy of every DICOM file under `sources` into the new folder `out_dir`
    (``NN_MODALITY/NNNNN.dcm``: no original file names, which may carry identity). Returns a summary
    without identifiers. Raises NapariSSLError (nothing written) for bad input."""
    from dicognito.anonymizer import Anonymizer
    from dicognito.randomizer import Randomizer

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise NapariSSLError(f"--out {out_dir} already exists and is not empty; give a new folder")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise NapariSSLError(f"output folder's parent does not exist: {parent}")
    files, skipped = _dicom_files([os.fspath(s) for s in sources])
    if not files:
        raise NapariSSLError(f"no DICOM file under {', '.join(map(str, sources))}")
    headers = _checked_headers(files, allow_burned_in)   # before anything is written

    key_text, key_source = load_key(key, key_file)
    seed = key_text if key_text else os.urandom(20).hex()
    table = basic_profile_table()
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-deid-")
    try:
        n_series, modalities, notes = _write_copies(files, headers, tmp, Anonymizer(seed=seed), Randomizer(seed), table)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not key_text:
        log.warning("no de-identification key ($%s or a key file): pseudonyms are random and will differ next run", KEY_ENV)
    if notes:
        log.warning("%d file(s) with burned-in annotation written, marked PatientIdentityRemoved NO", len(notes))
    return {
        "out": out_dir,
        "files": len(files),
        "series": n_series,
        "modalities": modalities,
        "skipped_non_dicom": skipped,
        "profile": "PS3.15 Basic Application Level Confidentiality Profile (113100) + Retain Longitudinal Temporal "
                   "Information with Modified Dates (113107); private attributes removed",
        "table": f"PS3.15 Table E.1-1, edition {table[0]} (dicom-anonymizer)",
        "key": key_source,
        "burned_in_written": len(notes),
    }


def _checked_headers(files: list[str], allow_burned_in: bool) -> list:
    """The headers of `files`; one-line errors for unreadable or truncated files, several patients, or
    burned-in annotation (unless allowed)."""
    from .discovery import is_truncated, read_header

    headers = []
    for f in files:
        try:
            hd = read_header(f)
        except Exception as exc:
            raise NapariSSLError(f"{os.path.basename(f)} is not a readable DICOM file ({type(exc).__name__}); nothing written") from None
        size = os.path.getsize(f)
        cut_pixels = hd.has_pixels and hd.pixel_length not in (None, 0xFFFFFFFF) and hd.pixel_offset + hd.pixel_length > size
        if is_truncated(hd, size) or cut_pixels:
            raise NapariSSLError(f"{os.path.basename(f)} cannot be read completely (the file is truncated); nothing written")
        headers.append(hd.ds)
    patients = {(str(h.get("PatientID", "")), str(h.get("PatientName", ""))) for h in headers}
    if len(patients) > 1:
        raise NapariSSLError(f"the source holds files of {len(patients)} different patients; de-identify one patient per run "
                             "(a folder per patient) so that each keeps their own pseudonyms; nothing written")
    burned = [f for f, h in zip(files, headers) if str(h.get("BurnedInAnnotation", "") or "").upper() == "YES"]
    if burned and not allow_burned_in:
        raise NapariSSLError(f"{len(burned)} image(s) declare BurnedInAnnotation YES (text in the pixels that this tool cannot remove); "
                             "nothing written (allow_burned_in / --allow-burned-in writes them, not marked as de-identified)")
    return headers


def _write_copies(files: list[str], headers: list, folder: str, anonymizer, randomizer, table) -> tuple[int, dict[str, int], list[str]]:
    """Each file de-identified into ``folder/NN_MODALITY/NNNNN.dcm`` (series folders in the order of their
    first file); (number of series, files per modality, notes)."""
    import pydicom

    series_index: dict[str, int] = {}
    counters: dict[int, int] = {}
    modalities: dict[str, int] = {}
    notes: list[str] = []
    for f, h in zip(files, headers):
        suid = str(h.get("SeriesInstanceUID", "") or f"no-series:{os.path.dirname(f)}")
        si = series_index.setdefault(suid, len(series_index) + 1)
        counters[si] = counters.get(si, 0) + 1
        try:
            ds = pydicom.dcmread(f)
            _ = ds.get("PixelData")  # read it all now: a truncated file fails here, not half-written
        except Exception as exc:
            raise NapariSSLError(f"{os.path.basename(f)} cannot be read completely ({type(exc).__name__}); nothing written") from None
        modality = "".join(ch for ch in str(ds.get("Modality", "OT") or "OT") if ch.isalnum())[:8] or "OT"
        notes += deidentify_dataset(ds, anonymizer, randomizer, table)
        sub = os.path.join(folder, f"{si:02d}_{modality}")
        os.makedirs(sub, exist_ok=True)
        ds.save_as(os.path.join(sub, f"{counters[si]:05d}.dcm"), enforce_file_format=True)
        modalities[modality] = modalities.get(modality, 0) + 1
    return len(series_index), modalities, notes
