"""Export a 3-class mask on a 512x512 CT series of >= 300 slices as DICOM-SEG, timed against reading that series.

One command: ``.venv/bin/python benchmarks/bench_seg_export.py [--slices 320] [--repeats 5]``.

The series is built by ``bench_dicom_read.build_series`` (three real dcmqi CT slices, BSD-3,
repeated with new UIDs and positions 1 mm apart). The mask is thresholded HU structures on
sub-ranges of slices, as a user or a model would produce: 1 = bone (HU >= 300) on slices
10%-75%, 2 = soft tissue (20..80 HU) on 30%-60%, 3 = lung/airway (-950..-500 HU) on 45%-85%;
the other slices are empty (BINARY SEGs omit empty frames, as the product does).

Measured, each in a fresh subprocess with imports (numpy, pydicom, pydicom.pixels, highdicom,
napari_ssl.io, napari_ssl.io.seg.write) done before the clock starts:
  * ``read``: ``napari_ssl.io.load_volumes(folder)`` (what the napari reader calls);
  * ``export_binary`` / ``export_labelmap``: ``napari_ssl.io.export.export_labels(mask, volume,
    out.dcm, labels_affine=volume.affine, names=...)`` -- exactly what the Export widget's job runs
    (the mask in the viewer's canonical order, the Volume from the reader) -- from the in-memory
    Volume to the SEG file on disk. The volume is read before the clock starts.
    Inside the clock, as in the product's first export in a napari session: checking and reordering
    the mask, every first-in-process cost of the export itself (napari_ssl.io.seg.highdicom_fast.module_table installing
    highdicom's DICOM-standard attribute table, memory-mapped and parsed per module as highdicom asks
    for it; highdicom's other standard tables), building the SEG (highdicom's constructor on the first
    and last labelled slice, the per-frame part by napari_ssl), encoding it and writing it
    (temporary file + rename). Not inside: the imports listed above, reading the series, making
    the mask, and highdicom's read-side frame index of the returned object (built on first read,
    which the product's write and STOW paths never do).
As the Export widget runs it (issue 12): ``widget_binary`` / ``widget_labelmap`` time the same export
through the widget's machinery, from the button's job start to its terminal event: a
``napari_ssl.train.runner.JobRunner`` (the process behind the widget's QtJob) running
``napari_ssl.train.jobs:export_job`` in a spawned child at the widget's niceness (+10, as
``default_nice``), polled every 50 ms as the QtJob's timer does, with the widget's config (a copy of
the mask, the reader's Volume with its voxels and source headers). Inside that clock, beyond the
in-process export: the child process start, the transfer of the mask and the Volume (pickled through
the pipe), the child's first imports, the polling. ``widget_probe`` splits those costs with probe
jobs in the same machinery: a child given nothing (process start), a child given the widget's config
(start + transfer), and the child's imports of the export path (timed inside the child).
Order alternates (tasks / reversed); medians of the repeats are reported, as wall
time (the goal's measure) and as process CPU time (all threads; less sensitive to other jobs
sharing the machine). The 1-minute load average is recorded before and after the timed runs. Goal (issue 6): BINARY export time <= 1.0x the
read time; LABELMAP reported separately.

Once, outside the timing, each SEG is read back with highdicom
(``Segmentation.get_pixels_by_source_instance`` over the source SOP Instance UIDs, segments
combined) and compared voxel by voxel with the mask on the source grid.
Writes benchmarks/results/bench_seg_export.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dicom_read import build_series  # noqa: E402  (the same series builder)

RESULTS = REPO / "benchmarks" / "results"
TASKS = ("read", "export_binary", "export_labelmap", "widget_binary", "widget_labelmap")
WIDGET_POLL_S = 0.05   # the QtJob timer's interval


def probe_job(config, events, stop_event):
    """Runs in the child: report when it was entered, then time the export path's first imports."""
    entered = time.time()
    t0 = time.perf_counter()
    _imports()
    import napari_ssl.train.jobs  # noqa: F401
    events({"type": "probe", "entered": entered, "imports_seconds": time.perf_counter() - t0})
    return None


