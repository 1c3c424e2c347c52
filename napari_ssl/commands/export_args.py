"""The arguments `export-seg` and `export-nifti` share: the label map, its source series, the output, RTSTRUCT ROIs."""
from __future__ import annotations


def add_labels_source_out(parser, labels_help: str, source_help: str, out_help: str) -> None:
    parser.add_argument("--labels", required=True, help=labels_help)
    parser.add_argument("--source", required=True, help=source_help)
    parser.add_argument("--out", required=True, help=out_help)


def add_rois_and_json(parser) -> None:
    parser.add_argument("--rois", help="RTSTRUCT labels: the ROIs to take, in order (label values 1, 2, ...; later ones win where they overlap), "
                                       'e.g. "liver,urinary_bladder"')
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
