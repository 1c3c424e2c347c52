#!/usr/bin/env python
"""Label efficiency of few-shot fine-tuning: random init vs self-supervised pretrained inits (issue 4).

Data: ../shared/data/msd_hippocampus (260 MR volumes). Split by volume: the 200 lowest-numbered
volumes are the pool (pretraining data AND the slices that get labelled), the other 60 are the test
set. For k in --ks labelled slices (drawn at random from the pool slices that show hippocampus; for
one seed the k-slice set is nested in the larger ones) and every seed, each init is fine-tuned with
the same budget (--finetune-steps steps of batch 8, Dice+CE, the project's own train_unet) and
evaluated with 3-D Dice per class (anterior=1, posterior=2) on the 60 test volumes (on their own
grids). Intermediate Dice is measured on a fixed subset of test volumes at a few steps, for the
"steps to 90 % of final Dice" and "steps to reach random's final Dice" figures.

Each pretraining method is run ONCE on the pool (napari_ssl.train.pretrain.run_pretraining), its
folder cached under --work-dir (reused by later runs with the same settings). Fine-tuning results
are cached too (runs.jsonl under --work-dir), so an interrupted run resumes where it stopped.

Pretraining sees the pool slices on the same pixel grid fine-tuning uses (each slice scaled so its
longer side is --image-size, then zero-padded): see prepare_pretrain_pool().

  .venv/bin/python benchmarks/bench_label_efficiency.py --full            # the table (CPU, < 1 h)
  .venv/bin/python benchmarks/bench_label_efficiency.py --quick           # smoke run (minutes)
  .venv/bin/python benchmarks/bench_label_efficiency.py --variants NAME,.. # probe fine-tuning / pretraining variants
  GPU / bigger: --device gpu --encoder resnet18 --image-size 64 --pretrain-steps 5000 --finetune-steps 1000 --seeds 5 --workers 1

Writes benchmarks/results/bench_label_efficiency.json and .png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "msd_hippocampus"))
RESULTS = os.path.join(HERE, "results")
OUT_JSON = os.path.join(RESULTS, "bench_label_efficiency.json")
OUT_PNG = os.path.join(RESULTS, "bench_label_efficiency.png")
CLASSES = ("anterior", "posterior")
N_POOL = 200


# ----------------------------------------------------------------------------- inits

@dataclass
class Init:
    """A fine-tuning starting point: random, or a pretraining method + how it is transferred."""

    name: str
    method: str | None = None  # pretraining method (None: random init)
    options: dict = field(default_factory=dict)  # pretraining --opt values
    pretrain_steps: int | None = None  # None: --pretrain-steps
    pretrain_lr: float = 1e-3
    pretrain_batch: int = 32
    matched_grid: bool = True  # pretrain on the pool resampled to fine-tuning's pixel grid
    transfer_decoder: bool = False
    encoder_lr_scale: float = 1.0
    freeze_encoder_steps: int = 0
    freeze_encoder_bn: bool = False  # keep the pretrained encoder's BatchNorm statistics while fine-tuning
    class_balance: float = 0.0  # cross-entropy class weights (frequency ** -class_balance) from the labelled slices
    head_warmup_steps: int = 0  # linear probe first: only the segmentation head trains for these steps
    lr: float = 3e-3  # 1e-3 leaves the compact U-Net stuck predicting one hippocampus class in 200 steps (posterior Dice 0)
    augment: bool = True
    init_from: str | None = None  # pretraining starts from this VARIANTS/FINAL_INITS entry's encoder (hierarchical, --init)
    # issue 11's recipe (train/semi_supervised.py, defaults): the unannotated slices of the labelled volumes as unlabelled data
    semi_supervised: bool = False
    # with semi_supervised: this many pool volumes (never a labelled one, never a validation one) as unlabelled data
    unlabelled_volumes: int = 0
    semi_options: dict = field(default_factory=dict)  # with semi_supervised: SemiSupervisedConfig overrides
    oracle_carry: bool = False  # probe: the carried slices get the expert's labels instead of the carried ones (an upper bound)
    note: str = ""


INPAINT = {"holes": 3, "min_hole": 0.1, "max_hole": 0.3}  # the in-painting options of every in-painting init unless stated

# Inits of the final table: random, one pretext task, one joint-embedding method, one more. The parent of a
# hierarchical init (init_from) is listed before it, so its pretraining runs first (run_all defers the child).
FINAL_INITS = [
    Init("random"),
    Init("inpainting", "inpainting", dict(INPAINT), transfer_decoder=True,
         note="context-encoder in-painting, whole U-Net transferred (encoder + decoder)"),
    Init("simclr-position", "simclr", {"pairs": "position"}, pretrain_batch=16,
         note="SimCLR (joint embedding, batch 16) with positives at the same relative depth of two volumes "
              "(Chaitanya et al. 2020); encoder transferred"),
    Init("position-inpainting", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         note="hierarchical: simclr-position, then in-painting from that encoder (--init); whole U-Net transferred"),
    Init("semi-supervised", semi_supervised=True,
         note="random init + issue 11's semi-supervised recipe (SemiSupervisedConfig defaults, chosen on validation volumes): "
              "the k labelled slices' volumes; labels scattered one slice per volume are carried 6 slices each way in their "
              "own volume as pseudo-labels (session 22); one volume drawn on one slice gets carried side planes (session 21)"),
]

# Probed variants (--variants): name -> Init. Results land in the JSON's "variants" section.
VARIANTS = {v.name: v for v in [
    Init("inpainting-enc-only", "inpainting", dict(INPAINT), note="in-painting, encoder only"),
    Init("inpainting-dec-lr0.3", "inpainting", dict(INPAINT), transfer_decoder=True, encoder_lr_scale=0.3),
    Init("inpainting-dec-freeze50", "inpainting", dict(INPAINT), transfer_decoder=True, freeze_encoder_steps=50),
    Init("inpainting-unmatched-grid", "inpainting", dict(INPAINT), transfer_decoder=True, matched_grid=False,
         note="pretrained on the raw pool slices (no rescale to the fine-tuning grid)"),
    Init("inpainting-small-holes", "inpainting", {"holes": 6, "min_hole": 0.06, "max_hole": 0.16}, transfer_decoder=True),
    Init("inpainting-big-holes", "inpainting", {"holes": 2, "min_hole": 0.25, "max_hole": 0.45}, transfer_decoder=True),
    Init("simclr-lr0.3", "simclr", {}, pretrain_batch=16, encoder_lr_scale=0.3),
    Init("inpainting-dec-bnfrozen", "inpainting", dict(INPAINT), transfer_decoder=True, freeze_encoder_bn=True),
    Init("simclr-bnfrozen", "simclr", {}, pretrain_batch=16, freeze_encoder_bn=True),
    Init("offset-heatmap-bnfrozen", "offset-heatmap", {}, pretrain_batch=16, freeze_encoder_bn=True),
    Init("vicreg", "vicreg", {}, pretrain_batch=16),
    Init("byol", "byol", {}, pretrain_batch=16),
    Init("rotation", "rotation", {}),
    Init("offset-heatmap-lr0.3", "offset-heatmap", {}, pretrain_batch=16, encoder_lr_scale=0.3),
    Init("random-noaug", None, augment=False),
    Init("simclr", "simclr", {}, pretrain_batch=16, note="SimCLR (joint embedding, 2 views of batch 16), encoder transferred"),
    Init("offset-heatmap", "offset-heatmap", {}, pretrain_batch=16,
         note="Blendowski offset heatmap (pretext, pairs of batch 16), encoder transferred"),
    Init("vicreg-position", "vicreg", {"pairs": "position"}, pretrain_batch=16,
         note="VICReg with positives at the same relative depth of two volumes"),
    Init("position-inpainting-lp25", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         head_warmup_steps=25, note="position-inpainting, head-only warm-up (linear probe, then fine-tune)"),
    Init("position-inpainting-lp50", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         head_warmup_steps=50),
    Init("random-cb", None, class_balance=0.5, note="random init, class-balanced cross-entropy"),
    Init("position-inpainting-cb", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         class_balance=0.5, note="position-inpainting, class-balanced cross-entropy"),
    Init("simclr-position-1200", "simclr", {"pairs": "position"}, pretrain_batch=16, pretrain_steps=1200,
         note="SimCLR with same-depth positives, 3x longer"),
    Init("position1200-inpainting", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position-1200",
         note="hierarchical: 3x longer simclr-position, then in-painting from that encoder"),
    Init("position-inpainting1200", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         pretrain_steps=1200, note="hierarchical: simclr-position, then 3x longer in-painting from that encoder"),
    Init("position-inpainting-cb-lr1e-3", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         class_balance=0.5, lr=1e-3, note="position-inpainting, class-balanced cross-entropy, lr 1e-3 (keeps more of the pretrained weights)"),
    Init("position-inpainting-cb-enc0.3", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         class_balance=0.5, encoder_lr_scale=0.3, note="position-inpainting, class-balanced cross-entropy, encoder lr x0.3"),
    Init("inpainting-long", "inpainting", dict(INPAINT), pretrain_steps=1200, transfer_decoder=True,
         note="3x longer in-painting pretraining"),
    # issue 11 across volumes (session 18, chosen with --split val): the recipe with the pool's other volumes as unlabelled data
    Init("semi", semi_supervised=True, note="the semi-supervised recipe (as the final table's row), for --split val"),
    Init("semi-unl16", semi_supervised=True, unlabelled_volumes=16,
         note="the recipe + 16 unlabelled pool volumes (a self-training round: confident pseudo-labels of 32 slices each)"),
    Init("semi-unl48", semi_supervised=True, unlabelled_volumes=48, note="the recipe + 48 unlabelled pool volumes"),
    Init("semi-allplanes", semi_supervised=True, semi_options={"min_side_share": 0.0},
         note="side planes from every volume annotated on 2+ slices, however few of the annotated slices they hold"),
    Init("semi-noplanes", semi_supervised=True, semi_options={"planes": False}, note="the recipe without side planes"),
    # session 19 (--split val): weak/strong consistency on unannotated slices (train/consistency.py, FixMatch-style)
    Init("semi-cons", semi_supervised=True, semi_options={"consistency": 1.0},
         note="the recipe + consistency (weight 1, threshold 0.95) on the labelled volumes' unannotated slices"),
    Init("semi-cons-unl16", semi_supervised=True, unlabelled_volumes=16, semi_options={"consistency": 1.0, "rounds": 0},
         note="the recipe + consistency on the labelled volumes' other slices and 16 unlabelled pool volumes (no self-training round)"),
    Init("semi-cons-unl48", semi_supervised=True, unlabelled_volumes=48, semi_options={"consistency": 1.0, "rounds": 0},
         note="as semi-cons-unl16 with 48 unlabelled pool volumes"),
    Init("semi-cons0.8-unl48", semi_supervised=True, unlabelled_volumes=48, semi_options={"consistency": 1.0, "rounds": 0,
                                                                                             "consistency_threshold": 0.8},
         note="as semi-cons-unl48, teacher threshold 0.8"),
    # session 20 (--split val): each labelled slice carried to its neighbours along the image's motion (active/propagate.py)
    Init("semi-prop3", semi_supervised=True, semi_options={"propagate_pseudo": 3},
         note="the recipe + each labelled slice carried 3 slices each way in its own volume, as pseudo-labels (weight 0.5)"),
    Init("semi-prop6", semi_supervised=True, semi_options={"propagate_pseudo": 6},
         note="as semi-prop3, 6 slices each way"),
    Init("semi-prop3-w1", semi_supervised=True, semi_options={"propagate_pseudo": 3, "fill_weight": 1.0},
         note="as semi-prop3 at full weight"),
    # session 21 (--split val): the best pretrained init of the table, alone and with the carried pseudo-labels
    Init("position-inpainting-val", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         note="position-inpainting (the table's init, chosen on test) as a variant, for --split val"),
    Init("position-inpainting-prop3", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position",
         semi_supervised=True, semi_options={"propagate_pseudo": 3},
         note="position-inpainting init + each labelled slice carried 3 slices each way as pseudo-labels (semi-prop3)"),
    Init("semi-cplanes", semi_supervised=True, semi_options={"carried_planes_across": True},
         note="the recipe + side planes of every volume from its labelled slice carried 3 slices each way"),
    Init("semi-prop10", semi_supervised=True, semi_options={"propagate_pseudo": 10}, note="as semi-prop3, 10 slices each way"),
    Init("semi-prop16", semi_supervised=True, semi_options={"propagate_pseudo": 16}, note="as semi-prop3, 16 slices each way"),
    Init("semi-prop6-w1", semi_supervised=True, semi_options={"propagate_pseudo": 6, "fill_weight": 1.0},
         note="the recipe (carried 6 each way across studies) with the carried pseudo-labels at full weight"),
    Init("semi-prop6-r1", semi_supervised=True, semi_options={"propagate_pseudo": 6, "rounds": 1},
         note="the recipe (carried 6 each way across studies) + one self-training round (model pseudo-labels of the labelled volumes' other slices)"),
    # session 23 (--split val), not taken (patch benchmarks/results/session23_probes.diff; semi_options of the patch):
    # semi-ring0.2 / semi-ring0.4 {"carried_ring": 0.2 / 0.4}, semi-prop10-ring0.4, semi-decay {"carried_decay": True},
    # semi-ema {"ema": 0.99}, semi-refresh {"rounds": 1, "refresh_carried": True} (-refresh2: rounds 2; -refresh-c0: confidence 0;
    # -refresh-agree: "refresh_agree": True)
    Init("semi-cons6", semi_supervised=True, semi_options={"consistency": 1.0},
         note="the default (carried 6 each way) + weak/strong consistency on the labelled volumes' other slices"),
    Init("semi-cons6-unl48", semi_supervised=True, unlabelled_volumes=48, semi_options={"consistency": 1.0, "rounds": 0},
         note="the default (carried 6 each way) + consistency on the labelled volumes' other slices and 48 unlabelled pool volumes"),
    Init("position-inpainting-semi", "inpainting", dict(INPAINT), transfer_decoder=True, init_from="simclr-position", semi_supervised=True,
         note="position-inpainting init + the default recipe (carried 6 each way across studies)"),
    Init("semi-lf0.34", semi_supervised=True, semi_options={"labelled_fraction": 0.34},
         note="the default with a third of each batch the user's slices (two thirds carried)"),
    # session 24: the carried slices' labels voted by image patches (active/patch_vote.py) became the default (`semi`; it was
    # the variant semi-vote); semi-novote is the session 22-23 default, read through the flow alone
    Init("semi-novote", semi_supervised=True, semi_options={"carry_vote": False},
         note="the session 22-23 default: carried labels read through the flow alone"),
    Init("semi-vote-prop8", semi_supervised=True, semi_options={"carry_vote": True, "propagate_pseudo": 8},
         note="session 24: the vote (the default since) carried 8 slices each way"),
    Init("semi-vote-prop10", semi_supervised=True, semi_options={"carry_vote": True, "propagate_pseudo": 10},
         note="session 24: the vote (the default since) carried 10 slices each way"),
    Init("semi-oracle", semi_supervised=True, oracle_carry=True,
         note="probe: the default with the expert's labels on the carried slices (how much better carrying could do)"),
    # semi-fade10 (not taken; patch benchmarks/results/session22_carried_fade.diff): semi_options {"carried_full_share_until": 10}
    # session 22 (--split val): the carried pseudo-labels with self-training on unlabelled pool volumes
    Init("semi-prop3-unl48", semi_supervised=True, unlabelled_volumes=48, semi_options={"propagate_pseudo": 3},
         note="semi-prop3 + 48 unlabelled pool volumes (one self-training round: confident pseudo-labels of 32 slices each)"),
]}


# ----------------------------------------------------------------------------- data

def volume_ids() -> list[str]:
    names = sorted(f for f in os.listdir(os.path.join(DATA, "images")) if f.endswith(".nii.gz") and not f.startswith("."))
    return sorted(names, key=lambda f: int("".join(c for c in f if c.isdigit()) or 0))


_CACHE: dict = {}


VAL_POOL = list(range(5, N_POOL, 10))  # --split val: these 20 pool volumes are scored and never labelled


def load_split(image_size: int, n_curve: int, split: str = "test"):
    """Pool (normalised images + labels), the scored volumes (fitted tensors + labels), the labelled candidates and the
    scored volumes as normalised images + labels (for predicting them whole); loaded once per process.

    split "test": the 60 held-out volumes are scored; "val": 20 pool volumes (VAL_POOL) are scored instead and
    left out of the labelled candidates (choices are made there; the test volumes are never looked at)."""
    key = (image_size, n_curve, split)
    if key in _CACHE:
        return _CACHE[key]
    import torch

    from napari_ssl.data.labelled_slices import fit_to_size
    from napari_ssl.data.normalize import default_spec, normalize
    from napari_ssl.train.finetune import load_image, load_labels

    names = volume_ids()
    pool, scored = [], []
    for i, f in enumerate(names):
        img = load_image(os.path.join(DATA, "images", f))
        lab = load_labels(os.path.join(DATA, "labels", f), img)
        arr = normalize(img.array, default_spec(img.modality))
        (pool if i < N_POOL else scored).append((arr, lab))
    # labelled candidates: every pool slice that shows some hippocampus
    cand = [(v, z) for v, (_, lab) in enumerate(pool) for z in range(lab.shape[0]) if lab[z].any()]
    if split == "val":
        held = set(VAL_POOL)
        cand = [(v, z) for v, z in cand if v not in held]
        scored = [pool[v] for v in VAL_POOL]
    test = [(fit_to_size(torch.from_numpy(np.ascontiguousarray(arr))[:, None], image_size), lab) for arr, lab in scored]
    _CACHE[key] = (pool, test, cand, scored)
    return _CACHE[key]


def pick_slices(cand: list, k: int, seed: int) -> list:
    """k (volume, slice) pairs; for one seed the sets are nested (k=1 in k=2 in ...)."""
    order = np.random.default_rng(10_000 + seed).permutation(len(cand))
    return [cand[i] for i in order[:k]]


def prepare_pretrain_pool(work_dir: str, image_size: int, matched: bool) -> list[str]:
    """The pool as NIfTI files for run_pretraining. matched=True: every slice rescaled so the longer
    in-plane side is image_size (what fine-tuning's fit_to_size does; the engine then zero-pads to a
    square), so pretraining and fine-tuning see anatomy at the same pixel scale. matched=False:
    the original files (the engine zero-pads 35x50 slices to image_size without rescaling)."""
    names = volume_ids()[:N_POOL]
    if not matched:
        return [os.path.join(DATA, "images", f) for f in names]
    folder = os.path.join(work_dir, f"pool_grid{image_size}")
    paths = [os.path.join(folder, f"pool_{i:03d}.nii.gz") for i in range(len(names))]
    if all(os.path.isfile(p) for p in paths):
        return paths
    import SimpleITK as sitk
    import torch
    import torch.nn.functional as F

    from napari_ssl.data.normalize import default_spec, normalize
    from napari_ssl.train.finetune import load_image

    os.makedirs(folder, exist_ok=True)
    for f, p in zip(names, paths):
        img = load_image(os.path.join(DATA, "images", f))
        arr = normalize(img.array, default_spec(img.modality))  # [0,1]; re-normalising by percentiles is ~identity
        d, h, w = arr.shape
        s = image_size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        x = F.interpolate(torch.from_numpy(np.ascontiguousarray(arr))[:, None], size=(nh, nw), mode="bilinear", align_corners=False)[:, 0]
        tmp = f"{p}.{os.getpid()}.tmp.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(x.numpy().astype(np.float32)), tmp)
        os.replace(tmp, p)
    return paths


# ----------------------------------------------------------------------------- evaluation

def dice_per_class(pred: np.ndarray, lab: np.ndarray) -> list[float]:
    out = []
    for c in range(1, len(CLASSES) + 1):
        p, t = pred == c, lab == c
        den = int(p.sum()) + int(t.sum())
        out.append(2.0 * int((p & t).sum()) / den if den else 1.0)
    return out


def evaluate(unet, test, vols=None, batch: int = 256) -> dict:
    """Mean over volumes of 3-D Dice per class, predictions mapped back to each volume's own grid."""
    import torch

    from napari_ssl.data.labelled_slices import unfit_from_size

    unet.eval()
    dev = next(unet.parameters()).device
    per = []
    with torch.no_grad():
        for i in (range(len(test)) if vols is None else vols):
            x, lab = test[i]
            logits = torch.cat([unet(x[j:j + batch].to(dev)).float().cpu() for j in range(0, len(x), batch)])
            pred = unfit_from_size(logits, lab.shape[1:]).argmax(1).numpy()
            per.append(dice_per_class(pred, lab))
    per = np.asarray(per)
    return {"per_class": per.mean(0).tolist(), "mean": float(per.mean()), "per_volume_mean": per.mean(1).tolist()}


