"""`napari-ssl deidentify`: a de-identified copy of DICOM series with their SEG / RTSTRUCT (napari_ssl.io.dicom.deid)."""
from __future__ import annotations

import json

HELP = "write a de-identified copy (DICOM PS3.15 Basic Profile, keyed pseudonyms) of DICOM series and their SEG/RTSTRUCT"


def add_arguments(parser) -> None:
    parser.add_argument("src", nargs="+", metavar="SRC", help="DICOM files or folders of ONE patient: image series and the SEG/RTSTRUCT made on them")
    parser.add_argument("--out", required=True, help="new output folder (must not exist or be empty); appears complete or not at all")
    parser.add_argument("--key-file", metavar="PATH", help="file holding the pseudonym key (else $NAPARI_SSL_DEID_KEY or $NAPARI_SSL_DEID_KEY_FILE); "
                        "the same key gives the same pseudonyms, so later studies of a patient stay linked. The key is never written out")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="also write images declaring BurnedInAnnotation YES (not marked as de-identified)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    from ..io.dicom.deid import deidentify

    summary = deidentify(args.src, args.out, key_file=args.key_file, allow_burned_in=args.allow_burned_in)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        mods = ", ".join(f"{n} {m}" for m, n in summary["modalities"].items())
        print(f"wrote {summary['out']}: {summary['files']} files ({mods}) in {summary['series']} series; key: {summary['key']}")
    return 0