def _widget_config(vol, mask, out, labelmap):
    import numpy as np

    # what ExportWidget.build_config hands to the job
    return {"labels": np.array(mask, copy=True), "source": vol, "out_path": out, "labels_affine": vol.affine,
            "names": {i + 1: n for i, n in enumerate(NAMES)}, "labelmap": labelmap}


def _run_job(target, config):
    from napari_ssl.train.runner import JobRunner

    nice = max(0, int(os.environ.get("NAPARI_SSL_JOB_NICE", "10")))   # as _napari.job_runner.default_nice
    events = []
    t0 = time.time()
    runner = JobRunner(target, config, label="Export", nice=nice).start()
    res = runner.wait(on_event=events.append, interval=WIDGET_POLL_S)
    seconds = time.time() - t0
    if res is None or res.get("type") != "done":
        raise RuntimeError(f"job {target} failed: {res}")
    return seconds, t0, events
NAMES = ["bone", "soft tissue", "lung"]


def make_mask(hu):
    """3-class uint8 mask from HU thresholds on sub-ranges of slices (z is the first axis)."""
    import numpy as np

    n = hu.shape[0]
    mask = np.zeros(hu.shape, np.uint8)
    z = np.arange(n)[:, None, None]

    def rng(a, b):
        return (z >= int(a * n)) & (z < int(b * n))

    mask[(hu >= 300) & rng(0.10, 0.75)] = 1
    mask[(hu >= 20) & (hu <= 80) & rng(0.30, 0.60)] = 2
    mask[(hu >= -950) & (hu <= -500) & rng(0.45, 0.85)] = 3
    return mask


def _imports():
    import highdicom  # noqa: F401
    import numpy  # noqa: F401
    import pydicom  # noqa: F401
    import pydicom.pixels  # noqa: F401

    import napari_ssl.io  # noqa: F401
    import napari_ssl.io.export  # noqa: F401
    import napari_ssl.io.seg.write  # noqa: F401


def worker(task: str, folder: str, out_dir: str) -> dict:
    _imports()
    from napari_ssl.io import load_volumes
    from napari_ssl.io.export import export_labels

    if task == "read":
        t0, c0 = time.perf_counter(), time.process_time()
        (vol,) = load_volumes(folder)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"task": task, "seconds": seconds, "cpu_seconds": cpu, "shape": list(vol.shape)}
    (vol,) = load_volumes(folder)
    mask = make_mask(vol.array)
    out = os.path.join(out_dir, f"{task}.dcm")
    if task == "widget_probe":
        me = "bench_seg_export:probe_job"
        empty, t_empty, ev_empty = _run_job(me, {})
        full, t_full, ev_full = _run_job(me, _widget_config(vol, mask, out, False))
        start = ev_empty[0]["entered"] - t_empty
        start_transfer = ev_full[0]["entered"] - t_full
        return {"task": task, "seconds": full, "process_start_seconds": start,
                "transfer_seconds": start_transfer - start, "child_imports_seconds": ev_full[0]["imports_seconds"],
                "volume_mbytes": vol.array.nbytes / 1e6, "mask_mbytes": mask.nbytes / 1e6}
    if task.startswith("widget_"):
        cfg = _widget_config(vol, mask, out, task == "widget_labelmap")
        c0 = time.process_time()
        seconds, _, events = _run_job("napari_ssl.train.jobs:export_job", cfg)
        summary = next(e["summary"] for e in events if e.get("type") == "exported")
        return {"task": task, "seconds": seconds, "cpu_seconds": time.process_time() - c0,   # parent CPU only
                "frames": summary["frames"], "bytes": os.path.getsize(out), "segmentation_type": summary["segmentation_type"],
                "path": out}
    t0, c0 = time.perf_counter(), time.process_time()
    summary = export_labels(mask, vol, out, labels_affine=vol.affine, names=NAMES, labelmap=task == "export_labelmap")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"task": task, "seconds": seconds, "cpu_seconds": cpu, "frames": summary["frames"], "bytes": os.path.getsize(out),
            "segmentation_type": summary["segmentation_type"], "path": out}