def evaluate_three_sides(unet, scored: list, image_size: int) -> dict:
    """As :func:`evaluate`, with the model predicting each scored volume ((normalised image, labels) of
    :func:`load_split`) from three sides (axial, coronal, sagittal, fused), as the product predicts with a model
    trained on side planes (active/predict.py)."""
    from napari_ssl.active.predict import predict_array

    per = []
    for arr, lab in scored:
        pred = predict_array(unet, np.asarray(arr, np.float32), image_size=image_size, in_channels=1, planes=(0, 1, 2))
        per.append(dice_per_class(pred.labels, lab))
    per = np.asarray(per)
    return {"per_class": per.mean(0).tolist(), "mean": float(per.mean()), "per_volume_mean": per.mean(1).tolist()}


# ----------------------------------------------------------------------------- tasks

def _setup_worker():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for n in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(n).setLevel(logging.ERROR)


def pretrain_key(init: Init, a: dict) -> str:
    spec = {"method": init.method, "options": init.options, "steps": init.pretrain_steps or a["pretrain_steps"], "lr": init.pretrain_lr,
            "batch": init.pretrain_batch, "matched": init.matched_grid, "encoder": a["encoder"], "size": a["image_size"], "seed": 0}
    if init.init_from:
        spec["init_from"] = pretrain_key(_init_named(init.init_from), a)[0]
    return f"{init.method}-{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]}", spec


