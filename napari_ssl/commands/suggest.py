"""`napari-ssl suggest`: which unannotated slices to annotate next (in one scan or over several)."""
from __future__ import annotations

HELP = "the unannotated slices to annotate next: in one scan where the completed result is most likely wrong; over several, typical look-alike groups"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR",
                   help="fine-tuned model folder; or a pretrained encoder folder (napari-ssl pretrain) for the first picks before any model exists")
    p.add_argument("--image", required=True, action="append", metavar="PATH",
                   help="image volume; repeat to rank the slices of several scans together")
    p.add_argument("--labels", action="append", metavar="PATH",
                   help="current label map of the (matching) --image: its annotated slices are never suggested; repeat per --image")
    p.add_argument("--empty-slices", action="append", metavar="LIST",
                   help="slices already annotated as empty (e.g. 3,17); repeat per --image")
    p.add_argument("-n", type=int, default=5, help="how many slices (default 5)")
    p.add_argument("--min-distance", type=int, help="minimum spacing in slices between suggestions in one scan (default: depth / (2 n), at least 2)")
    p.add_argument("--depth-spacing", type=float, metavar="F",
                   help="with several --image: picks in different scans keep F apart in relative depth (slice / depth; default 0.5 / n, 0 = off)")
    p.add_argument("--encoder", metavar="DIR", help="with several --image: the pretrained encoder whose slice embedding the default "
                                                    "ranking (typiclust) uses (default: --model's encoder)")
    p.add_argument("--score", choices=("expected-error", "gap", "typiclust", "foreground-entropy", "entropy"),
                   help="how a slice is ranked. One --image: expected-error (default: where the completed result - the model, the drawn slices "
                        "and the interpolation between them - is most likely wrong, benchmarks/bench_next_slice.py), gap (middle of the largest "
                        "unannotated stretch of the predicted structure), or the uncertainty scores. Several --image: typiclust (default: the "
                        "most typical slice of each group of look-alike slices not yet annotated, one per scan), foreground-entropy "
                        "(entropy x P(structure)) or entropy")
    p.add_argument("--no-tta", action="store_true", help="single-pass uncertainty (faster, less informative)")
    p.add_argument("--mc-dropout", type=int, default=0, metavar="N", help="N Monte-Carlo dropout passes (per TTA variant)")
    p.add_argument("--device", help='"cpu" or "cuda" (default: cuda when available)')
    p.add_argument("--json", action="store_true",
                   help="print JSON: {\"suggestions\": [{rank, slice, score, reason[, uncertainty, min_distance, volume, image]}]}")


def run(args) -> int:
    import json

    from .. import api
    from ..data.sparse_labels import parse_index_list
    from ..errors import NapariSSLError

    images = list(args.image)
    labels = list(args.labels or [])
    empties = [parse_index_list(e) for e in (args.empty_slices or [])]
    if labels and len(labels) != len(images):
        raise NapariSSLError(f"{len(images)} --image but {len(labels)} --labels; give one --labels per --image (or none)")
    if empties and len(empties) != len(images):
        raise NapariSSLError(f"{len(images)} --image but {len(empties)} --empty-slices; give one per --image (or none)")
    if args.n < 1:
        raise NapariSSLError("-n must be at least 1")
    cold = api._is_pretrained_encoder(args.model)
    if len(images) == 1 and not cold:
        picks = api.suggest(args.model, images[0], labels[0] if labels else None, n=args.n, min_distance=args.min_distance,
                            empty_slices=empties[0] if empties else (), tta=not args.no_tta, mc_dropout=args.mc_dropout,
                            device=args.device, score=args.score)
    else:
        if args.score in ("expected-error", "gap"):
            raise NapariSSLError(f"--score {args.score} ranks the slices of one scan; with several --image use foreground-entropy or entropy")
        if cold and args.score not in (None, "typiclust"):
            raise NapariSSLError("a pretrained encoder ranks by typicality (cold start); --score needs a fine-tuned model")
        picks = api.suggest_pool(args.model, images, labels or None, n=args.n, min_distance=args.min_distance, depth_spacing=args.depth_spacing,
                                 empty_slices=empties or None, encoder=args.encoder,
                                 tta=not args.no_tta, mc_dropout=args.mc_dropout, device=args.device, score=args.score)
        for p in picks:
            p["image"] = images[p["volume"]]
    if args.json:
        print(json.dumps({"suggestions": picks}, indent=2))
    else:
        if not picks:
            print("every slice is annotated; nothing to suggest")
        for p in picks:
            where = f"{p['image']} " if "image" in p else ""
            if "reason" in p:
                print(f"{p['rank']}. {where}slice {p['slice']}  {p['reason']}")
            else:
                print(f"{p['rank']}. {where}slice {p['slice']}  {args.score or 'foreground-entropy'} {p['uncertainty']:.4f}")
    return 0
