"""`napari-ssl predict`: segment a whole volume, with optional probability and uncertainty maps."""
from __future__ import annotations

HELP = "segment a volume with a fine-tuned model (labels, probabilities, uncertainty in the source geometry)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="fine-tuned model folder")
    p.add_argument("--image", required=True, metavar="PATH", help="image volume (NIfTI/NRRD file or DICOM series folder)")
    p.add_argument("--out", required=True, metavar="LABELS.nii.gz", help="output label map")
    p.add_argument("--probabilities", metavar="P.nii.gz",
                   help="also write the class probabilities: one foreground class -> its probability map; "
                        "several -> one component per class, background first (sums to 1)")
    p.add_argument("--uncertainty", metavar="U.nii.gz",
                   help="also write the voxel uncertainty (predictive entropy divided by log(classes incl. background): 0..1)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (flips, gamma) for probabilities and uncertainty")
    p.add_argument("--mc-dropout", type=int, default=0, metavar="N", help="N Monte-Carlo dropout passes (per TTA variant)")
    p.add_argument("--labels", metavar="PATH", help="the user's sparse label map on this image: its annotated slices come back exactly as drawn")
    p.add_argument("--empty-slices", metavar="LIST", help="slices annotated as empty (come back empty); with --labels")
    p.add_argument("--keep-connected", action="store_true", default=None,
                   help="with --labels: drop predicted foreground not touching the annotated labels in 3-D "
                        "(default: as the model's recipe says)")
    p.add_argument("--fill-between", action="store_true", default=None,
                   help="with --labels: between annotated slices, each class from fill between slices, the model beyond them "
                        "(default: as the model's recipe says)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--propagate", dest="propagate", action="store_true", default=None,
                   help="with --labels: beyond the outermost annotated slices, weight the model by those slices carried outward "
                        "along the image (optical flow) (default: as the model's recipe says)")
    g.add_argument("--no-propagate", dest="propagate", action="store_false", help="with --labels: do not")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help='"cpu" or "cuda" (default: cuda when available)')
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary with the per-slice uncertainty (slices along the first axis of the canonical grid, as napari shows it)")


def run(args) -> int:
    import json
    import os
    import sys

    from .. import api
    from ..data.sparse_labels import parse_index_list
    from ..errors import NapariSSLError
    from ..progress_print import slice_progress

    if (args.empty_slices or args.keep_connected or args.fill_between or args.propagate) and not args.labels:
        raise NapariSSLError("--empty-slices / --keep-connected / --fill-between / --propagate need --labels (the annotation they refer to)")
    for path in (args.out, args.probabilities, args.uncertainty):  # before minutes of prediction, not after
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if folder and not os.path.isdir(folder):
            raise NapariSSLError(f"output folder does not exist: {folder}")
    vol = api.load_volume(args.image)
    progress = slice_progress(sys.stderr)
    pred = api.predict(args.model, vol, tta=args.tta, mc_dropout=args.mc_dropout, batch_size=args.batch_size, device=args.device,
                       labels=args.labels, empty_slices=parse_index_list(args.empty_slices), keep_connected=args.keep_connected,
                       fill_between=args.fill_between, propagate=args.propagate, progress=progress)
    api.save_prediction(pred, vol, args.out, probabilities=args.probabilities, uncertainty=args.uncertainty)
    counts = {name: int((pred.labels == i + 1).sum()) for i, name in enumerate(pred.class_names)}
    if args.json:
        print(json.dumps({"out": args.out, "voxels": counts, "method": pred.method, "passes": pred.passes,
                          "classes": ["background", *pred.class_names],
                          "slice_uncertainty": [round(float(u), 5) for u in pred.slice_uncertainty]}, indent=2))
    else:
        print(f"wrote {args.out} ({', '.join(f'{k}: {v} voxels' for k, v in counts.items())}; "
              f"uncertainty from {pred.method}, {pred.passes} pass(es))")
    return 0
