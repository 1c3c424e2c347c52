"""`napari-ssl export-nifti`: a label map (NIfTI/NRRD or DICOM-SEG) as NIfTI in its source's geometry."""
from __future__ import annotations

import json

HELP = "export a label map (NIfTI/NRRD or DICOM-SEG) as NIfTI/NRRD in the geometry and slice order of its source series"


def add_arguments(parser) -> None:
    parser.add_argument("--labels", required=True, help="label map (NIfTI/NRRD/MHA), a DICOM-SEG or an RTSTRUCT file")
    parser.add_argument("--source", required=True, help="the source series (DICOM folder/file or NIfTI) whose geometry the output takes")
    parser.add_argument("--out", required=True, help="output .nii.gz/.nii/.nrrd/.mha, written atomically")
    parser.add_argument("--rois", help='RTSTRUCT labels: the ROIs to take, in order (label values 1, 2, ...; later ones win where they overlap), e.g. "liver,urinary_bladder"')
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    from ..io.export import export_labels

    summary = export_labels(args.labels, args.source, args.out, rois=args.rois)
    print(json.dumps(summary, indent=2) if args.json else f"wrote {summary['path']}")
    return 0
