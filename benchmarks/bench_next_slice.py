#!/usr/bin/env python
"""Next slice (issue 14): which slice to annotate next, inside one study (--mode within) and across studies before
any model exists (--mode cold), against random and evenly spaced picking. Ground truth plays the annotator.

--mode within: one held-out hippocampus volume at a time. Round 0: one slice (--start: the middle of the structure's
extent, where an annotator starts, = even's round 0; or a random slice showing it; the same for every strategy); each round adds one slice,
4 rounds. After each round
the study is completed and scored (whole-volume Dice, mean of the anterior / posterior classes):

  completion = the product's prediction path with the user's labels (active.respect_annotation: each class between
  its outermost drawn slices from fill-between interpolation, the model beyond them, components touching the drawing,
  drawn slices back as drawn), with ONE model per seed, trained once on sparse slices of other pool volumes
  (--model-volumes volumes x --model-slices random slices showing hippocampus, compact U-Net from the cached
  position-inpainting init of bench_label_efficiency, --model-steps steps). It stands in for the study's own model,
  which the product retrains after every drawn slice: retraining per (volume, round, strategy, seed) is 720+ trainings,
  beyond this CPU budget. The same completion for every strategy keeps the comparison fair; what a ranking can use is
  the current completion and the model's probabilities, never the ground truth.

  strategies: random (uniform over the unannotated slices), even (the baseline an annotator uses by eye, from the
  ground truth: r+1 slices at the (i+1)/(r+2) quantiles of the structure's true extent, re-placed each round),
  gap / gap-endX / expected-error-wW (napari_ssl.active.next_slice; X = end_weight, W = window).

--mode cold: round 0 across volumes, no model yet. --cold-n slices are picked from the rank pool (the 200 pool volumes
minus the validation ones) either at random or by napari_ssl.active.cold_start (TypiClust-style: k-means on the
pretrained encoder's slice embedding, the most typical slice of each cluster, one per volume); a model is trained on
the picks (same recipe, same training seed) and scored on the test volumes. Paired per seed.

Choices are made with --split val (volumes of the 200-volume pool), the table with --split test (the 60 highest).
  nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_next_slice.py --mode within --split test
  nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_next_slice.py --mode cold --split test
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import bench_study_completion as sc  # noqa: E402  (volume list, loading, Dice, quantile slices, pretrained init)

RESULTS = os.path.join(HERE, "results")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--mode", choices=("within", "cold"), default="within")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--volumes", type=int, default=0, help="scored volumes (default: val 30 of the pool, test all 60)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--start", choices=("middle", "random"), default="middle",
                   help="round 0's slice, the same for every strategy: the middle of the structure's extent (where an annotator starts; "
                        "= even's round 0) or a random slice showing it")
    p.add_argument("--strategies", default=None, help="within: random,even,gap,expected-error-w2 ...; cold: random,even,typiclust (the defaults)")
    p.add_argument("--model-volumes", type=int, default=20)
    p.add_argument("--model-slices", type=int, default=2)
    p.add_argument("--model-steps", type=int, default=200)
    p.add_argument("--cold-n", type=int, default=8, help="--mode cold: slices picked before the first model")
    p.add_argument("--cold-steps", type=int, default=200)
    p.add_argument("--cold-class-balance", type=float, default=0.5,
                   help="--mode cold: class-balanced cross-entropy (weights frequency ** -x); without it models trained on a few "
                        "slices of many volumes often collapsed to background (Dice ~0 in 3 of 15 rounds of a first run)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--encoder", default="mobilenetv3-small-lite")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "next_slice"))
    p.add_argument("--pretrain-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "napari_ssl_bench", "label_efficiency"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    if a.strategies is None:
        a.strategies = "random,even,gap,expected-error-w1-g1" if a.mode == "within" else "random,even,typiclust"
    if a.quick:
        a.volumes, a.seeds, a.model_steps, a.cold_steps, a.model_volumes = 3, 1, 20, 20, 4
    return a


def split_names(split: str, n: int) -> tuple[list[str], list[str]]:
    """(scored volumes, model-training / rank-pool volumes): never overlapping, never a test volume in training."""
    names = sc.volume_ids()
    pool = names[: sc.N_POOL]
    if split == "val":
        scored = pool[5::10][: (n or 20)] + pool[7::10][: max(0, (n or 30) - 20)]
    else:
        scored = names[sc.N_POOL:][: (n or 60)]
    train = [v for v in pool if v not in scored]
    return scored, train


def train_model(train_names: list[str], n_slices: int, steps: int, seed: int, a, picks: dict | None = None, class_balance: float = 0.0):
    """A compact U-Net from the pretrained init, trained on sparse slices (random ones showing hippocampus, or `picks`:
    {volume: [slices]}, a slice without hippocampus counting as annotated-empty)."""
    import torch

    from napari_ssl.data.labelled_slices import AugmentConfig, LabelledSliceDataset, LabelledVolume
    from napari_ssl.train.finetune import FinetuneConfig, build_initial_model
    from napari_ssl.train.loop import train_unet

    rng = np.random.default_rng(5000 + seed)
    vols = []
    for name in train_names:
        img, lab = sc.load(name)
        if picks is None:
            fg = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
            zs = rng.choice(fg, size=min(n_slices, fg.size), replace=False)
        else:
            zs = picks.get(name, [])
            if not len(zs):
                continue
        ann = np.zeros(lab.shape[0], bool)
        ann[list(zs)] = True
        vols.append(LabelledVolume(image=img, labels=np.where(ann[:, None, None], lab, 0).astype(np.uint8), annotated=ann))
    pre = sc.pretrained_dir({"image_size": a.image_size, "encoder": a.encoder, "device": "cpu", "pretrain_dir": a.pretrain_dir,
                             "pretrain_steps": a.pretrain_steps})
    cfg = FinetuneConfig(images=[], labels=[], out="", encoder_weights=pre, encoder=a.encoder, transfer_decoder=True)
    torch.manual_seed(seed)
    unet, _ = build_initial_model(cfg, sc.N_CLASSES + 1)
    ds = LabelledSliceDataset(vols, a.image_size, 1, AugmentConfig())
    unet, _ = train_unet(unet, ds, steps=steps, batch_size=8, lr=3e-3, loss="dice-ce", seed=seed, devices="cpu", class_balance=class_balance)
    return unet.cpu().eval()


def complete(pred, lab: np.ndarray, ann: np.ndarray):
    """The product's completion of the study from the drawn slices (a copy of `pred` with the drawing put in)."""
    from napari_ssl.active.respect_annotation import respect_annotation

    p = copy.deepcopy(pred)
    return respect_annotation(p, np.where(ann[:, None, None], lab, 0).astype(np.uint8), ann, keep_connected=True, fill_between=True)