def measure(task: str, folder: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, str(folder), str(out_dir)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"{task} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def verify(folder: Path, seg_path: str) -> dict:
    """Read the SEG back with highdicom and compare with the mask on the source grid."""
    import highdicom as hd
    import numpy as np

    from napari_ssl.io import load_volumes
    from napari_ssl.io.label_grid import labels_on_source_grid

    (vol,) = load_volumes(str(folder))
    mask = make_mask(vol.array)
    expected = np.asarray(labels_on_source_grid(mask, vol, vol.affine))   # native order = source_datasets order
    uids = [str(ds.SOPInstanceUID) for ds in vol.source_datasets]
    seg = hd.seg.segread(seg_path)
    got = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3], combine_segments=True, relabel=False)
    counts = {str(v): int((expected == v).sum()) for v in (1, 2, 3)}
    return {"identical": bool(got.shape == expected.shape and np.array_equal(got, expected)),
            "voxels_per_class": counts,
            "nonempty_slices": int(np.any(expected > 0, axis=(1, 2)).sum()), "slices": int(expected.shape[0]),
            "sop_class_uid": str(seg.SOPClassUID)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    med = [result["tasks"][t]["median_seconds"] for t in TASKS]
    colors = ["tab:gray", "tab:blue", "tab:orange", "tab:blue", "tab:orange"]
    ax.bar(range(len(TASKS)), med, color=colors, alpha=1.0)
    b = result.get("widget_breakdown")
    if b:   # the widget bars split: child start, transfer, child imports, the rest (export + polling)
        for i in (3, 4):
            bottom = 0.0
            for key, hatch in (("process_start_seconds", "//"), ("transfer_seconds", "xx"), ("child_imports_seconds", "..")):
                ax.bar(i, b[key], bottom=bottom, color="none", edgecolor="k", hatch=hatch, lw=0.5,
                       label=key.replace("_seconds", "").replace("_", " ") if i == 3 else None)
                bottom += b[key]
    for i, t in enumerate(TASKS):
        pts = result["tasks"][t]["seconds"]
        ax.plot([i] * len(pts), pts, "k.", ms=4)
        if t != "read":
            ax.text(i, med[i], f"{result['ratios'][t + '_over_read']:.2f}x read", ha="center", va="bottom")
    ax.axhline(result["tasks"]["read"]["median_seconds"], color="r", ls="--", lw=1, label="read time")
    ax.set_xticks(range(len(TASKS)), ["read series", "export BINARY\nin process", "export LABELMAP\nin process",
                                      "export BINARY\nas the widget", "export LABELMAP\nas the widget"], fontsize=8)
    ax.set_ylabel("seconds (median, dots = repeats)")
    ax.set_title(f"3-class DICOM-SEG export, {result['slices']} x 512 x 512 CT "
                 f"(load {result['load_average_before'][0]:.1f} -> {result['load_average_after'][0]:.1f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", nargs=3, metavar=("TASK", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_seg_"))
    result = {"benchmark": "bench_seg_export", "slices": args.slices, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "machine": platform.platform(), "python": platform.python_version(),
              "data": "dcmqi ct-3slice (BSD-3), repeated with new UIDs and positions; mask: HU thresholds on slice ranges"}
    try:
        folder, out_dir = tmp / "series", tmp / "out"
        out_dir.mkdir()
        t = time.perf_counter()
        build_series(folder, args.slices)
        print(f"built {args.slices} slices in {time.perf_counter() - t:.1f}s", flush=True)
        for task in TASKS + ("widget_probe",):   # warm-up (page cache, .pyc), not counted
            measure(task, folder, out_dir)
        result["load_average_before"] = list(os.getloadavg())
        runs = {t: [] for t in TASKS}
        cpus = {t: [] for t in TASKS}
        probes = []
        last = {}
        for k in range(args.repeats):
            for task in (TASKS if k % 2 == 0 else TASKS[::-1]):
                r = measure(task, folder, out_dir)
                runs[task].append(r["seconds"])
                cpus[task].append(r["cpu_seconds"])
                last[task] = r
            probes.append(measure("widget_probe", folder, out_dir))
        result["load_average_after"] = list(os.getloadavg())
        result["tasks"] = {t: {"seconds": runs[t], "median_seconds": statistics.median(runs[t]),
                               "cpu_seconds": cpus[t], "median_cpu_seconds": statistics.median(cpus[t])} for t in TASKS}
        for t in TASKS[1:]:
            result["tasks"][t].update({k: last[t][k] for k in ("frames", "bytes", "segmentation_type")})
        read = result["tasks"]["read"]["median_seconds"]
        read_cpu = result["tasks"]["read"]["median_cpu_seconds"]
        result["ratios"] = {t + "_over_read": result["tasks"][t]["median_seconds"] / read for t in TASKS[1:]}
        # process CPU time (all threads): less sensitive to other jobs on a shared machine. The widget
        # tasks' CPU time is the parent's only (the child's is not visible from it): not compared.
        result["cpu_ratios"] = {t + "_over_read": result["tasks"][t]["median_cpu_seconds"] / read_cpu for t in TASKS[1:3]}
        keys = ("process_start_seconds", "transfer_seconds", "child_imports_seconds")
        result["widget_breakdown"] = {k: statistics.median(p[k] for p in probes) for k in keys}
        result["widget_breakdown"].update({k: probes[-1][k] for k in ("volume_mbytes", "mask_mbytes")})
        result["widget_breakdown"]["runs"] = [{k: p[k] for k in keys} for p in probes]
        result["widget_overhead_seconds"] = {
            kind: result["tasks"][f"widget_{kind}"]["median_seconds"] - result["tasks"][f"export_{kind}"]["median_seconds"]
            for kind in ("binary", "labelmap")}
        result["readback"] = {t: verify(folder, last[t]["path"]) for t in TASKS[1:]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_seg_export.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "bench_seg_export.png")
    tk = result["tasks"]
    print(f"read {tk['read']['median_seconds']:.3f}s  export BINARY {tk['export_binary']['median_seconds']:.3f}s "
          f"({result['ratios']['export_binary_over_read']:.2f}x read, {tk['export_binary']['frames']} frames)  "
          f"export LABELMAP {tk['export_labelmap']['median_seconds']:.3f}s ({result['ratios']['export_labelmap_over_read']:.2f}x read)  "
          f"CPU-time ratios: BINARY {result['cpu_ratios']['export_binary_over_read']:.2f}x, "
          f"LABELMAP {result['cpu_ratios']['export_labelmap_over_read']:.2f}x  "
          f"as the widget: BINARY {tk['widget_binary']['median_seconds']:.3f}s ({result['ratios']['widget_binary_over_read']:.2f}x read), "
          f"LABELMAP {tk['widget_labelmap']['median_seconds']:.3f}s ({result['ratios']['widget_labelmap_over_read']:.2f}x read); "
          f"child start {result['widget_breakdown']['process_start_seconds']:.3f}s, transfer {result['widget_breakdown']['transfer_seconds']:.3f}s "
          f"({result['widget_breakdown']['volume_mbytes']:.0f} MB volume + {result['widget_breakdown']['mask_mbytes']:.0f} MB mask), "
          f"child imports {result['widget_breakdown']['child_imports_seconds']:.3f}s  "
          f"read back identical: " + ", ".join(f"{k}={v['identical']}" for k, v in result["readback"].items()) +
          f"  load average {result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}")
    print(f"wrote {RESULTS / 'bench_seg_export.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
