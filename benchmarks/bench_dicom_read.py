"""Read a 512x512 CT series of >= 300 slices with napari_ssl and with SimpleITK's ImageSeriesReader.

One command: ``.venv/bin/python benchmarks/bench_dicom_read.py [--slices 320] [--repeats 5] [--cases uncompressed,rle]``.

The series is built in a temporary folder from the three real CT slices of
../shared/data/dcmqi_segmentations/ct-3slice (BSD-3, dcmqi): the slices are repeated with new
SOP Instance UIDs, one new Series Instance UID, consecutive InstanceNumber and
ImagePositionPatient 1 mm apart along the normal; file names are shuffled so that neither
reader can rely on them. Case ``uncompressed`` keeps the source transfer syntax (implicit VR
little endian); case ``rle`` is the same series compressed with pydicom's RLE Lossless encoder
(reported separately; the goals apply to the uncompressed case).

Each measurement runs in a fresh subprocess. Imports (numpy, pydicom, pydicom.pixels,
SimpleITK, napari_ssl.io) are done in both readers' processes before the clock starts.
Measured: wall time of "path -> numpy array" -- napari_ssl through ``napari_ssl.io.load_volumes``
(what the napari reader calls: discovery, headers, pixels, rescale to HU, canonical order),
SimpleITK through GDCM series discovery + ``ImageSeriesReader.Execute`` + a zero-copy array
view -- and the peak resident memory added during it (Linux VmHWM reset through
/proc/self/clear_refs), compared with the size of the int16 HU volume. Readers alternate
(ABBA...), medians of the repeats are reported. Goals (issue 2): time ratio <= 1.0, napari_ssl
peak added memory <= 1.3x the volume's bytes.
Writes benchmarks/results/bench_dicom_read.json and .png.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_SSL_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
READERS = ("napari_ssl", "simpleitk")


# --- building the series ----------------------------------------------------------------------
def build_series(out: Path, n_slices: int, compress: str = "") -> None:
    import numpy as np
    import pydicom
    from pydicom.uid import RLELossless, generate_uid

    src = sorted((DATA / "dcmqi_segmentations" / "ct-3slice").glob("*.dcm"))
    templates = [pydicom.dcmread(p) for p in src]
    series_uid = generate_uid()
    iop = np.array(templates[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array(templates[0].ImagePositionPatient, float)
    names = list(range(n_slices))
    random.Random(0).shuffle(names)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_slices):
        ds = copy.deepcopy(templates[i % len(templates)])   # a deep copy: compress() edits file_meta
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = i + 1
        pos = origin + i * 1.0 * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.SliceLocation = f"{pos @ normal:.6f}"
        if compress == "rle":
            ds.compress(RLELossless)
        ds.save_as(out / f"IM{names[i]:05d}")


# --- one measurement in a fresh process -------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(reader: str, folder: str) -> dict:
    import numpy as np

    # Both readers' libraries are imported in both processes before the clock starts, so the
    # baseline RSS is the same: pydicom and its pixel decoders are imported lazily by napari_ssl.
    import pydicom  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import SimpleITK as sitk

    from napari_ssl.io import load_volumes

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    if reader == "napari_ssl":
        (vol,) = load_volumes(folder)   # what the napari reader calls: canonical order included
        arr = vol.array
    else:
        r = sitk.ImageSeriesReader()
        uid = r.GetGDCMSeriesIDs(folder)[0]
        r.SetFileNames(r.GetGDCMSeriesFileNames(folder, uid))
        img = r.Execute()
        arr = sitk.GetArrayViewFromImage(img)   # zero-copy view: the baseline's best case
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return {"reader": reader, "seconds": seconds, "peak_added_bytes": (peak - before) * 1024,
            "array_bytes": int(arr.nbytes), "dtype": str(arr.dtype), "shape": list(arr.shape),
            "checksum": float(np.asarray(arr, dtype=np.float64).sum())}


def measure(reader: str, folder: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", reader, str(folder)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_case(folder: Path, repeats: int) -> dict:
    for reader in READERS:      # warm-up: page cache and imports, not counted
        measure(reader, folder)
    runs = {r: [] for r in READERS}
    for k in range(repeats):
        order = READERS if k % 2 == 0 else READERS[::-1]
        for reader in order:
            runs[reader].append(measure(reader, folder))
    out = {}
    for reader, rs in runs.items():
        out[reader] = {
            "seconds": [r["seconds"] for r in rs],
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "peak_added_bytes": statistics.median(r["peak_added_bytes"] for r in rs),
            "array_bytes": rs[0]["array_bytes"], "dtype": rs[0]["dtype"], "shape": rs[0]["shape"],
            "checksum": rs[0]["checksum"],
        }
    ours, base = out["napari_ssl"], out["simpleitk"]
    volume_bytes = ours["array_bytes"]
    return {
        "readers": out,
        "same_values": ours["checksum"] == base["checksum"] and ours["shape"] == base["shape"],
        "time_ratio_napari_ssl_over_simpleitk": ours["median_seconds"] / base["median_seconds"],
        "napari_ssl_peak_over_volume_bytes": ours["peak_added_bytes"] / volume_bytes,
        "simpleitk_peak_over_its_array_bytes": base["peak_added_bytes"] / base["array_bytes"],
        "simpleitk_peak_over_napari_ssl_volume_bytes": base["peak_added_bytes"] / volume_bytes,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(result["cases"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for j, reader in enumerate(READERS):
        xs = [i + (j - 0.5) * width for i in range(len(cases))]
        med = [result["cases"][c]["readers"][reader]["median_seconds"] for c in cases]
        axes[0].bar(xs, med, width, label=reader)
        for x, c in zip(xs, cases):
            pts = result["cases"][c]["readers"][reader]["seconds"]
            axes[0].plot([x] * len(pts), pts, "k.", ms=3)
        mem = [result["cases"][c]["readers"][reader]["peak_added_bytes"] / result["cases"][c]["readers"]["napari_ssl"]["array_bytes"] for c in cases]
        axes[1].bar(xs, mem, width, label=reader)
    for ax in axes:
        ax.set_xticks(range(len(cases)), cases)
        ax.legend()
    axes[0].set_ylabel("seconds (median, dots = repeats)")
    axes[0].set_title(f"read {result['slices']} x 512 x 512 CT slices")
    axes[1].axhline(1.3, color="r", ls="--", lw=1)
    axes[1].set_ylabel("peak added RSS / int16 volume bytes")
    axes[1].set_title("memory (goal <= 1.3, dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", default="uncompressed,rle", help="comma list of: uncompressed, rle")
    ap.add_argument("--worker", nargs=2, metavar=("READER", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1])))
        return 0
    result = {"benchmark": "bench_dicom_read", "slices": args.slices, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
              "data": "dcmqi ct-3slice (BSD-3), repeated with new UIDs and positions", "cases": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_dicom_"))
    try:
        for case in [c for c in args.cases.split(",") if c]:
            folder = tmp / case
            t = time.perf_counter()
            build_series(folder, args.slices, compress="rle" if case == "rle" else "")
            print(f"[{case}] built {args.slices} slices in {time.perf_counter() - t:.1f}s", flush=True)
            res = run_case(folder, args.repeats)
            result["cases"][case] = res
            r = res["readers"]
            print(f"[{case}] napari_ssl {r['napari_ssl']['median_seconds']:.3f}s  simpleitk {r['simpleitk']['median_seconds']:.3f}s  "
                  f"ratio {res['time_ratio_napari_ssl_over_simpleitk']:.2f}x  "
                  f"memory napari_ssl {res['napari_ssl_peak_over_volume_bytes']:.2f}x volume, "
                  f"simpleitk {res['simpleitk_peak_over_its_array_bytes']:.2f}x its array ({r['simpleitk']['dtype']})  "
                  f"same values: {res['same_values']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_dicom_read.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "bench_dicom_read.png")
    print(f"wrote {RESULTS / 'bench_dicom_read.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
