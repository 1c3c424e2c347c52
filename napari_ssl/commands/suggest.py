"""`napari-ssl suggest`: which unannotated slices to annotate next."""
from __future__ import annotations

HELP = "rank the unannotated slices by model uncertainty, spread apart, to annotate next"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="fine-tuned model folder")
    p.add_argument("--image", required=True, metavar="PATH", help="image volume")
    p.add_argument("--labels", metavar="PATH", help="current label map: its annotated slices are never suggested")
    p.add_argument("--empty-slices", metavar="LIST", help="slices already annotated as empty (e.g. 3,17)")
    p.add_argument("-n", type=int, default=5, help="how many slices (default 5)")
    p.add_argument("--min-distance", type=int, help="minimum spacing in slices between suggestions (default: depth / (2 n), at least 2)")
    p.add_argument("--no-tta", action="store_true", help="single-pass uncertainty (faster, less informative)")
    p.add_argument("--mc-dropout", type=int, default=0, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import json

    from .. import api
    from ..data.sparse_labels import parse_index_list

    vol = api.load_volume(args.image)
    picks = api.suggest(args.model, vol, args.labels, n=args.n, min_distance=args.min_distance,
                        empty_slices=parse_index_list(args.empty_slices), tta=not args.no_tta, mc_dropout=args.mc_dropout)
    if args.json:
        print(json.dumps({"suggestions": picks}, indent=2))
    else:
        if not picks:
            print("every slice is annotated; nothing to suggest")
        for p in picks:
            print(f"{p['rank']}. slice {p['slice']}  uncertainty {p['uncertainty']:.4f}")
    return 0