def _init_named(name: str) -> Init:
    return {**{i.name: i for i in FINAL_INITS}, **VARIANTS}[name]


def run_pretrain(init: Init, a: dict) -> dict:
    """Pretrain once (or reuse the cached folder); returns the folder and timing."""
    _setup_worker()
    parent = run_pretrain(_init_named(init.init_from), a) if init.init_from else None
    from napari_ssl.models.checkpoint import read_meta
    from napari_ssl.train.pretrain import PretrainConfig, run_pretraining

    key, spec = pretrain_key(init, a)
    out = os.path.join(a["work_dir"], "pretrain", key)
    if os.path.isfile(os.path.join(out, "model.json")) and read_meta(out).get("status") == "complete":
        m = read_meta(out)
        return {"key": key, "dir": out, "cached": True, "seconds": m.get("bench_seconds"), "final_loss": m.get("final_loss"), "spec": spec}
    if os.path.isdir(out):
        import shutil

        shutil.rmtree(out)
    paths = prepare_pretrain_pool(a["work_dir"], a["image_size"], init.matched_grid)
    t0 = time.time()
    cfg = PretrainConfig(method=init.method, data=paths, out=out, encoder=a["encoder"], in_channels=1, image_size=a["image_size"],
                         steps=spec["steps"], batch_size=init.pretrain_batch, lr=init.pretrain_lr, devices=a["device"],
                         options=dict(init.options), seed=0, preview_every_s=0.0, checkpoint_every_s=0.0,
                         init=parent["dir"] if parent else None)
    run_pretraining(cfg)
    secs = time.time() - t0
    mpath = os.path.join(out, "model.json")
    with open(mpath) as f:
        meta = json.load(f)
    meta["bench_seconds"] = secs
    with open(mpath, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True, default=str)
    return {"key": key, "dir": out, "cached": False, "seconds": secs, "final_loss": meta.get("final_loss"), "spec": spec}


