"""Time to first mask on a full-size CT: the Annotate & Train widget's Train click, measured without Qt.

On ../shared/data/tcia_cervical_ct (296 x 512 x 512 CT, RTSTRUCT with the liver and the urinary bladder), for each
structure: the RTSTRUCT mask drawn on 3 slices (the 1/4, 2/4, 3/4 quantiles of its extent along the slice axis) is
the user's annotation; the config the widget builds on Train (its defaults: Steps auto, Image size auto, Batch 8,
Device CPU, from scratch) runs as the same child-process job the widget starts (napari_ssl.train.jobs:
train_predict_job through train.runner.JobRunner). Recorded: seconds from the click (config built, job started)
to the whole-series prediction arriving (the "prediction" event and its labels file read), CPU seconds and peak
resident memory of the training child and of this process, and Dice against the RTSTRUCT mask on all slices.

Baseline in the same run: fill between slices (ITK morphological contour interpolation) from the same slices.
With --compare-today the settings before data-driven defaults (auto off: whole slice resized to 64 px,
resnet18, CT window -1000..1000) run too.

    PYTHONPATH=$PWD:$PWD/benchmarks .venv/bin/python benchmarks/bench_time_to_mask.py [--device cuda:0] [--compare-today]

The machine is shared: /proc/loadavg is recorded before and after each run; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import ct_reference as ref  # noqa: E402

DATA = os.environ.get("NAPARI_SSL_DATA", os.path.join(os.path.dirname(HERE), "..", "shared", "data"))
CT = os.path.join(DATA, "tcia_cervical_ct", "CT_images")
RT = os.path.join(DATA, "tcia_cervical_ct", "RTstruct.dcm")
# the widget's defaults (napari_ssl/_napari/widgets/train_controls.py): Steps 0 ("auto"), Image size 0 ("auto"), Batch 8, CPU
WIDGET_DEFAULTS = {"steps": None, "image_size": None, "batch_size": 8, "semi_supervised": True}


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def widget_config(volume, labels: np.ndarray, annotated: np.ndarray, out: str, device: str, class_name: str, auto: bool) -> dict:
    """What AnnotateTrainWidget.build_config builds on Train (same keys, the widget's default values)."""
    ft = {"images": [volume], "labels": [labels.copy()], "out": os.path.join(out, "model"), "classes": [class_name],
          "empty_slices": [[]], **WIDGET_DEFAULTS, "devices": device, "preview_every_s": 5.0}
    if not auto:
        ft["auto"] = False
    semi = bool(ft["semi_supervised"])  # the widget's "Learn from unannotated slices too" also sets the prediction's recipe
    return {"finetune": ft, "predict": {"image": volume, "out": os.path.join(out, "pred"), "annotated_slices": annotated,
                                        "labels": labels.copy(), "keep_connected": semi, "fill_between": semi,
                                        "n": 5, "device": device}}


def run_job(config: dict) -> dict:
    """Start the widget's job at 'the click', wait for the prediction; seconds, CPU and memory."""
    from napari_ssl.train.runner import JobRunner

    cpu0, load0 = child_cpu_s(), loadavg()
    t0 = time.perf_counter()
    runner = JobRunner("napari_ssl.train.jobs:train_predict_job", config, label="Fine-tuning").start()
    pid, hwm, t_pred, pred_path, events = runner.pid, 0.0, None, None, []
    settings = None
    while not runner.finished:
        for ev in runner.poll():
            if ev.get("type") == "prediction":
                pred_labels = np.load(ev["labels"], allow_pickle=False)
                t_pred = time.perf_counter() - t0
                pred_path = ev["labels"]
            elif ev.get("type") == "status" and str(ev.get("message", "")).startswith("settings:"):
                settings = ev["message"][len("settings: "):]
            elif ev.get("type") == "trained":
                events.append(("trained", time.perf_counter() - t0))
            elif ev.get("type") == "started":
                events.append(("training started", time.perf_counter() - t0))
        hwm = max(hwm, vm_hwm_mb(pid))
        time.sleep(0.05)
    res = runner.result
    if res.get("type") != "done" or pred_path is None:
        raise RuntimeError(f"job failed: {res}")
    from napari_ssl.models.checkpoint import read_meta

    meta = read_meta(res["out"])
    return {"labels": pred_labels, "seconds_to_prediction": round(t_pred, 1), "child_cpu_s": round(child_cpu_s() - cpu0, 1),
            "child_peak_rss_mb_polled": round(hwm),
            "milestones_s": {k: round(v, 1) for k, v in events}, "loadavg_before": load0, "loadavg_after": loadavg(),
            "settings": settings, "auto": meta.get("auto"), "image_size": meta.get("image_size"), "encoder": meta.get("encoder_name"),
            "normalization": meta.get("normalization"), "steps": (meta.get("training") or {}).get("steps"),
            "lr": (meta.get("training") or {}).get("lr"), "model_dir": res["out"]}


def predict_without_propagation(config: dict, model_dir: str, volume) -> np.ndarray:
    """The job's own prediction of the same model again, without carrying the drawn slices outward (ablation)."""
    from napari_ssl.active.predict import predict_volume
    from napari_ssl.train.jobs import _same_study_prediction

    pc = dict(config["predict"])
    pc.update(_same_study_prediction(config["finetune"], model_dir))
    pred = predict_volume(model_dir, volume, annotation=(pc["labels"], np.asarray(pc["annotated_slices"], bool)),
                          keep_connected=bool(pc.get("keep_connected")), fill_between=bool(pc.get("fill_between")),
                          roi=pc.get("roi"), z_range=pc.get("z_range"), seeds=pc.get("seeds"), propagate=False)
    return pred.labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="the widget's Device choice: cpu (default) or cuda:0")
    ap.add_argument("--structures", default="liver,urinary_bladder")
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--compare-today", action="store_true", help="also run with data-driven defaults off")
    ap.add_argument("--ablate-propagation", action="store_true",
                    help="also predict each trained model again without carrying the drawn slices outward (Dice only)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bench_time_to_mask"))
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from the JSON at --out")
    args = ap.parse_args(argv)
    if args.replot:
        with open(args.out + ".json") as f:
            plot(json.load(f), args.out + ".png")
        return 0

    from napari_ssl.active.fill_between import fill_between_slices
    from napari_ssl.io import load_volume

    volume = load_volume(CT)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ttm-") as tmp:
        for s_i, roi in enumerate(args.structures.split(",")):
            truth = ref.rasterise_roi(RT, volume, roi)
            slices = ref.quantile_slices(truth, args.slices)
            labels = ref.sparse_from(truth, slices)
            annotated = np.zeros(volume.shape[0], bool)
            annotated[slices] = True
            t = time.perf_counter()
            fb = fill_between_slices(labels, annotated)
            row = {"structure": roi, "annotated_slices": slices, "voxels": int(truth.sum()),
                   "extent_slices": [int(v) for v in np.flatnonzero(truth.any((1, 2)))[[0, -1]]],
                   "fill_between": {"dice": round(ref.dice(fb > 0, truth), 4), "seconds": round(time.perf_counter() - t, 1)}}
            for name, auto in (("defaults", True),) + ((("today", False),) if args.compare_today else ()):
                cfg = widget_config(volume, labels, annotated, os.path.join(tmp, f"{roi}-{name}"), args.device, roi, auto)
                r = run_job(cfg)
                pred = r.pop("labels") > 0
                r["dice"] = round(ref.dice(pred, truth), 4)
                r["predicted_slices"] = int(pred.any((1, 2)).sum())
                r["dice_unannotated_slices"] = round(ref.dice(np.delete(pred, slices, 0), np.delete(truth, slices, 0)), 4)
                model_dir = r.pop("model_dir")
                if args.ablate_propagation:
                    t = time.perf_counter()
                    plain = predict_without_propagation(cfg, model_dir, volume) > 0
                    r["without_propagation"] = {"dice": round(ref.dice(plain, truth), 4), "predict_seconds": round(time.perf_counter() - t, 1)}
                    print(json.dumps({roi: {name: {"without_propagation": r["without_propagation"]}}}), flush=True)
                row[name] = r
                print(json.dumps({roi: {name: {k: r[k] for k in ("dice", "seconds_to_prediction", "child_cpu_s",
                                                                 "child_peak_rss_mb_polled", "predicted_slices", "settings")}}}),
                      flush=True)
            print(json.dumps({roi: {"fill_between": row["fill_between"]}}), flush=True)
            rows.append(row)
    from napari_ssl.active.fill_between import shutdown_worker

    shutdown_worker()
    ru_c = resource.getrusage(resource.RUSAGE_CHILDREN)
    ru_s = resource.getrusage(resource.RUSAGE_SELF)
    result = {"benchmark": "time_to_mask", "data": "tcia_cervical_ct (296 x 512 x 512 CT, RTSTRUCT)", "device": args.device,
              "widget_defaults": {**WIDGET_DEFAULTS, "device": args.device, "init": "random"},
              "cpu_count": os.cpu_count(),
              "torch_threads_in_child": os.environ.get("NAPARI_SSL_THREADS") or os.environ.get("OMP_NUM_THREADS") or "torch default",
              "peak_rss_mb": {"largest_child": round(ru_c.ru_maxrss / 1024), "this_process (the viewer side)": round(ru_s.ru_maxrss / 1024)},
              "loadavg_end": loadavg(), "rows": rows,
              "goals": {"seconds_to_prediction": 120, "peak_memory_mb": 4096, "liver_dice": 0.85, "bladder": "above fill between"}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    plot(result, args.out + ".png")
    print(json.dumps({k: result[k] for k in ("peak_rss_mb", "loadavg_end")}))
    return 0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    methods = [m for m in ("fill_between", "today", "defaults") if m in rows[0]]
    labels = {"fill_between": "fill between slices", "today": "before (64 px whole slice)", "defaults": "data-driven defaults"}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    w = 0.8 / len(methods)
    for j, m in enumerate(methods):
        a1.bar(np.arange(len(rows)) + j * w, [r[m]["dice"] for r in rows], w, label=labels[m])
        if m != "fill_between":
            a2.bar(np.arange(len(rows)) + j * w, [r[m]["seconds_to_prediction"] for r in rows], w, label=labels[m], color=f"C{j}")
            a2.scatter(np.arange(len(rows)) + j * w, [r[m]["child_cpu_s"] for r in rows], marker="_", s=600, c="k",
                       label="CPU seconds of the job" if j == len(methods) - 1 else None, zorder=3)
    for a in (a1, a2):
        a.set_xticks(np.arange(len(rows)) + 0.4 - w / 2, [r["structure"] for r in rows])
    a1.axhline(0.85, ls=":", c="k", lw=0.8)
    a1.set_ylabel("Dice vs RTSTRUCT, all slices")
    a1.set_ylim(0, 1)
    a1.legend(fontsize=8)
    a2.axhline(120, ls=":", c="k", lw=0.8)
    a2.set_ylabel("seconds from Train to whole-series prediction")
    a2.legend(fontsize=8)
    load = result["loadavg_end"][0]
    fig.suptitle(f"Time to first mask, {result['device']}, steps {result['widget_defaults']['steps'] or 'auto'}, "
                 f"3 slices (load {load:.1f} on {result['cpu_count']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
