"""`napari-ssl export-nifti`: a label map (NIfTI/NRRD or DICOM-SEG) as NIfTI in its source's geometry."""
from __future__ import annotations

import json

from .export_args import add_labels_source_out, add_rois_and_json

HELP = "export a label map (NIfTI/NRRD or DICOM-SEG) as NIfTI/NRRD in the geometry and slice order of its source series"


def add_arguments(parser) -> None:
    add_labels_source_out(parser, "label map (NIfTI/NRRD/MHA), a DICOM-SEG or an RTSTRUCT file",
                          "the source series (DICOM folder/file or NIfTI) whose geometry the output takes",
                          "output .nii.gz/.nii/.nrrd/.mha, written atomically")
    add_rois_and_json(parser)


def run(args) -> int:
    from ..io.export import export_labels

    summary = export_labels(args.labels, args.source, args.out, rois=args.rois)
    print(json.dumps(summary, indent=2) if args.json else f"wrote {summary['path']}")
    return 0
