"""`napari-ssl export-seg`: a label map as DICOM-SEG referencing its source DICOM series."""
from __future__ import annotations

import json

from .export_args import add_labels_source_out, add_rois_and_json

HELP = "export a label map (NIfTI/NRRD) as DICOM-SEG on its source DICOM series, optionally storing it on a PACS"


def add_arguments(parser) -> None:
    add_labels_source_out(parser, "label map (NIfTI/NRRD/MHA) drawn on the source series, any axis order, or an RTSTRUCT on it",
                          "the source DICOM series (folder or Enhanced multi-frame file)", "output SEG file (.dcm), written atomically")
    parser.add_argument("--names", help='segment names for label values 1, 2, ... in order, e.g. "liver,tumor"')
    parser.add_argument("--labelmap", action="store_true", help="write a LABELMAP SEG (one 8/16-bit frame per slice) instead of BINARY")
    parser.add_argument("--model", help="name of the model that produced the mask (recorded as algorithm identification)")
    parser.add_argument("--manual", action="store_true", help="the mask was drawn by hand (segment algorithm type MANUAL)")
    parser.add_argument("--description", default="napari-ssl segmentation", help="series/content description of the SEG")
    parser.add_argument("--stow", metavar="URL",
                        help="also store the SEG on this DICOMweb server (STOW-RS); credentials from the PACS config or environment")
    add_rois_and_json(parser)


def run(args) -> int:
    from ..io.export import export_labels

    if not args.out.lower().endswith((".dcm", ".seg")):
        from ..errors import NapariSSLError

        raise NapariSSLError(f"--out {args.out}: a DICOM-SEG output path ends in .dcm (use export-nifti for NIfTI)")
    summary = export_labels(
        args.labels,
        args.source,
        args.out,
        names=args.names,
        labelmap=args.labelmap,
        model=args.model,
        stow_url=args.stow,
        algorithm_type="MANUAL" if args.manual else None,
        series_description=args.description,
        rois=args.rois,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        segs = ", ".join(f"{k}={v}" for k, v in summary["segments"].items())
        print(f"wrote {summary['path']}: {summary['segmentation_type']} SEG, {summary['frames']} frames, segments {segs}")
        for w in summary.get("warnings", []):
            print(f"warning: {w}")
        if summary.get("stored_to"):
            print(f"stored on {summary['stored_to']}")
    return 0
