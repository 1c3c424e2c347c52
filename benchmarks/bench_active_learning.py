#!/usr/bin/env python
"""Active learning on msd_hippocampus: slices picked by `suggest` versus slices picked at random.

The ground-truth label maps play the annotator: a picked slice is "annotated" by copying its true
labels (a slice without hippocampus becomes an annotated-empty slice). Pool: the 200 lowest-numbered
volumes (the annotator only ever annotates whole slices of those); test: the other 60, never seen in
training. For each seed:

  round 0   `init` slices (holding hippocampus, in distinct volumes, drawn at random with the seed;
            the same for every strategy) -> fine-tune a U-Net from scratch (`steps_first` steps)
  round r   each strategy adds `per_round` slices of the rank pool, then fine-tunes for `steps` steps,
            warm-started from its own previous round's model (--init-model, as the product's
            active-learning loop does). Both strategies use the same training seed and budget.

Strategies
  random    uniform over the unannotated slices of the rank pool
  suggest   napari_ssl.api.suggest_pool (the product code, its defaults): TTA predictive entropy x P(structure) per slice, ranked
            over the union of the rank-pool volumes, spacing within a volume and at most
            ceil(n / volumes) picks per volume
  suggest-v1  (--strategies) the first version: without the cross-volume depth spacing
  suggest-entropy  (--strategies) suggest with score="entropy" (plain slice-mean entropy; the default until the run on record)
  suggest-fg  (--strategies) suggest with score="foreground-entropy" (= suggest since the run on record)
  uncertainty  (ablation, --strategies) the top-`per_round` slices by the same uncertainty, no diversity

The rank pool is `rank_volumes` volumes drawn from the 200 pool volumes with the seed (predicting all
200 every round costs more than the CPU budget); random draws from the same slices.
Reported: Dice (3-D, per test volume, then the mean over test volumes) per class and mean, per round,
per strategy and seed; the mean over seeds; suggest/random ratios and paired differences.

Default (CPU, one thread): 32 px, resnet18, batch 4, 150 + 5 x 80 steps, 3 seeds, 16 rank volumes. One seed of
random + one suggest variant took ~7 min on a lightly loaded 2-core machine (load ~5) and ~25 min at load ~15, so
the default run takes ~20-75 min. Seeds can run in separate processes (--seed-start) and be combined with --merge.
Committed result (benchmarks/results/bench_active_learning.json): random, suggest-entropy, suggest-v1, suggest-fg, 3 seeds,
made with (one process at a time, except seed 1 and 2 of suggest overlapping the others):
  --strategies random,suggest-v1 (seeds 0; then --seed-start 1/2 --seeds 1), --strategies suggest (then ranking by plain
  entropy, renamed suggest-entropy in the JSON), --strategies suggest-fg, then --merge of the five JSON files.
Bigger (GPU): --image-size 64 --batch-size 16 --steps-first 500 --steps 300 --rank-volumes 200 --seeds 5 --device cuda
Quick smoke run: --quick
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CLASSES = ["anterior", "posterior"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "msd_hippocampus"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-start", type=int, default=0, help="first seed (run seeds in separate processes, then --merge)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--init", type=int, default=2, help="slices annotated before round 1")
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps-first", type=int, default=150)
    ap.add_argument("--steps", type=int, default=80, help="fine-tuning steps per later round (warm start)")
    ap.add_argument("--from-scratch", action="store_true", help="retrain from scratch each round (steps-first steps) instead of warm-starting")
    ap.add_argument("--rank-volumes", type=int, default=16, help="pool volumes (of 200) whose slices are ranked / drawn from")
    ap.add_argument("--test-volumes", type=int, default=60, help="how many of the 60 test volumes to evaluate on")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--no-tta", action="store_true", help="suggest with single-pass uncertainty")
    ap.add_argument("--strategies", default="random,suggest")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    ap.add_argument("--name", default="bench_active_learning")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 rounds, 4 test volumes, few steps")
    ap.add_argument("--merge", nargs="+", metavar="JSON[:OLD=NEW,...]",
                    help="combine the results of runs made with the same settings and seeds (e.g. one strategy each, run in "
                         "parallel) into --name, renaming strategies; round 0 must agree (it is deterministic); no training. "
                         "A .log (a run's stdout, given after the JSONs) adds the rounds of runs stopped early (mean Dice only)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.rounds, a.test_volumes, a.steps_first, a.steps, a.rank_volumes = 1, 2, 4, 10, 5, 4
        a.name = a.name + "_quick"
    return a


def volume_number(path: str) -> int:
    return int(re.findall(r"(\d+)", os.path.basename(path))[-1])


def load_case(data: str, name: str):
    from napari_ssl import api

    img = api.load_volume(os.path.join(data, "images", name))
    lab = api.load_volume(os.path.join(data, "labels", name))
    return img, np.asarray(lab.array).astype(np.uint8)


def dice_per_class(pred: np.ndarray, gt: np.ndarray, k: int) -> list[float]:
    out = []
    for c in range(1, k + 1):
        p, t = pred == c, gt == c
        den = int(p.sum() + t.sum())
        out.append(float(2 * (p & t).sum() / den) if den else 1.0)
    return out


def evaluate(model_dir: str, test, device: str) -> dict:
    from napari_ssl.active.predict import load_segmentation_model, predict_array
    from napari_ssl.data.normalize import normalize
    from napari_ssl.train.finetune import resolve_normalization

    unet, meta = load_segmentation_model(model_dir, device)
    per_vol = []
    for img, gt in test:
        norm = normalize(img.array, resolve_normalization(meta.get("normalization"), img.modality))
        pred = predict_array(unet, norm, image_size=int(meta["image_size"]), in_channels=int(meta["in_channels"]), batch_size=256)
        per_vol.append(dice_per_class(pred.labels, gt, len(CLASSES)))
    d = np.asarray(per_vol)
    return {"dice": dict(zip(CLASSES, d.mean(0).round(5).tolist())), "mean_dice": round(float(d.mean()), 5)}


def training_set(pool, picks: dict[int, set]):
    """(images, sparse label arrays, empty-slice lists) for the volumes holding picks."""
    imgs, labs, empties = [], [], []
    for v in sorted(picks):
        if not picks[v]:
            continue
        img, gt = pool[v]
        sparse = np.zeros_like(gt)
        zs = sorted(picks[v])
        sparse[zs] = gt[zs]
        imgs.append(img)
        labs.append(sparse)
        empties.append([z for z in zs if not gt[z].any()])
    return imgs, labs, empties


def finetune(pool, picks, out, args, seed: int, steps: int, init_model=None) -> str:
    from napari_ssl import api

    imgs, labs, empties = training_set(pool, picks)
    return api.finetune(imgs, labs, out, classes=CLASSES, empty_slices=empties, steps=steps, init_model=init_model,
                        encoder=None if init_model else args.encoder, image_size=None if init_model else args.image_size,
                        batch_size=args.batch_size, seed=seed, preview_every_s=0.0, devices=args.device)


def pick_random(pool, picks, n, rng) -> list[tuple[int, int]]:
    cands = [(v, z) for v, (img, _) in enumerate(pool) for z in range(img.shape[0]) if z not in picks.get(v, ())]
    idx = rng.choice(len(cands), size=min(n, len(cands)), replace=False)
    return [cands[i] for i in idx]


def pick_suggest(pool, picks, n, model_dir, args, variant: str = "suggest") -> list[tuple[int, int]]:
    from napari_ssl import api

    vols = [img for img, _ in pool]
    labels = []
    empties = []
    for v, (img, gt) in enumerate(pool):
        sparse = np.zeros_like(gt)
        zs = sorted(picks.get(v, ()))
        sparse[zs] = gt[zs]
        labels.append(sparse)
        empties.append([z for z in zs if not gt[z].any()])
    extra = {"suggest": {"score": "foreground-entropy"},  # the product's default at the run on record (since issue 14: typiclust)
             "suggest-entropy": {"score": "entropy"},  # the earlier default: plain slice-mean entropy
             "suggest-v1": {"depth_spacing": 0.0, "score": "entropy"},  # first version: spacing within a volume + per-volume cap only
             "suggest-fg": {"score": "foreground-entropy"},  # uncertainty where the structure may be
             "uncertainty": {"min_distance": 0, "max_per_volume": n, "depth_spacing": 0.0, "score": "entropy"}}[variant]  # no diversity at all
    res = api.suggest_pool(model_dir, vols, labels, n=n, empty_slices=empties, tta=not args.no_tta, batch_size=256, device=args.device, **extra)
    return [(p["volume"], p["slice"]) for p in res]


def summarize(results: dict, strategies: list[str]) -> dict:
    """Means over the seeds that reached each round (a run cut short contributes its finished rounds)."""
    summ: dict = {}
    for s in strategies:
        runs = [results[seed][s] for seed in results if s in results[seed]]
        if not runs:
            continue
        r = max(len(x) for x in runs)
        at = [[x[i] for x in runs if len(x) > i] for i in range(r)]
        mean = [np.array([row["mean_dice"] for row in rows]) for rows in at]
        per_class = {c: [round(float(np.mean(v)), 4) if (v := [row["dice"][c] for row in rows if row.get("dice")]) else None for rows in at]
                     for c in CLASSES}
        summ[s] = {"seeds_per_round": [len(rows) for rows in at], "slices": [rows[0]["annotated_slices"] for rows in at],
                   "mean_dice": [round(float(m.mean()), 4) for m in mean], "mean_dice_std_over_seeds": [round(float(m.std()), 4) for m in mean],
                   "dice_per_class": per_class,
                   "picked_foreground_fraction_per_round": [round(float(np.mean([row["picked_foreground_fraction"] for row in rows])), 3)
                                                            for rows in at[1:]]}
    if "random" in summ:
        for s in summ:
            if s == "random":
                continue
            per_round, allv, wins = [], [], 0
            for i in range(1, len(summ[s]["mean_dice"])):
                d = [results[k][s][i]["mean_dice"] - results[k]["random"][i]["mean_dice"] for k in results
                     if s in results[k] and "random" in results[k] and len(results[k][s]) > i and len(results[k]["random"]) > i]
                per_round.append({"round": i, "seeds": len(d), "mean_diff": round(float(np.mean(d)), 4) if d else None})
                allv += d
                wins += sum(x > 0 for x in d)
            summ[s]["paired_diff_to_random_per_round"] = per_round
            if allv:
                summ[s]["paired_diff_to_random_mean"] = round(float(np.mean(allv)), 4)
                summ[s]["wins_vs_random"] = f"{wins}/{len(allv)} (seed, round) pairs"
    return summ


def parse_log(path: str) -> dict:
    """Rounds from a run's progress lines (for a run stopped before it wrote its JSON): mean Dice only."""
    pat0 = re.compile(r"^\[seed (\d+)\] round 0: (\d+) slices, mean Dice ([\d.]+)")
    pat = re.compile(r"^\[seed (\d+)\]\s+(\S+) round (\d+): (\d+) slices, mean Dice ([\d.]+) \(picks (\[.*?\]), fg ([\d.]+);")
    out: dict = {}
    r0: dict = {}
    with open(path) as f:
        for line in f:
            if m := pat0.match(line):
                r0[int(m[1])] = {"round": 0, "annotated_slices": int(m[2]), "mean_dice": float(m[3]), "dice": None,
                                 "picked_foreground_fraction": 1.0, "from_log": True}
            elif m := pat.match(line):
                seed, strat, rnd = int(m[1]), m[2], int(m[3])
                rows = out.setdefault(seed, {}).setdefault(strat, [dict(r0[seed])])
                if len(rows) != rnd:
                    raise SystemExit(f"{path}: seed {seed} {strat}: round {rnd} out of order")
                rows.append({"round": rnd, "annotated_slices": int(m[4]), "mean_dice": float(m[5]), "dice": None,
                             "new_picks": [list(t) for t in eval(m[6], {"__builtins__": {}})], "picked_foreground_fraction": float(m[7]),
                             "from_log": True})
    return out


