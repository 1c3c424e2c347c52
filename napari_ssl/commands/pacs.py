"""`napari-ssl pacs studies|series|pull URL ...`: a PACS over DICOMweb.

Credentials come from $NAPARI_SSL_PACS_CONFIG (or ~/.config/napari-ssl/pacs.json) or the
environment (NAPARI_SSL_PACS_USER/PASSWORD or NAPARI_SSL_PACS_TOKEN), never from arguments.
Listings show UIDs, dates, modalities and descriptions, never patient names or IDs.
"""
from __future__ import annotations

import json
import os

HELP = "list studies/series on a DICOMweb PACS and pull a series (credentials from config/environment)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)
    st = sub.add_parser("studies", help="list studies (QIDO-RS)")
    st.add_argument("url", help="DICOMweb base URL, e.g. https://pacs.example.org/dicom-web")
    st.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                    help="QIDO filter, e.g. ModalitiesInStudy=CT, StudyDate=20240101-20241231 (repeatable)")
    st.add_argument("--limit", type=int, help="at most this many results")
    st.add_argument("--json", action="store_true", help="print JSON")
    se = sub.add_parser("series", help="list the series of a study (QIDO-RS)")
    se.add_argument("url")
    se.add_argument("--study", help="StudyInstanceUID (all series if omitted)")
    se.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="QIDO filter, e.g. Modality=CT (repeatable)")
    se.add_argument("--limit", type=int)
    se.add_argument("--json", action="store_true")
    pu = sub.add_parser("pull", help="retrieve a series (WADO-RS) into a folder, one <SOPInstanceUID>.dcm per instance")
    pu.add_argument("url")
    pu.add_argument("--series", required=True, help="SeriesInstanceUID")
    pu.add_argument("--study", help="StudyInstanceUID (looked up if omitted)")
    pu.add_argument("--out", required=True, help="output folder")
    pu.add_argument("--json", action="store_true")


def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else (",".join(map(str, r[c])) if isinstance(r[c], list) else str(r[c]))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def run(args) -> int:
    from ..io import pacs

    if args.pacs_command == "studies":
        rows = pacs.search_studies(args.url, pacs.parse_filters(args.filter), limit=args.limit)
        print(json.dumps(rows, indent=2) if args.json else _table(
            rows, ["StudyInstanceUID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "StudyDescription"]))
    elif args.pacs_command == "series":
        rows = pacs.search_series(args.url, args.study, pacs.parse_filters(args.filter), limit=args.limit)
        print(json.dumps(rows, indent=2) if args.json else _table(
            rows, ["SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances", "SeriesDescription"]))
    elif args.pacs_command == "pull":
        paths = pacs.retrieve_series(args.url, args.series, args.out, study_instance_uid=args.study)
        summary = {"series_instance_uid": args.series, "folder": os.path.abspath(args.out), "instances": len(paths)}
        print(json.dumps(summary, indent=2) if args.json else f"pulled {len(paths)} instance(s) of series {args.series} into {args.out}")
    return 0