def pick(strategy: str, pred, done, ann: np.ndarray, lab: np.ndarray, rng) -> int:
    from napari_ssl.active.next_slice import rank_next_slices

    if strategy == "random":
        return int(rng.choice(np.flatnonzero(~ann)))
    user = np.where(ann[:, None, None], lab, 0)
    if strategy == "gap" or strategy.startswith("gap-end"):
        ew = float(strategy[len("gap-end"):]) if strategy.startswith("gap-end") else 1.0
        return rank_next_slices(done.labels, ann, user, n=1, strategy="gap", end_weight=ew)[0]["slice"]
    if strategy == "default":  # the product's default ranking with its default settings, from the prediction path's slice_error
        return rank_next_slices(done.labels, ann, user, n=1, slice_error=done.slice_error)[0]["slice"]
    if strategy.startswith("expected-error-"):  # expected-error-wW[-gP]: window W, x stretch length ** P
        spec, _, gp = strategy.partition("-g")
        w = -1 if spec == "expected-error-bracket" else int(spec[len("expected-error-w"):])
        return rank_next_slices(done.labels, ann, user, n=1, strategy="expected-error", probabilities=pred.probabilities, window=w,
                                gap_power=float(gp or 0))[0]["slice"]
    raise SystemExit(f"unknown strategy {strategy}")


def run_within(a) -> dict:
    import torch

    from napari_ssl.active.predict import predict_array

    torch.set_num_threads(1)
    scored, train = split_names(a.split, a.volumes)
    strategies = [s for s in a.strategies.split(",") if s]
    rows = []
    t0 = time.time()
    for seed in range(a.seeds):
        rng_m = np.random.default_rng(seed)
        model_vols = sorted(rng_m.choice(len(train), size=min(a.model_volumes, len(train)), replace=False).tolist())
        ts = time.time()
        unet = train_model([train[i] for i in model_vols], a.model_slices, a.model_steps, seed, a)
        print(f"[seed {seed}] completion model trained in {time.time() - ts:.0f} s", flush=True)
        for vi, name in enumerate(scored):
            img, lab = sc.load(name)
            with torch.no_grad():
                pred = predict_array(unet, img, image_size=a.image_size, in_channels=1)
            fg = np.flatnonzero(lab.reshape(lab.shape[0], -1).any(1))
            rng0 = np.random.default_rng(seed * 100003 + vi)
            start = int(rng0.choice(fg)) if a.start == "random" else sc.quantile_slices(lab, 1)[0]
            raw = sc.dice(pred.labels, lab)
            for s in strategies:
                rng = np.random.default_rng(seed * 7919 + vi * 31 + 1)
                ann = np.zeros(lab.shape[0], bool)
                picks = []
                dices = []
                done = None  # the completion of the previous round
                for r in range(a.rounds + 1):
                    if s == "even":
                        ann = np.zeros(lab.shape[0], bool)
                        ann[sc.quantile_slices(lab, r + 1)] = True
                        picks = [int(z) for z in np.flatnonzero(ann)]
                    elif r == 0:
                        ann[start] = True
                        picks = [start]
                    else:
                        z = pick(s, pred, done, ann, lab, rng)
                        assert not ann[z], "picked an annotated slice"
                        ann[z] = True
                        picks.append(z)
                    done = complete(pred, lab, ann)
                    dices.append(sc.dice(done.labels, lab))
                rows.append({"seed": seed, "volume": name, "strategy": s, "dice": dices, "picks": picks, "model_dice": raw})
            if (vi + 1) % 10 == 0:
                print(f"  [seed {seed}] {vi + 1}/{len(scored)} volumes, {time.time() - t0:.0f} s", flush=True)
    return {"rows": rows, "summary": summarize_within(rows, strategies, a.rounds), "scored": scored}


