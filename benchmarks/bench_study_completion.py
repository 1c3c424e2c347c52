#!/usr/bin/env python
"""Study completion (issue 11): a few annotated slices of one study -> the whole study.

For each held-out hippocampus volume and k in --ks, k slices are annotated (all labels on them) at the
(i+1)/(k+1) quantiles of the structure's extent along the slice axis (axis 0 of the canonical grid).
Methods, each given only that volume (and, where stated, its unannotated slices):

- fill-between: ITK morphological contour interpolation (3D Slicer's "Fill between slices"), no training;
- supervised-random: fine-tuning on the annotated slices from a random init;
- supervised-pretrained: the same from today's best pretrained init (position-inpainting of
  bench_label_efficiency.py: SimCLR with same-depth positives, then in-painting; whole U-Net transferred;
  pretrained once on the 200-volume pool and cached under --work-dir);
- semi-*: the semi-supervised recipe (napari_ssl.train.semi_supervised) from either init.

Every trained method gets the same budget (--steps steps of batch 8, compact U-Net, lr 3e-3) and --seeds
seeds; every prediction goes through the prediction path's respect_annotation (annotated slices come back
as drawn). Scores: whole-volume Dice and Dice on the unannotated slices only, mean over the two classes
(anterior, posterior; a class absent from both is 1), mean over volumes.

Split: --split val scores volumes of the 200-volume pool (every 10th: choices are made there), --split test
the held-out volumes (every 3rd of the 60 highest-numbered), once the recipe is fixed.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_study_completion.py --split test      # the table (CPU)
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_study_completion.py --quick           # smoke run
  GPU: .venv/bin/python benchmarks/bench_study_completion.py --split test --device gpu --steps 500 --volumes 60 --seeds 3 --workers 4

Writes benchmarks/results/bench_study_completion.json and .png (the val split: ..._val.json/.png).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "msd_hippocampus"))
RESULTS = os.path.join(HERE, "results")
N_POOL = 200
N_CLASSES = 2

# method -> (init, semi-supervised config overrides or None for supervised, predict-time keep_connected)
METHODS = {
    "supervised-random": ("random", None, False),
    "supervised-pretrained": ("pretrained", None, False),
    "semi-random": ("random", {}, True),
    "semi-pretrained": ("pretrained", {}, True),
}
# probed on the val split (--methods): the recipe's parts one by one
VARIANTS = {
    "semi-random-nocc": ("random", {}, False),
    "semi-random-fillonly": ("random", {"rounds": 0}, True),
    "semi-random-noplanes": ("random", {"planes": False, "rounds": 1}, True),  # the default of ver 3 (before side planes)
    "semi-random-planes-r0": ("random", {"rounds": 0}, True),  # side planes, no self-training phase (= the default since ver 5)
    "semi-random-planes-r1": ("random", {"rounds": 1}, True),  # side planes + a self-training phase (the ver-4 default)
    "semi-random-nofill": ("random", {"fill_between": False}, True),  # the default since ver 3
    "semi-random-noprop": ("random", {"propagate_prediction": False}, True),  # the default before session 19
    # the default, and the same model predicted without the carried prior (session 19)
    "semi-random+noprop": ("random", {}, True, {"also": {"semi-random-noprop-same": {"propagate": False}}}),
    # the default, and the same model with the carried classes not split across the structure's axis (session 20)
    "semi-random+nosplit": ("random", {}, True, {"also": {"semi-random-noprop-same": {"propagate": False},
                                                           "semi-random-nosplit-same": {"split_classes": False}}}),
    "semi-random-prop3": ("random", {"propagate_pseudo": 3}, True),  # + carried pseudo-labels, 3 slices each side
    # session 21: a study drawn on one slice gets side planes from that slice carried 3 (the default since) / 6 slices each way
    "semi-random-cplanes3": ("random", {"carried_planes": 3}, True),
    "semi-random-cplanes6": ("random", {"carried_planes": 6}, True),
    "semi-random-nocplanes": ("random", {"carried_planes": 0}, True),  # the default before session 21
    "semi-random-prop6": ("random", {"propagate_pseudo": 6}, True),
    "semi-random-prop10": ("random", {"propagate_pseudo": 10}, True),
    "semi-random-prop16": ("random", {"propagate_pseudo": 16}, True),
    "semi-random-prop6-w1": ("random", {"propagate_pseudo": 6, "fill_weight": 1.0}, True),
    "semi-random-cons": ("random", {"consistency": 1.0}, True),  # + weak/strong consistency on the unannotated slices (session 19)
    "semi-random-cons0.8": ("random", {"consistency": 1.0, "consistency_threshold": 0.8}, True),
    "semi-random-fill": ("random", {"fill_between": True}, True),  # the default before ver 3 (the first test table)
    "semi-random-2rounds": ("random", {"rounds": 2}, True),
    "semi-random-conf0.8": ("random", {"confidence": 0.8}, True),
    "semi-random-w1": ("random", {"fill_weight": 1.0, "pseudo_weight": 1.0}, True),
    "semi-random-nofillpred": ("random", {"fill_between_prediction": False}, True),
    "supervised-random-cc": ("random", None, True),
    "semi-random-axial0.2": ("random", {"rounds": 0, "axial_fraction": 0.2}, True),  # share of annotated slices among
    "semi-random-axial0.5": ("random", {"rounds": 0, "axial_fraction": 0.5}, True),  # the user's samples (default 0.34)
    # a 4th element: predict_array keywords (the same trained model as the recipe's: training is deterministic per seed)
    "semi-random-tta": ("random", {}, True, {"tta": True}),  # flips + gamma at prediction (the axial side flips only)
    # one training, several predictions: the recipe's own row, then a row for each {method: predict_array keywords}
    "semi-random+tta": ("random", {}, True, {"also": {"semi-random-tta": {"tta": True}, "semi-random-flip": {"tta": "flip"}}}),
}


def volume_ids() -> list[str]:
    names = sorted(f for f in os.listdir(os.path.join(DATA, "images")) if f.endswith(".nii.gz") and not f.startswith("."))
    return sorted(names, key=lambda f: int("".join(c for c in f if c.isdigit()) or 0))


def split_volumes(split: str, n: int) -> list[str]:
    names = volume_ids()
    if split == "val":
        return names[:N_POOL][5::10][:n]
    return names[N_POOL:][::3][:n]


def quantile_slices(lab: np.ndarray, k: int) -> list[int]:
    zs = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
    return sorted({int(round(zs[0] + (zs[-1] - zs[0]) * (i + 1) / (k + 1))) for i in range(k)})


def dice(pred: np.ndarray, lab: np.ndarray) -> float:
    out = []
    for c in range(1, N_CLASSES + 1):
        p, t = pred == c, lab == c
        den = int(p.sum()) + int(t.sum())
        out.append(2.0 * int((p & t).sum()) / den if den else 1.0)
    return float(np.mean(out))


def scores(pred: np.ndarray, lab: np.ndarray, ann: np.ndarray) -> dict:
    return {"dice": dice(pred, lab), "dice_unannotated": dice(pred[~ann], lab[~ann])}


_VOL: dict = {}


def load(name: str):
    if name not in _VOL:
        from napari_ssl.data.normalize import default_spec, normalize
        from napari_ssl.train.finetune import load_image, load_labels

        img = load_image(os.path.join(DATA, "images", name))
        lab = load_labels(os.path.join(DATA, "labels", name), img)
        _VOL[name] = (normalize(img.array, default_spec(img.modality)), lab.astype(np.uint8))
    return _VOL[name]


def _setup_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging
    import warnings

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(n).setLevel(logging.ERROR)


def pretrained_dir(a: dict) -> str:
    """today's best init (position-inpainting), pretrained once with bench_label_efficiency's settings."""
    import bench_label_efficiency as le

    pa = {"image_size": a["image_size"], "encoder": a["encoder"], "device": a["device"], "work_dir": a["pretrain_dir"],
          "pretrain_steps": a["pretrain_steps"]}
    return le.run_pretrain(le._init_named("position-inpainting"), pa)["dir"]


def run_fill(name: str, k: int) -> dict:
    from napari_ssl.active.fill_between import fill_between_slices

    _, lab = load(name)
    ann = np.zeros(lab.shape[0], bool)
    ann[quantile_slices(lab, k)] = True
    t0 = time.time()
    filled = fill_between_slices(np.where(ann[:, None, None], lab, 0), ann)
    return {"method": "fill-between", "volume": name, "k": k, "seed": 0, **scores(filled, lab, ann), "seconds": time.time() - t0}


def run_trained(method: str, spec: tuple, name: str, k: int, seed: int, a: dict, pre_dir: str | None) -> dict:
    _setup_worker()
    import torch

    from napari_ssl.active.predict import predict_array
    from napari_ssl.active.respect_annotation import respect_annotation
    from napari_ssl.data.labelled_slices import AugmentConfig, LabelledSliceDataset, LabelledVolume
    from napari_ssl.train.finetune import FinetuneConfig, build_initial_model, train_unet
    from napari_ssl.train.semi_supervised import SemiSupervisedConfig, train_semi_supervised

    init, semi, keep_cc = spec[:3]
    pkw = dict(spec[3]) if len(spec) > 3 else {}
    also = pkw.pop("also", {})
    img, lab = load(name)
    ann = np.zeros(lab.shape[0], bool)
    ann[quantile_slices(lab, k)] = True
    vol = LabelledVolume(image=img, labels=np.where(ann[:, None, None], lab, 0).astype(np.uint8), annotated=ann)
    cfg = FinetuneConfig(images=[], labels=[], out="", encoder_weights=pre_dir if init == "pretrained" else None, encoder=a["encoder"],
                         transfer_decoder=init == "pretrained")
    torch.manual_seed(seed)
    unet, _ = build_initial_model(cfg, N_CLASSES + 1)
    t0 = time.time()
    kw = dict(batch_size=8, lr=a["lr"], loss="dice-ce", seed=seed, devices="cpu" if a["device"] == "cpu" else a["device"])
    if semi is None:
        ds = LabelledSliceDataset([vol], a["image_size"], 1, AugmentConfig())
        unet, info = train_unet(unet, ds, steps=a["steps"], **kw)
    else:
        kw.pop("seed")
        unet, info = train_semi_supervised(unet, [vol], image_size=a["image_size"], in_channels=1, steps=a["steps"],
                                           cfg=SemiSupervisedConfig(**semi), seed=seed, **kw)
    t_train = time.time() - t0
    unet = unet.cpu()
    planes = (0, 1, 2) if info.get("planes") else (0,)  # the recipe's side planes: predicted from three sides, as the product does
    pred = predict_array(unet, img, image_size=a["image_size"], in_channels=1, planes=planes, **pkw)
    raw = scores(pred.labels, lab, ann)
    if a.get("save_predictions"):  # the model's own output, before the prediction path's post-processing
        d = os.path.join(a["save_predictions"], method)
        os.makedirs(d, exist_ok=True)
        sides = {}
        if len(planes) > 1:  # each side's own probabilities too (their mean is the prediction), for probing weights
            sides = {f"probabilities_{p}": predict_array(unet, img, image_size=a["image_size"], in_channels=1,
                                                         planes=(p,)).probabilities.astype(np.float16) for p in planes}
        np.savez_compressed(os.path.join(d, f"{name[:-7]}_k{k}_s{seed}.npz"), probabilities=pred.probabilities.astype(np.float16),
                            **sides)
    fill_pred = semi is not None and bool(info.get("fill_between_prediction"))
    from napari_ssl.active.propagate import apply_propagation

    prop = semi is not None and SemiSupervisedConfig(**semi).propagate_prediction
    if prop:  # as predict_volume does with the recipe's model
        apply_propagation(pred, img, vol.labels, ann)
    pred = respect_annotation(pred, vol.labels, ann, keep_connected=keep_cc, fill_between=fill_pred)
    row = {"method": method, "volume": name, "k": k, "seed": seed, **scores(pred.labels, lab, ann), "dice_raw": raw["dice"],
           "train_seconds": t_train, "seconds": time.time() - t0, "pseudo_slices": info.get("pseudo_slices"),
           "user_slice_fit": info.get("user_slice_fit")}
    if not also:
        return row
    rows = [row]
    for other, okw in also.items():  # the same model, predicted otherwise
        t1 = time.time()
        okw = dict(okw)
        prop2 = okw.pop("propagate", prop)
        split2 = okw.pop("split_classes", True)
        p2 = predict_array(unet, img, image_size=a["image_size"], in_channels=1, planes=planes, **okw)
        raw2 = scores(p2.labels, lab, ann)
        if prop2:
            apply_propagation(p2, img, vol.labels, ann, split_classes=split2)
        p2 = respect_annotation(p2, vol.labels, ann, keep_connected=keep_cc, fill_between=fill_pred)
        rows.append(dict(row, method=other, **scores(p2.labels, lab, ann), dice_raw=raw2["dice"], predict_seconds=time.time() - t1))
    return rows


def task_key(method: str, spec, name: str, k: int, seed: int, a: dict) -> str:
    # ver 3: the semi-supervised default without fill-between pseudo-labels; ver 4: side planes (data/planes.py) for the
    # variants (their specs name every setting that differs); ver 5: the default recipe = side planes, no self-training;
    # ver 6: three sides fused by their geometric mean (active/predict.py); ver 7: trained again when the model misses the
    # user's own slices (semi_supervised.train_semi_supervised); ver 8: plain fine-tuning's sampler when nothing is added, and
    # the user's outermost slices carried outward as the prior beyond them (active/propagate.py); ver 9: the carried classes
    # split across the structure's axis and the foreground's split among classes taken from them (session 20); ver 10: a study
    # drawn on one slice gets side planes from that slice carried 3 slices each way (carried_planes, session 21);
    # save_predictions not in the key
    d = {"m": method, "spec": spec, "v": name, "k": k, "s": seed, "steps": a["steps"], "lr": a["lr"], "size": a["image_size"],
         "enc": a["encoder"], "ver": 1 if spec[1] is None else 10}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_task(args):
    method, spec, name, k, seed, a, pre_dir = args
    try:
        return run_trained(method, spec, name, k, seed, a, pre_dir)
    except Exception as exc:  # recorded, not fatal for the whole benchmark
        import traceback

        return {"method": method, "volume": name, "k": k, "seed": seed, "error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()[-2000:]}


def summarize(rows: list[dict], methods: list[str], ks: list[int]) -> dict:
    out = {}
    for m in methods:
        out[m] = {}
        for k in ks:
            rs = [r for r in rows if r["method"] == m and r["k"] == k and "error" not in r]
            if not rs:
                continue
            seeds = sorted({r["seed"] for r in rs})
            per_seed = [np.mean([r["dice"] for r in rs if r["seed"] == s]) for s in seeds]
            per_seed_u = [np.mean([r["dice_unannotated"] for r in rs if r["seed"] == s]) for s in seeds]
            out[m][str(k)] = {"dice": float(np.mean(per_seed)), "dice_sd_over_seeds": float(np.std(per_seed)),
                              "dice_unannotated": float(np.mean(per_seed_u)), "dice_unannotated_sd_over_seeds": float(np.std(per_seed_u)),
                              "n_volumes": len({r["volume"] for r in rs}), "seeds": seeds,
                              "train_seconds_mean": float(np.mean([r.get("train_seconds", r.get("seconds", 0.0)) for r in rs]))}
    return out


def plot(summary: dict, ks: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, lab in ((axes[0], "dice", "whole-volume Dice"), (axes[1], "dice_unannotated", "Dice on unannotated slices")):
        for m, per in summary.items():
            xs = [k for k in ks if str(k) in per]
            ys = [per[str(k)][key] for k in xs]
            es = [per[str(k)].get(key + "_sd_over_seeds", 0.0) if key == "dice" else per[str(k)].get("dice_unannotated_sd_over_seeds", 0.0)
                  for k in xs]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        if key == "dice":
            ax.plot([1, 2, 3, 5], [0.55, 0.70, 0.80, 0.87], "k--", lw=1, label="goal")
        ax.set_xlabel("annotated slices k")
        ax.set_ylabel(lab)
        ax.set_xticks(ks)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _stage_times(events: list[tuple[float, dict]], t0: float) -> dict:
    """Seconds from the click to each stage of the job, from its own events: the first training step, each phase's
    start (a step-count jump after a pause: the pseudo-labelling pass lies in between), the end of training, the
    prediction."""
    out: dict = {}
    steps = [(t, int(e["step"])) for t, e in events if e.get("type") == "progress"]
    if steps:
        out["first_step"] = steps[0][0] - t0
        out["last_step"] = steps[-1][0] - t0
        gaps = [(b[0] - a[0], a[1], a[0] - t0) for a, b in zip(steps, steps[1:])]
        typical = float(np.median([g[0] for g in gaps])) if gaps else 0.0
        out["seconds_per_step_median"] = typical
        half = steps[-1][1] // 2  # the recipe's two phases (equal halves); the supervised run: the same split
        out["seconds_per_step_median_halves"] = [float(np.median([g[0] for g in gaps if (g[1] < half) == first] or [0.0])) for first in (True, False)]
        out["pauses"] = [{"after_step": s, "at": round(at, 2), "seconds": round(g, 2)} for g, s, at in gaps if g > max(1.0, 10 * typical)]
    for t, e in events:
        if e.get("type") == "status":
            out.setdefault("status", []).append({"at": round(t - t0, 2), "message": str(e.get("message"))[:80]})
        if e.get("type") in ("trained", "prediction") and e["type"] not in out:
            out[e["type"]] = t - t0
    return out


WIDGET_STEPS = None  # the Annotate & Train widget's Steps box default: auto (the training budget of data/auto_config.py)


def _run_as_widget(cfg: dict, folder: str, on_event) -> None:
    """The widget's Train: the arrays staged to files (jobs.offload_arrays), the job in a spawned child process
    (train.runner.JobRunner, at this process's priority), until its terminal event."""
    from napari_ssl.train.jobs import offload_arrays
    from napari_ssl.train.runner import JobRunner

    job = JobRunner("napari_ssl.train.jobs:train_predict_job", offload_arrays(cfg, os.path.join(folder, "staging")), nice=0).start()
    res = job.wait(on_event=on_event, interval=0.02)
    if not res or res.get("type") == "error":
        raise RuntimeError(f"the job failed: {res}")


def time_default_recipe(name: str, k: int, work_dir: str, profile: str | None = None, order: str = "supervised,semi",
                        widget: bool = False) -> dict:
    """Seconds from 'Train' to the prediction with the defaults, through the job the widget runs
    (train_predict_job: fine-tune, then predict the study), semi-supervised on vs off, with the seconds to each stage.
    widget=False: FinetuneConfig's defaults (= the CLI's), in this process; widget=True: the widget's
    config (Steps on auto) in a child process as the widget starts it (click -> prediction event, child start-up included).
    `profile`: a cProfile of each run, in this process (also with widget=True), its top functions written to PROFILE_<run>.txt."""
    import tempfile

    from napari_ssl.train.finetune import load_image, load_labels
    from napari_ssl.train.jobs import train_predict_job

    img = load_image(os.path.join(DATA, "images", name))
    lab = load_labels(os.path.join(DATA, "labels", name), img).astype(np.uint8)
    ann = np.zeros(lab.shape[0], bool)
    ann[quantile_slices(lab, k)] = True
    sparse = np.where(ann[:, None, None], lab, 0).astype(np.uint8)
    out = {"order": order}
    for i, run in enumerate(order.split(",")):
        semi = run == "semi"
        key = run if run not in out else f"{run}_{i}"
        d = tempfile.mkdtemp(dir=work_dir)
        got, events = {}, []

        def on_event(e):
            events.append((time.time(), e))
            if e.get("type") == "prediction":
                got["pred"] = e["labels"]

        cfg = {"finetune": {"images": [img], "labels": [sparse.copy()], "out": os.path.join(d, "model"), "semi_supervised": semi,
                            "devices": "cpu", "preview_every_s": 5.0},
               "predict": {"image": img, "out": os.path.join(d, "pred"), "annotated_slices": ann, "labels": sparse,
                           "keep_connected": semi, "fill_between": semi, "n": 5, "device": "cpu"}}
        if widget:  # what the Annotate & Train widget's build_config sends (its Steps box on auto; classes, empty slices)
            cfg["finetune"].update(steps=WIDGET_STEPS, batch_size=8, image_size=None, classes=["anterior", "posterior"], empty_slices=[[]])
        load0 = os.getloadavg()[0]
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.time()
        if widget and not profile:
            _run_as_widget(cfg, d, on_event)
        else:
            train_predict_job(cfg, on_event, None)
        secs = time.time() - t0
        if prof is not None:
            import io
            import pstats

            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
            with open(f"{profile}_{key}.txt", "w") as f:
                f.write(buf.getvalue())
        pred = np.load(got["pred"])
        meta = json.load(open(os.path.join(d, "model", "model.json")))
        out[key] = {"seconds": secs, **scores(pred, lab, ann), "load_average_start": load0, "load_average_end": os.getloadavg()[0],
                    "steps": meta["training"]["steps"], "encoder": meta["encoder_name"], "image_size": meta["image_size"],
                    "stages": _stage_times(events, t0)}
        print(f"default recipe, semi-supervised {semi}: {secs:.1f} s click -> prediction, Dice {out[key]['dice']:.3f}, "
              f"load {load0:.2f}, stages {out[key]['stages']}", flush=True)
    mode = ("widget's config" if widget else "FinetuneConfig defaults") + (" in a child process" if widget and not profile else ", in-process")
    return {"volume": name, "k": k, "mode": mode,
            "load_average": os.getloadavg()[0], **out}


def ct_overhead(steps: int, image_size: int, work_dir: str) -> dict:
    """What the semi-supervised terms add on a full-size CT (../shared/data/tcia_cervical_ct, 296 x 512 x 512):
    the body outline (HU > -300, largest 3-D component; a large structure = the worst case for interpolation and
    component labelling) drawn on 3 slices at its 1/4, 2/4, 3/4 quantiles; supervised vs semi-supervised fine-tuning
    with the same steps, seconds and peak memory (ru_maxrss) of each, in one process, supervised first."""
    import resource

    import torch
    from scipy import ndimage

    from napari_ssl.data.labelled_slices import AugmentConfig, LabelledSliceDataset, LabelledVolume
    from napari_ssl.data.normalize import default_spec, normalize
    from napari_ssl.models.unet import build_unet
    from napari_ssl.train.finetune import load_image, train_unet
    from napari_ssl.train.semi_supervised import SemiSupervisedConfig, train_semi_supervised

    ct = load_image(os.path.join(ROOT, "..", "shared", "data", "tcia_cervical_ct", "CT_images"))
    body = ct.array > -300
    comp, _ = ndimage.label(body)
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    lab = (comp == sizes.argmax()).astype(np.uint8)
    ann = np.zeros(lab.shape[0], bool)
    ann[quantile_slices(lab, 3)] = True
    img = normalize(ct.array, default_spec(ct.modality))
    vol = LabelledVolume(image=img, labels=np.where(ann[:, None, None], lab, 0).astype(np.uint8), annotated=ann)
    out = {"shape": list(ct.shape), "annotated": [int(z) for z in np.flatnonzero(ann)], "steps": steps, "image_size": image_size}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for semi in (False, True):
        torch.manual_seed(0)
        unet = build_unet("mobilenetv3-small-lite", in_channels=1, classes=2)
        t0 = time.time()
        if semi:  # gate off, so the pseudo-labelling pass runs whatever the model's fit
            unet, info = train_semi_supervised(unet, [vol], image_size=image_size, in_channels=1, steps=steps,
                                               cfg=SemiSupervisedConfig(min_fit_dice=0.0), batch_size=8, lr=3e-3, devices="cpu")
        else:
            unet, info = train_unet(unet, LabelledSliceDataset([vol], image_size, 1, AugmentConfig()), steps=steps, batch_size=8, lr=3e-3,
                                    devices="cpu")
        key = "semi" if semi else "supervised"
        out[key] = {"seconds": time.time() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "pseudo_slices": info.get("pseudo_slices")}
        print(key, out[key], flush=True)
    out["rss_before_training_mb"] = rss0
    out["load_average"] = os.getloadavg()[0]
    return out


def _write_side_result(path: str, res: dict, argv) -> None:
    """The JSON of a side measurement (--ct-overhead, --time-default), with the command that made it, written atomically."""
    with open(path + ".tmp", "w") as f:
        json.dump({"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_study_completion.py "
                              + " ".join(argv if argv is not None else sys.argv[1:]),
                   "cpu_count": os.cpu_count(), **res}, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--volumes", type=int, default=20)
    p.add_argument("--ks", default="1,2,3,5")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=120, help="training steps of batch 8 per study, the same for every trained method")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--encoder", default="mobilenetv3-small-lite")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ",".join([*METHODS, *VARIANTS]))
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "study_completion"))
    p.add_argument("--pretrain-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "label_efficiency"),
                   help="where bench_label_efficiency caches its pretrained inits (shared)")
    p.add_argument("--quick", action="store_true", help="3 volumes, 1 seed, 40 steps")
    p.add_argument("--out", default=None)
    p.add_argument("--time-default", action="store_true",
                   help="only time the default recipe (widget job, k=3, one test volume), semi-supervised on vs off")
    p.add_argument("--profile", default=None, help="with --time-default: cProfile each run, top functions to PROFILE_<run>.txt")
    p.add_argument("--widget", action="store_true",
                   help="with --time-default: the widget's config (Steps on auto) in a child process, as the widget runs it")
    p.add_argument("--order", default="supervised,semi", help="with --time-default: runs in this order (supervised, semi; repeatable)")
    p.add_argument("--ct-overhead", action="store_true", help="only measure what the semi-supervised terms add on the full-size CT (time, memory)")
    p.add_argument("--time-limit-min", type=float, default=0,
                   help="stop scheduling trainings after this many minutes and summarise what ran (0: no limit)")
    args = p.parse_args(argv)
    if args.quick:
        args.volumes, args.seeds, args.steps = 3, 1, 40
    ks = [int(x) for x in args.ks.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    specs = {**METHODS, **VARIANTS}
    for m in methods:
        if m not in specs:
            p.error(f"unknown method {m}")
    a = {"steps": args.steps, "lr": args.lr, "image_size": args.image_size, "encoder": args.encoder, "device": args.device,
         "pretrain_dir": args.pretrain_dir, "pretrain_steps": args.pretrain_steps,
         "save_predictions": os.path.join(args.work_dir, "predictions", args.split)}
    out_json = args.out or os.path.join(RESULTS, "bench_study_completion" + ("_val" if args.split == "val" else "") + ".json")
    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    names = split_volumes(args.split, args.volumes)
    if args.ct_overhead:
        _setup_worker()
        res = ct_overhead(args.steps, args.image_size, args.work_dir)
        _write_side_result(args.out or os.path.join(RESULTS, "bench_study_completion_ct_overhead.json"), res, argv)
        return 0
    if args.time_default:
        _setup_worker()
        res = time_default_recipe(split_volumes("test", 1)[0], 3, args.work_dir, args.profile, args.order, args.widget)
        _write_side_result(args.out or os.path.join(RESULTS, "bench_study_completion_timing.json"), res, argv)
        return 0
    t0, load0 = time.time(), os.getloadavg()[0]
    print(f"study completion: split {args.split}, {len(names)} volumes, k {ks}, {args.seeds} seeds, methods {methods}, {a}", flush=True)
    _setup_worker()
    pre_dir = pretrained_dir(a) if any(specs[m][0] == "pretrained" for m in methods) else None
    rows = [run_fill(n, k) for n in names for k in ks]
    cache = os.path.join(args.work_dir, "runs.jsonl")
    done = {}
    if os.path.isfile(cache):
        for line in open(cache):
            try:
                r = json.loads(line)
                done[r["key"]] = r
            except (ValueError, KeyError):
                pass
    tasks = []
    for seed in range(args.seeds):  # volume by volume, so a run cut short by --time-limit-min still compares like with like
        for n in names:
            for k in ks:
                for m in methods:
                    key = task_key(m, specs[m], n, k, seed, a)
                    extra = [key + "+" + o for o in (specs[m][3].get("also", {}) if len(specs[m]) > 3 else {})]
                    if key in done and all(e in done for e in extra):
                        rows.extend(done[e] for e in [key, *extra])
                    else:
                        tasks.append((key, (m, specs[m], n, k, seed, a, pre_dir)))
    print(f"{len(tasks)} trainings to run ({len(rows) - len(names) * len(ks)} cached)", flush=True)
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(args.workers, initializer=_setup_worker) as pool, open(cache, "a") as f:
        keys = [t[0] for t in tasks]
        for i, got in enumerate(pool.imap(_run_task, [t[1] for t in tasks])):
            if args.time_limit_min and time.time() - t0 > 60 * args.time_limit_min:
                print(f"time limit reached after {i + 1} of {len(tasks)} trainings: summarising what ran", flush=True)
                pool.terminate()
                break
            for r in (got if isinstance(got, list) else [got]):
                r["key"] = keys[i] + ("" if r["method"] == tasks[i][1][0] else "+" + r["method"])
                if "error" in r:
                    print("ERROR", r["method"], r["volume"], r["k"], r["error"], r.get("tb", ""), flush=True)
                else:
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                rows.append(r)
            if (i + 1) % 20 == 0 or i + 1 == len(tasks):
                print(f"  {i + 1}/{len(tasks)} trainings, {time.time() - t0:.0f} s", flush=True)
    complete = {n for n in names if all(any(r["method"] == m and r["volume"] == n and r["k"] == k and "error" not in r for r in rows)
                                        for m in methods for k in ks)}
    if len(complete) < len(names):
        print(f"{len(complete)} of {len(names)} volumes have every method and k: the summary uses those", flush=True)
        rows = [r for r in rows if r["volume"] in complete]
    also = [o for m in methods if len(specs[m]) > 3 for o in specs[m][3].get("also", {})]
    summary = summarize(rows, ["fill-between", *methods, *also], ks)
    wall = time.time() - t0
    for m, per in summary.items():
        print(f"{m:28s} " + "  ".join(f"k={k}: {per[str(k)]['dice']:.3f}±{per[str(k)]['dice_sd_over_seeds']:.3f} "
                                      f"(unann {per[str(k)]['dice_unannotated']:.3f})" for k in ks if str(k) in per), flush=True)
    res = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_study_completion.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]),
           "split": args.split, "volumes": names, "ks": ks, "seeds": args.seeds, "settings": {**a, "batch_size": 8, "workers": args.workers},
           "wall_seconds": wall, "load_average": {"start": load0, "end": os.getloadavg()[0]}, "cpu_count": os.cpu_count(),
           "complete_volumes": sorted(complete), "summary": summary, "goal": {"1": 0.55, "2": 0.70, "3": 0.80, "5": 0.87},
           "runs": [{kk: v for kk, v in r.items() if kk != "tb"} for r in rows]}
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=float)
    os.replace(tmp, out_json)
    plot(summary, ks, out_json[:-5] + ".png", f"study completion, {args.split} split: {len(complete)} hippocampus volumes, {args.seeds} seed(s), "
         f"{args.steps} steps, {args.encoder} {args.image_size}px")
    print(f"wrote {out_json} ({wall:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
