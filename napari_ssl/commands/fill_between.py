"""`napari-ssl fill-between`: Slicer's "Fill between slices" on a sparse label map, no training."""
from __future__ import annotations

HELP = "complete a sparse annotation by interpolating between annotated slices (3D Slicer's Fill between slices; instant, no training)"


def add_arguments(p) -> None:
    p.add_argument("--labels", required=True, metavar="PATH", help="label map drawn on a few slices (NIfTI/NRRD/MHA or DICOM-SEG)")
    p.add_argument("--image", metavar="PATH", help="the image the labels were drawn on (needed for a DICOM-SEG; default: the label map's own grid)")
    p.add_argument("--empty-slices", default="", metavar="LIST", help="slices annotated as empty (canonical axis 0), e.g. 3,17: they stay empty")
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="output label map, in the geometry of --image (or of --labels)")


def run(args) -> int:
    from .. import api
    from ..active.predict import to_source_grid
    from ..data.sparse_labels import parse_index_list
    from ..io import write_itk_volume

    ref = api.load_volume(args.image or args.labels)
    filled = api.fill_between(args.labels, ref if args.image else None, parse_index_list(args.empty_slices))
    arr, aff = to_source_grid(filled, ref)
    write_itk_volume(arr, aff, args.out)
    print(f"wrote {args.out} ({int((filled > 0).sum())} labelled voxels)")
    return 0