def finetune_key(init: Init, k: int, seed: int, a: dict, pre_key: str | None) -> str:
    # fields added later: left out of the key at their default (cache stays valid)
    later = {"freeze_encoder_bn": False, "init_from": None, "head_warmup_steps": 0, "class_balance": 0.0, "semi_supervised": False,
             "unlabelled_volumes": 0, "semi_options": {}, "oracle_carry": False}
    spec = {"init": {kk: v for kk, v in asdict(init).items() if kk not in ("name", "note") and not (kk in later and v == later[kk])},
            "pre": pre_key, "k": k, "seed": seed,
            "steps": a["finetune_steps"], "size": a["image_size"], "encoder": a["encoder"], "curve": a["curve_steps"], "ncurve": a["n_curve"], "v": 2}
    if a.get("split", "test") != "test":
        spec["split"] = a["split"]
    if init.semi_supervised:  # the recipe's defaults are part of the run (they changed once: fill-between pseudo-labels off)
        from napari_ssl.train.semi_supervised import SemiSupervisedConfig

        spec["semi"] = asdict(SemiSupervisedConfig(**init.semi_options))
        spec["three_sides"] = 1  # session 21: a run trained on side planes is scored predicting from three sides
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _curve_sink(unet, hook, hook_steps: list[int]):
    """train_unet's event sink that calls hook(step, unet) after the listed optimiser steps (train/eval modes restored)."""
    wanted = set(hook_steps)

    def sink(ev: dict) -> None:
        if ev.get("type") == "progress" and ev["step"] in wanted:
            modes = [(m, m.training) for m in unet.modules()]
            hook(ev["step"], unet)
            for m, mode in modes:
                m.training = mode

    return sink