def plot(summary: dict, path: str, title: str, results: dict | None = None) -> None:
    """Left: Dice per seed and strategy (thin) and the mean over seeds; middle: paired difference to random
    (per seed, same seed = same initial slices and training seeds); right: per-class Dice (seeds with it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = {s: f"C{i}" for i, s in enumerate(summary)}
    for s, v in summary.items():
        if results:
            for k in results:
                rows = results[k].get(s) or []
                axes[0].plot([r["annotated_slices"] for r in rows], [r["mean_dice"] for r in rows], "-", color=colors[s], alpha=0.3, lw=1)
                if s != "random" and "random" in results[k]:
                    n = min(len(rows), len(results[k]["random"]))
                    axes[1].plot([rows[i]["annotated_slices"] for i in range(1, n)],
                                 [rows[i]["mean_dice"] - results[k]["random"][i]["mean_dice"] for i in range(1, n)], "o", color=colors[s], alpha=0.5)
        axes[0].plot(v["slices"], v["mean_dice"], "o-", color=colors[s], lw=2, label=f"{s} (seeds per round {v['seeds_per_round']})")
        if s != "random" and v.get("paired_diff_to_random_per_round"):
            pr = [(v["slices"][d["round"]], d["mean_diff"]) for d in v["paired_diff_to_random_per_round"] if d["mean_diff"] is not None]
            axes[1].plot(*zip(*pr), "-", color=colors[s], lw=2, label=f"{s} - random (mean {v.get('paired_diff_to_random_mean')})")
        for c, ls in zip(CLASSES, ("-", "--")):
            pts = [(x, y) for x, y in zip(v["slices"], v["dice_per_class"][c]) if y is not None]
            if pts:
                axes[2].plot(*zip(*pts), ls, marker="o", color=colors[s], label=f"{s} {c}")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[0].set_title("mean Dice over 60 test volumes (thin: one seed)", fontsize=9)
    axes[1].set_title("paired Dice difference to random (points: seeds)", fontsize=9)
    axes[2].set_title("Dice per class (mean over seeds with per-class results)", fontsize=9)
    from plot_common import finish_figure

    finish_figure(fig, axes, "annotated slices", title, path)


def merge(args) -> int:
    """Combine runs made with identical settings and seeds into one result (JSON + plot)."""
    results: dict = {}
    configs, sources = [], []
    for spec in args.merge:
        path, _, ren = spec.partition(":")
        renames = dict(r.split("=", 1) for r in ren.split(",") if r)
        if path.endswith(".log"):
            sources.append({"file": os.path.basename(path), "renamed": renames, "note": "progress lines: mean Dice only"})
            for seed, per in parse_log(path).items():
                for strat, rows in per.items():
                    dst = results.setdefault(seed, {})
                    name = renames.get(strat, strat)
                    if name in dst:
                        continue  # the JSON (with per-class Dice) wins
                    for other in dst.values():
                        if abs(other[0]["mean_dice"] - rows[0]["mean_dice"]) > 1e-3:
                            raise SystemExit(f"seed {seed}: round 0 differs between runs; not comparable")
                    dst[name] = rows
            continue
        with open(path) as f:
            run = json.load(f)
        configs.append(run["config"])
        sources.append({"file": os.path.basename(path), "strategies": run["config"]["strategies"], "renamed": renames,
                        "elapsed_s": run.get("elapsed_s"), "complete": run.get("complete")})
        for seed, per in run["results"].items():
            for strat, rows in per.items():
                name = renames.get(strat, strat)
                dst = results.setdefault(int(seed), {})
                for other in dst.values():  # round 0 is shared: the runs must agree on it
                    if abs(other[0]["mean_dice"] - rows[0]["mean_dice"]) > (1e-3 if other[0].get("from_log") else 1e-6):
                        raise SystemExit(f"seed {seed}: round 0 differs between runs "
                                         f"({other[0]['mean_dice']} vs {rows[0]['mean_dice']}); not comparable")
                if name in dst:
                    raise SystemExit(f"strategy {name} appears twice for seed {seed}; rename it (file.json:{strat}=NEW)")
                dst[name] = rows
    keys = ("rounds", "init", "per_round", "image_size", "batch_size", "steps_first", "steps", "from_scratch", "rank_volumes",
            "test_volumes", "encoder", "no_tta")
    for c in configs[1:]:
        diff = [k for k in keys if c.get(k) != configs[0].get(k)]
        if diff:
            raise SystemExit(f"runs differ in {diff}; not comparable")
    seeds = sorted(results)
    configs = [c for c in configs if c]
    names = {s for k in seeds for s in results[k]}
    order = ["random"] + sorted(s for s in names if s != "random")
    results = {k: {s: results[k][s] for s in order if s in results[k]} for k in seeds}
    summary = summarize(results, order)
    config = dict(configs[0], strategies=order, merged_from=sources)
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, args.name + ".json")
    with open(json_path, "w") as f:
        json.dump({"benchmark": "active learning (suggest vs random)", "config": config, "summary": summary,
                   "results": {str(k): v for k, v in results.items()}, "round0_identical_across_runs": True}, f, indent=1)
    c = configs[0]
    title = (f"msd_hippocampus active learning: {len(seeds)} seeds, {c['encoder']} {c['image_size']}px, "
             f"{'scratch' if c['from_scratch'] else 'warm start'}, {c['steps_first']}+{c['steps']} steps/round, {c['rank_volumes']} rank volumes, "
             f"{c['test_volumes']} test volumes")
    plot(summary, os.path.join(args.out, args.name + ".png"), title, results)
    print_summary(summary, json_path)
    return 0


def print_summary(summary: dict, json_path: str) -> None:
    print(f"-> {json_path}")
    for s, v in summary.items():
        extra = f"  paired diff vs random {v.get('paired_diff_to_random_mean')}, wins {v.get('wins_vs_random')}" if s != "random" else ""
        print(f"{s:>11}: mean Dice per round {v['mean_dice']}  picks with hippocampus {v['picked_foreground_fraction_per_round']}{extra}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    files = sorted((f for f in os.listdir(os.path.join(args.data, "images")) if f.endswith(".nii.gz")), key=volume_number)
    if len(files) < 260:
        print(f"expected 260 volumes in {args.data}, found {len(files)}", file=sys.stderr)
        return 2
    pool_files, test_files = files[:200], files[200:]
    t0 = time.time()
    test = [load_case(args.data, f) for f in test_files[: args.test_volumes]]
    print(f"loaded {len(test)} test volumes ({time.time() - t0:.1f}s)", flush=True)
    work = tempfile.mkdtemp(prefix="bench_al_")
    results: dict = {}
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, args.name + ".json")
    config = {k: v for k, v in vars(args).items() if k not in ("data", "out")}
    config.update({"pool": "200 lowest-numbered volumes", "test": f"{len(test)} of the other 60", "warm_start": not args.from_scratch,
                   "threads": torch.get_num_threads(), "strategies": strategies})

    def write(complete: bool) -> None:  # after every round, so a run stopped early keeps what it measured
        with open(json_path + ".partial", "w") as f:
            json.dump({"benchmark": "active learning (suggest vs random)", "config": config, "summary": summarize(results, strategies),
                       "results": {str(k): v for k, v in results.items()}, "elapsed_s": round(time.time() - t0, 1),
                       "complete": complete}, f, indent=1)
        os.replace(json_path + ".partial", json_path)

    try:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            rng = np.random.default_rng(1000 + seed)
            rank_idx = sorted(rng.choice(len(pool_files), size=min(args.rank_volumes, len(pool_files)), replace=False).tolist())
            pool = [load_case(args.data, pool_files[i]) for i in rank_idx]
            # round 0: `init` slices holding hippocampus, in distinct volumes
            vols0 = rng.choice(len(pool), size=min(args.init, len(pool)), replace=False)
            init_picks: dict[int, set] = {}
            for k in range(args.init):
                v = int(vols0[k % len(vols0)])
                fg = [z for z in np.flatnonzero(pool[v][1].reshape(pool[v][1].shape[0], -1).any(1)) if z not in init_picks.get(v, ())]
                init_picks.setdefault(v, set()).add(int(rng.choice(fg)))
            ts = time.time()
            m0 = finetune(pool, init_picks, os.path.join(work, f"s{seed}_r0"), args, seed=seed * 100, steps=args.steps_first)
            t_train = time.time() - ts
            ev0 = evaluate(m0, test, args.device)
            row0 = {"round": 0, "annotated_slices": args.init, **ev0, "picks": sorted([v, z] for v in init_picks for z in init_picks[v]),
                    "picked_foreground_fraction": 1.0, "train_s": round(t_train, 1)}
            print(f"[seed {seed}] round 0: {args.init} slices, mean Dice {ev0['mean_dice']:.3f} ({time.time() - t0:.0f}s)", flush=True)
            results[seed] = {s: [dict(row0)] for s in strategies}
            for s in strategies:
                picks = {v: set(zs) for v, zs in init_picks.items()}
                prev = m0
                for r in range(1, args.rounds + 1):
                    ts = time.time()
                    if s == "random":
                        new = pick_random(pool, picks, args.per_round, np.random.default_rng(seed * 1000 + r))
                    elif s in ("suggest", "suggest-entropy", "suggest-v1", "suggest-fg", "uncertainty"):
                        new = pick_suggest(pool, picks, args.per_round, prev, args, variant=s)
                    else:
                        raise SystemExit(f"unknown strategy {s}")
                    t_pick = time.time() - ts
                    for v, z in new:
                        assert z not in picks.get(v, ()), "picked an annotated slice"
                        picks.setdefault(v, set()).add(int(z))
                    ts = time.time()
                    out = os.path.join(work, f"s{seed}_{s}_r{r}")
                    if args.from_scratch:
                        m = finetune(pool, picks, out, args, seed=seed * 100 + r, steps=args.steps_first)
                    else:
                        m = finetune(pool, picks, out, args, seed=seed * 100 + r, steps=args.steps, init_model=prev)
                    t_train = time.time() - ts
                    ev = evaluate(m, test, args.device)
                    n_slices = sum(len(z) for z in picks.values())
                    fgf = float(np.mean([pool[v][1][z].any() for v, z in new]))
                    results[seed][s].append({"round": r, "annotated_slices": n_slices, **ev, "new_picks": [[int(v), int(z)] for v, z in new],
                                             "picked_foreground_fraction": fgf, "pick_s": round(t_pick, 1), "train_s": round(t_train, 1)})
                    print(f"[seed {seed}] {s:>11} round {r}: {n_slices} slices, mean Dice {ev['mean_dice']:.3f} "
                          f"(picks {new}, fg {fgf:.2f}; {time.time() - t0:.0f}s)", flush=True)
                    if prev != m0:
                        shutil.rmtree(prev, ignore_errors=True)
                    prev = m
                    write(complete=False)
            write(complete=seed == args.seed_start + args.seeds - 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(results, strategies)
    title = (f"msd_hippocampus active learning: {args.seeds} seeds, {args.encoder} {args.image_size}px, "
             f"{'scratch' if args.from_scratch else 'warm start'}, {args.steps_first}+{args.steps} steps/round, {args.rank_volumes} rank volumes, "
             f"{len(test)} test volumes")
    plot(summary, os.path.join(args.out, args.name + ".png"), title, results)
    print(f"done in {time.time() - t0:.0f}s")
    print_summary(summary, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