def summarize_within(rows: list[dict], strategies: list[str], rounds: int) -> dict:
    seeds = sorted({r["seed"] for r in rows})
    vols = sorted({r["volume"] for r in rows})
    D = {s: np.array([[next(r["dice"] for r in rows if r["seed"] == k and r["volume"] == v and r["strategy"] == s) for v in vols] for k in seeds])
         for s in strategies}  # (seeds, volumes, rounds+1)
    out = {"seeds": len(seeds), "volumes": len(vols), "model_dice_mean": float(np.mean([r["model_dice"] for r in rows]))}
    for s in strategies:
        m = D[s].mean(1)  # (seeds, rounds+1)
        e = {"mean_dice_per_round": m.mean(0).round(4).tolist(), "sd_over_seeds_per_round": m.std(0).round(4).tolist(),
             "mean_dice_rounds_1_4": round(float(m[:, 1:].mean()), 4)}
        for b in ("random", "even"):
            if b == s or b not in D:
                continue
            d = D[s] - D[b]  # paired per seed and volume
            per_seed = d[:, :, 1:].mean((1, 2))
            e[f"paired_diff_vs_{b}"] = {"mean_rounds_1_4": round(float(per_seed.mean()), 4), "sd_over_seeds": round(float(per_seed.std()), 4),
                                        "per_seed": per_seed.round(4).tolist(),
                                        "per_round": d.mean(1).mean(0).round(4).tolist(),
                                        "per_round_sd_over_seeds": d.mean(1).std(0).round(4).tolist(),
                                        "volumes_better": f"{int((d[:, :, 1:].mean((0, 2)) > 0).sum())}/{len(vols)}"}
        out[s] = e
    return out


def plot(res: dict, path: str, title: str) -> None:
    """Left: mean Dice per round (error bars: sd over seeds); right: paired difference to the better baseline's rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = {k: v for k, v in res["summary"].items() if isinstance(v, dict)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s, v in summ.items():
        x = list(range(len(v["mean_dice_per_round"])))
        axes[0].errorbar(x, v["mean_dice_per_round"], yerr=v["sd_over_seeds_per_round"], marker="o", capsize=3, label=s)
        for b, ls in (("random", "--"), ("even", "-")):
            d = v.get(f"paired_diff_vs_{b}")
            if d:
                axes[1].plot(x, d["per_round"], ls, marker="o", label=f"{s} - {b}")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].axhline(0.03, color="gray", lw=0.8, ls=":")
    axes[0].set_title("mean Dice (error bars: sd over seeds)", fontsize=9)
    axes[1].set_title("paired difference (same seed, same volumes); dotted: goal +0.03", fontsize=9)
    from plot_common import finish_figure

    finish_figure(fig, axes, "round (0: start)", title, path)


def main(argv=None) -> int:
    a = parse_args(argv)
    sc._setup_worker()
    os.makedirs(RESULTS, exist_ok=True)
    os.makedirs(a.work_dir, exist_ok=True)
    name = a.name or f"bench_next_slice_{a.mode}" + ("_val" if a.split == "val" else "") + ("_quick" if a.quick else "")
    t0, load0 = time.time(), os.getloadavg()[0]
    if a.mode == "within":
        res = run_within(a)
    else:
        from bench_next_slice_cold import run_cold

        res = run_cold(a)
    res.update({"command": "nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_next_slice.py "
                           + " ".join(argv if argv is not None else sys.argv[1:]),
                "settings": {k: v for k, v in vars(a).items() if k not in ("work_dir", "pretrain_dir")},
                "wall_seconds": round(time.time() - t0, 1), "load_average": {"start": load0, "end": os.getloadavg()[0]}})
    path = os.path.join(RESULTS, name + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    plot(res, path[:-5] + ".png", f"next slice, --mode {a.mode}, {a.split} split, {len(res['scored'])} scored volumes, {a.seeds} seeds")
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