def _module_factory(init: Init, ds, num_classes: int):
    """The fine-tuning module with this init's probes: head-only warm-up and class-balanced cross-entropy."""
    from functools import partial

    from napari_ssl.train.seg_module import SegmentationModule, balanced_class_weights

    weights = balanced_class_weights(ds.targets, num_classes, init.class_balance) if init.class_balance > 0 else None
    return partial(SegmentationModule, head_warmup_steps=init.head_warmup_steps, class_weights=weights)


def unlabelled_pool(n: int, labelled: set) -> list[int]:
    """n pool volumes spread over the pool, none labelled and none of VAL_POOL (the same for either split)."""
    held = labelled | set(VAL_POOL)
    free = [v for v in range(N_POOL) if v not in held]
    return [free[int(i)] for i in np.linspace(0, len(free) - 1, n).round().astype(int)] if n > 0 else []


def run_finetune(init: Init, k: int, seed: int, a: dict, pre_dir: str | None) -> dict:
    _setup_worker()
    import torch

    from napari_ssl.data.labelled_slices import AugmentConfig, LabelledSliceDataset, LabelledVolume
    from napari_ssl.train.finetune import FinetuneConfig, build_initial_model, train_unet

    pool, test, cand, scored = load_split(a["image_size"], a["n_curve"], a.get("split", "test"))
    picks = pick_slices(cand, k, seed)
    by_vol: dict[int, list[int]] = {}
    for v, z in picks:
        by_vol.setdefault(v, []).append(z)
    vols = []
    truth = {}
    for v, zs in sorted(by_vol.items()):
        img, lab = pool[v]
        truth[id(img)] = lab
        mask = np.zeros(lab.shape[0], bool)
        mask[zs] = True
        if init.semi_supervised:  # the recipe reads the labels' volume (fill between, 3-D components): only the labelled slices may show
            lab = np.where(mask[:, None, None], lab, 0).astype(lab.dtype)
        vols.append(LabelledVolume(image=img, labels=lab, annotated=mask))
    ds = LabelledSliceDataset(vols, a["image_size"], 1, AugmentConfig() if init.augment else None)
    cfg = FinetuneConfig(images=[], labels=[], out="", encoder_weights=pre_dir, encoder=a["encoder"], transfer_decoder=init.transfer_decoder)
    torch.manual_seed(seed)
    unet, source = build_initial_model(cfg, len(CLASSES) + 1)
    curve_vols = list(range(a["n_curve"]))
    curve: dict[int, float] = {}

    def hook(step, model):
        curve[int(step)] = evaluate(model, test, curve_vols)["mean"]

    t0 = time.time()
    steps = a["finetune_steps"]
    hook_steps = sorted({s for s in a["curve_steps"] if 0 < s < steps})
    if 0 in a["curve_steps"]:
        hook(0, unet)
    kw = dict(batch_size=8, lr=init.lr, loss="dice-ce", encoder_lr_scale=init.encoder_lr_scale, freeze_encoder_steps=init.freeze_encoder_steps,
              freeze_encoder_bn=init.freeze_encoder_bn, devices="cpu" if a["device"] == "cpu" else a["device"],
              emit=_curve_sink(unet, hook, hook_steps))
    if init.semi_supervised:
        from napari_ssl.train.semi_supervised import SemiSupervisedConfig, train_semi_supervised

        unl = unlabelled_pool(init.unlabelled_volumes, {v for v, _ in picks})
        _oracle_carry(truth if init.oracle_carry else None)
        unet, info = train_semi_supervised(unet, vols, image_size=a["image_size"], in_channels=1, steps=steps,
                                           cfg=SemiSupervisedConfig(**init.semi_options), unlabelled=[pool[v][0] for v in unl],
                                           augment=init.augment, seed=seed, **kw)
    else:
        unet, info = train_unet(unet, ds, steps=steps, seed=seed, module_factory=_module_factory(init, ds, len(CLASSES) + 1), **kw)
    t_train = time.time() - t0
    unet = unet.cpu()
    # a model trained on side planes predicts from three sides, as the product does with it (session 21: one study drawn on
    # one slice gets side planes, so the k=1 rows of the recipe)
    three = init.semi_supervised and info.get("planes")
    final = evaluate_three_sides(unet, scored, a["image_size"]) if three else evaluate(unet, test)
    curve[steps] = evaluate(unet, test, curve_vols)["mean"]
    return {"init": init.name, "k": k, "seed": seed, "dice": final["mean"], "dice_per_class": final["per_class"],
            "curve": {str(s): v for s, v in sorted(curve.items())}, "train_seconds": t_train, "total_seconds": time.time() - t0,
            "slices": [[int(v), int(z)] for v, z in picks], "source": {kk: v for kk, v in source.items() if not kk.startswith("_")},
            **({"pseudo_slices": info.get("pseudo_slices")} if init.semi_supervised else {})}


def _oracle_carry(truth: dict | None) -> None:
    """Probe, in this worker process: with `truth` ({id(image): expert labels}) the recipe's carried slices keep their places
    but get the expert's labels; with None the recipe's own carrying is back (a worker runs many fine-tunings in turn)."""
    import napari_ssl.train.semi_supervised as semi

    real = getattr(semi, "_real_carried_pseudo", semi.carried_pseudo)
    semi._real_carried_pseudo = real
    if truth is None:
        semi.carried_pseudo = real
        return

    def oracle(vol, *a, **kw):
        return [(z, truth[id(vol.image)][z].astype(np.uint8)) for z, _ in real(vol, *a, **kw)]

    semi.carried_pseudo = oracle


# ----------------------------------------------------------------------------- scheduling

K_PRIORITY = (10, 2, 50, 5, 1, 20)  # order in which k values are run within a seed (partial runs stay informative)


def run_all(inits: list[Init], ks: list[int], seeds: list[int], a: dict, log, cached_only: tuple = (),
            from_cache: bool = False) -> tuple[list[dict], dict]:
    """Pretrain what is needed, fine-tune every (init, k, seed); cached results are reused.

    At most --workers jobs run at once; the next job is the one with the highest priority:
    pretraining first, then fine-tuning seed by seed, k in K_PRIORITY order, inits in table order.
    """
    import multiprocessing as mp

    os.makedirs(a["work_dir"], exist_ok=True)
    cache_path = os.path.join(a["work_dir"], "runs.jsonl")
    done: dict[str, dict] = {}
    if os.path.isfile(cache_path):
        with open(cache_path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                    done[r["key"]] = r
                except (ValueError, KeyError):
                    pass
    pre_info: dict[str, dict] = {}
    results: list[dict] = []
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(a["workers"], initializer=_setup_worker, maxtasksperchild=None)
    t0 = time.time()
    kprio = {k: i for i, k in enumerate(K_PRIORITY)}
    queue: list[tuple] = []  # (priority, kind, payload)
    running: list[tuple] = []  # (kind, payload, async result)

    def queue_ft(init_i, init, pre):
        for k in ks:
            for s in seeds:
                key = finetune_key(init, k, s, a, pre["key"] if pre else None)
                if key in done:
                    results.append(done[key])
                    continue
                if init.name in cached_only:
                    continue
                queue.append(((1, s, kprio.get(k, 99), k, init_i), "ft", (key, init, k, s, pre["dir"] if pre else None)))

    waiting: dict[str, list] = {}
    deferred: dict[str, list] = {}  # parent pretraining key -> pretraining jobs that start from it
    if from_cache:  # summarise what is cached, run nothing
        cached_only = tuple(i.name for i in inits)
    for i, init in enumerate(inits):
        if init.method is None:
            queue_ft(i, init, None)
            continue
        pk, _ = pretrain_key(init, a)
        if from_cache:
            pdir = os.path.join(a["work_dir"], "pretrain", pk)
            meta_path = os.path.join(pdir, "model.json")
            pre_info[init.name] = {"key": pk, "dir": pdir, "cached": True}
            if os.path.isfile(meta_path):
                with open(meta_path) as f:
                    m = json.load(f)
                pre_info[init.name].update(seconds=m.get("bench_seconds"), final_loss=m.get("final_loss"), spec=pretrain_key(init, a)[1])
            queue_ft(i, init, pre_info[init.name])
            continue
        if pk not in waiting:
            waiting[pk] = []
            parent = pretrain_key(_init_named(init.init_from), a)[0] if init.init_from else None
            if parent is not None and parent in waiting:
                # a hierarchical init starts from its parent's folder: run it after the parent, never beside it
                deferred.setdefault(parent, []).append(((0, i), "pre", (pk, init)))
            else:
                queue.append(((0, i), "pre", (pk, init)))
        waiting[pk].append((i, init))
    try:
        while queue or running:
            while queue and len(running) < a["workers"]:
                queue.sort(key=lambda q: q[0])
                _, kind, payload = queue.pop(0)
                if kind == "pre":
                    running.append((kind, payload, pool.apply_async(run_pretrain, (payload[1], a))))
                else:
                    key, init, k, s, pdir = payload
                    running.append((kind, payload, pool.apply_async(run_finetune, (init, k, s, a, pdir))))
            time.sleep(0.5)
            for item in list(running):
                kind, payload, job = item
                if not job.ready():
                    continue
                running.remove(item)
                if kind == "pre":
                    pk, init0 = payload
                    queue.extend(deferred.pop(pk, []))
                    try:
                        info = job.get()
                    except Exception as exc:  # a method that fails is reported, the others go on
                        log(f"[{time.time() - t0:6.0f}s] pretraining {init0.method} FAILED: {type(exc).__name__}: {exc}")
                        for _, init in waiting[pk]:
                            pre_info[init.name] = {"error": f"{type(exc).__name__}: {exc}"}
                        continue
                    log(f"[{time.time() - t0:6.0f}s] pretrained {init0.method} ({info['key']}): "
                        f"{'cached' if info['cached'] else '%.0f s' % info['seconds']}, loss {info['final_loss']}")
                    for i, init in waiting[pk]:
                        pre_info[init.name] = info
                        queue_ft(i, init, info)
                    continue
                key = payload[0]
                try:
                    r = job.get()
                except Exception as exc:
                    log(f"[{time.time() - t0:6.0f}s] fine-tuning {payload[1].name} k={payload[2]} seed={payload[3]} "
                        f"FAILED: {type(exc).__name__}: {exc}")
                    continue
                r["key"] = key
                with open(cache_path, "a") as f:
                    f.write(json.dumps(r) + "\n")
                results.append(r)
                log(f"[{time.time() - t0:6.0f}s] {r['init']:>24s} k={r['k']:<3d} seed={r['seed']} dice={r['dice']:.3f} "
                    f"({r['dice_per_class'][0]:.3f}/{r['dice_per_class'][1]:.3f}) {r['total_seconds']:.0f}s")
    finally:
        pool.close()
        pool.join()
    return results, pre_info


# ----------------------------------------------------------------------------- summary

def steps_to_fraction(curve: dict, frac: float = 0.9) -> int | None:
    pts = sorted((int(s), v) for s, v in curve.items())
    final = pts[-1][1]
    for s, v in pts:
        if v >= frac * final:
            return s
    return None


def steps_to_reach(curve: dict, target: float) -> int | None:
    for s, v in sorted((int(s), v) for s, v in curve.items()):
        if v >= target:
            return s
    return None


def summarize(results: list[dict], inits: list[Init], ks: list[int], seeds: list[int], steps: int) -> dict:
    by = {(r["init"], r["k"], r["seed"]): r for r in results}
    table: dict = {}
    for init in inits:
        row = {}
        for k in ks:
            rs = [by[(init.name, k, s)] for s in seeds if (init.name, k, s) in by]
            if not rs:
                continue
            d = np.array([r["dice"] for r in rs])
            pc = np.array([r["dice_per_class"] for r in rs])
            s90 = [steps_to_fraction(r["curve"]) for r in rs]
            rnd = [by.get(("random", k, r["seed"])) for r in rs]
            reach = [steps_to_reach(r["curve"], rr["curve"][str(steps)]) if rr else None for r, rr in zip(rs, rnd)]
            row[str(k)] = {
                "n": len(rs), "mean_dice": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                "per_class_mean": pc.mean(0).tolist(), "per_class_sd": (pc.std(0, ddof=1) if len(pc) > 1 else 0 * pc[0]).tolist(),
                "per_seed": d.tolist(), "steps_to_90pct": s90,
                "steps_to_90pct_mean": float(np.mean([s for s in s90 if s is not None])) if any(s is not None for s in s90) else None,
                "steps_to_random_final": reach,
            }
        table[init.name] = row
    # goal checks
    goal = {}
    rnd = table.get("random", {})
    for init in inits:
        if init.name == "random" or init.name not in table:
            continue
        gains = {k: table[init.name][k]["mean_dice"] - rnd[k]["mean_dice"] for k in table[init.name] if k in rnd}
        small = {k: g for k, g in gains.items() if int(k) <= 10}
        reach = [x for k in table[init.name] for x in table[init.name][k]["steps_to_random_final"]]
        fast = [x is not None and x <= steps / 3 for x in reach]
        goal[init.name] = {"gain_vs_random": gains, "gain_ge_0.05_all_k_le_10": bool(small) and all(g >= 0.05 for g in small.values()),
                           "min_gain_k_le_10": min(small.values()) if small else None,
                           "fraction_of_runs_reaching_random_final_within_third": float(np.mean(fast)) if fast else None,
                           "median_steps_to_random_final": (float(np.median([x for x in reach if x is not None]))
                                                            if any(x is not None for x in reach) else None)}
    return {"table": table, "goal": goal}


def plot(summary: dict, results: list[dict], inits: list[Init], ks: list[int], steps: int, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for init in inits:
        row = summary["table"].get(init.name, {})
        kk = [k for k in ks if str(k) in row]
        if not kk:
            continue
        m = np.array([row[str(k)]["mean_dice"] for k in kk])
        sd = np.array([row[str(k)]["sd"] for k in kk])
        ax.errorbar(kk, m, yerr=sd, marker="o", capsize=3, label=init.name)
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("labelled slices k")
    ax.set_ylabel("mean Dice (60 test volumes)")
    ax.set_title("Dice vs k (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax, kshow in zip(axes[1:], [k for k in (2, 10) if k in ks] or ks[:2]):
        for init in inits:
            rs = [r for r in results if r["init"] == init.name and r["k"] == kshow]
            if not rs:
                continue
            st = sorted(int(s) for s in rs[0]["curve"])
            v = np.array([[r["curve"].get(str(s), np.nan) for s in st] for r in rs])
            mu, sd = np.nanmean(v, 0), np.nanstd(v, 0)
            ax.plot(st, mu, marker=".", label=init.name)
            ax.fill_between(st, mu - sd, mu + sd, alpha=0.15)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("mean Dice (curve subset)")
        ax.set_title(f"Dice vs steps, k={kshow}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smoke run: k=2,10, 1 seed, short pretraining/fine-tuning")
    g.add_argument("--full", action="store_true", help="the full table (default)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--encoder", default="mobilenetv3-small-lite", help="U-Net encoder (napari-ssl preset or smp name, e.g. resnet18)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick 1)")
    p.add_argument("--ks", default=None, help="comma-separated k values (default 1,2,5,10,20,50)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps per method (batch 32)")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps (batch 8), same for every init")
    p.add_argument("--curve-steps", default=None, help="steps at which Dice is measured on the curve subset")
    p.add_argument("--n-curve", type=int, default=6, help="test volumes in the curve subset")
    p.add_argument("--device", default="cpu", help="cpu, gpu, auto")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (1 thread each on the CPU)")
    p.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "label_efficiency"),
                   help="cache of pretrained folders and runs")
    p.add_argument("--inits", default=None, help="comma-separated subset of the final inits")
    p.add_argument("--variants", default=None, help="comma-separated VARIANTS to probe (stored in the JSON's variants section); 'list' lists them")
    p.add_argument("--no-baseline", action="store_true", help="with --variants: take random-init runs from the cache only (do not run them)")
    p.add_argument("--from-cache", action="store_true", help="run nothing: summarise the cached runs of this configuration (partial results)")
    p.add_argument("--out", default=OUT_JSON)
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: score the 60 held-out volumes; val: score 20 pool volumes kept out of the labelled slices (for choices)")
    args = p.parse_args(argv)
    if args.variants == "list":
        for v in VARIANTS.values():
            print(v.name, asdict(v))
        return 0
    quick = args.quick
    ks = [int(x) for x in args.ks.split(",")] if args.ks else ([2, 10] if quick or args.variants else [1, 2, 5, 10, 20, 50])
    seeds = list(range(args.seeds if args.seeds else (1 if quick else (2 if args.variants else 3))))
    a = {
        "image_size": args.image_size, "encoder": args.encoder, "device": args.device, "workers": args.workers, "work_dir": args.work_dir,
        "pretrain_steps": args.pretrain_steps or (60 if quick else 400),
        "finetune_steps": args.finetune_steps or (60 if quick else 200),
        "n_curve": args.n_curve, "split": args.split,
    }
    a["curve_steps"] = [int(x) for x in args.curve_steps.split(",")] if args.curve_steps else sorted(
        {s for s in (25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000) if s < a["finetune_steps"]} | {a["finetune_steps"]})
    if args.variants:
        inits = [FINAL_INITS[0]] + [VARIANTS[n] for n in args.variants.split(",")]
    else:
        inits = FINAL_INITS if not args.inits else [i for i in FINAL_INITS if i.name in args.inits.split(",")]
    os.makedirs(RESULTS, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(msg, flush=True)

    load_start = os.getloadavg()[0]
    log(f"label efficiency: inits {[i.name for i in inits]}, k {ks}, seeds {seeds}, {a}")
    results, pre_info = run_all(inits, ks, seeds, a, log, cached_only=("random",) if args.variants and args.no_baseline else (),
                                from_cache=args.from_cache)
    wall = time.time() - t0
    summary = summarize(results, inits, ks, seeds, a["finetune_steps"])
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_label_efficiency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prev = {}
    if os.path.isfile(args.out):
        try:
            with open(args.out) as f:
                prev = json.load(f)
        except ValueError:
            prev = {}
    split_note = ({"pool": "200 lowest-numbered volumes", "test": "other 60"} if args.split == "test" else
                  {"pool": "200 lowest-numbered volumes but the 20 scored", "val": f"pool volumes {VAL_POOL}"})
    section = {
        "command": cmd, "wall_seconds": wall, "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(), "settings": {**a, "ks": ks, "seeds": seeds, "batch_size": 8, "loss": "dice-ce",
                                                           "pretrain_batch": 32,
                                                           "split": split_note},
        "inits": [asdict(i) for i in inits], "pretraining": pre_info, **summary,
        "runs": [{kk: v for kk, v in r.items() if kk not in ("slices",)} for r in results],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "from_cache": bool(args.from_cache),
        "complete": len(results) == len(inits) * len(ks) * len(seeds),
        "worker_seconds": {"finetune_runs": float(sum(r.get("total_seconds", 0) for r in results)),
                           "pretraining": float(sum((v.get("seconds") or 0) for v in pre_info.values() if isinstance(v, dict)))},
    }
    if args.variants:
        out = prev
        out.setdefault("variants", {})
        tag = (f"{args.variants}|k{','.join(map(str, ks))}|s{len(seeds)}|ft{a['finetune_steps']}|pt{a['pretrain_steps']}"
               f"|{a['encoder']}|{a['image_size']}")
        out["variants"][tag] = section
    else:
        stale = ("reading", "timing_note", "final_configuration")   # notes written by hand about an earlier table
        out = {**{k: v for k, v in prev.items() if k not in stale}, **section, "variants": prev.get("variants", {}), "quick": quick}
        plot(summary, results, inits, ks, a["finetune_steps"], OUT_PNG if args.out == OUT_JSON else os.path.splitext(args.out)[0] + ".png",
             f"{a['encoder']} U-Net, {a['image_size']} px, fine-tune {a['finetune_steps']} steps x 8, "
             f"pretrain {a['pretrain_steps']} steps; "
             + (f"summary of cached runs ({len(results)})" if args.from_cache else f"wall {wall / 60:.1f} min"))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=float)
    log(f"\nwall {wall:.0f} s -> {args.out}")
    for name, row in summary["table"].items():
        log(f"{name:>26s} " + "  ".join(f"k={k}: {v['mean_dice']:.3f}±{v['sd']:.3f} (s90 {v['steps_to_90pct_mean']})" for k, v in row.items()))
    for name, gl in summary["goal"].items():
        log(f"{name:>26s} gain k<=10 min {gl['min_gain_k_le_10']}, "
            f"reach random final within 1/3 steps: {gl['fraction_of_runs_reaching_random_final_within_third']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
