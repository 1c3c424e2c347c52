"""--mode cold of bench_next_slice.py: picks across studies, from the first pick (no model) on.

Rank pool: the 200 pool volumes minus the scored validation ones. Round 0: --cold-n slices; each later round adds
--per-round (cold-n / 2) slices; after each round a model is trained from the pretrained init on every slice picked
so far (the same recipe and training seed for every strategy) and scored on the scored volumes (whole-volume Dice of
the model's prediction, mean of the two classes, mean over volumes).

  random     uniform over the unannotated slices of the rank pool
  even       new volumes drawn at random, one slice each, at relative depths (i+1)/(n+1) of the volume (spread in
             depth and over studies, no model, no ground truth)
  typiclust  napari_ssl.active.cold_start.typiclust_picks on the pretrained encoder's slice embedding (clusters =
             annotated + n, the most typical slice of the largest uncovered clusters, one per volume while possible)
"""
from __future__ import annotations

import time

import bench_study_completion as sc
import numpy as np


def evaluate(unet, names, image_size: int) -> float:
    import torch

    from napari_ssl.active.predict import predict_array

    ds = []
    for n in names:
        img, lab = sc.load(n)
        with torch.no_grad():
            ds.append(sc.dice(predict_array(unet, img, image_size=image_size, in_channels=1).labels, lab))
    return float(np.mean(ds))


def run_cold(a) -> dict:
    import torch
    from bench_next_slice import split_names, train_model

    from napari_ssl.active.cold_start import load_encoder, slice_embeddings, typiclust_picks

    torch.set_num_threads(1)
    scored, pool = split_names(a.split, a.volumes)
    per_round = max(1, a.cold_n // 2)
    strategies = [s for s in a.strategies.split(",") if s in ("random", "even", "typiclust")] or ["random", "even", "typiclust"]
    pre = sc.pretrained_dir({"image_size": a.image_size, "encoder": a.encoder, "device": "cpu", "pretrain_dir": a.pretrain_dir,
                             "pretrain_steps": a.pretrain_steps})
    enc, meta = load_encoder(pre)
    t0 = time.time()
    emb, index = slice_embeddings(enc, [sc.load(n)[0] for n in pool], int(meta.get("image_size") or a.image_size))
    print(f"embedded {len(index)} slices of {len(pool)} volumes in {time.time() - t0:.0f} s", flush=True)
    depth = {v: sc.load(n)[0].shape[0] for v, n in enumerate(pool)}
    fgmap = {(v, z): bool(sc.load(pool[v])[1][z].any()) for v, z in index}
    rows = []
    for seed in range(a.seeds):
        for s in strategies:
            rng = np.random.default_rng(9000 + seed)
            ann: set = set()
            dices, picks_all = [], []
            for r in range(a.rounds + 1):
                n = a.cold_n if r == 0 else per_round
                if s == "random":
                    free = [t for t in index if t not in ann]
                    new = [free[i] for i in rng.choice(len(free), size=n, replace=False)]
                elif s == "even":
                    used = {v for v, _ in ann}
                    vols = rng.choice([v for v in depth if v not in used], size=n, replace=False)
                    new = [(int(v), int(round((depth[v] - 1) * (i + 1) / (n + 1)))) for i, v in enumerate(vols)]
                else:
                    new = [(p["volume"], p["slice"]) for p in typiclust_picks(emb, index, n, ann, seed=seed)]
                assert not set(new) & ann and len(set(new)) == n
                ann |= set(new)
                picks_all.append([list(t) for t in new])
                by_vol: dict = {}
                for v, z in ann:
                    by_vol.setdefault(pool[v], []).append(z)
                ts = time.time()
                unet = train_model(list(by_vol), 0, a.cold_steps, seed * 100 + r, a, picks=by_vol, class_balance=a.cold_class_balance)
                d = evaluate(unet, scored, a.image_size)
                dices.append(d)
                fg = float(np.mean([fgmap[t] for t in new]))
                print(f"[seed {seed}] {s:>9} round {r}: {len(ann)} slices in {len(by_vol)} volumes, Dice {d:.3f} "
                      f"(picked with hippocampus {fg:.2f}; {time.time() - ts:.0f} s)", flush=True)
                rows.append({"seed": seed, "strategy": s, "round": r, "slices": len(ann), "volumes": len(by_vol), "dice": d,
                             "picked_foreground_fraction": fg, "new_picks": picks_all[-1]})
    return {"rows": rows, "summary": summarize_cold(rows, strategies, a.rounds), "scored": scored, "rank_pool_volumes": len(pool)}


def summarize_cold(rows: list[dict], strategies: list[str], rounds: int) -> dict:
    seeds = sorted({r["seed"] for r in rows})
    D = {s: np.array([[next(r["dice"] for r in rows if r["seed"] == k and r["strategy"] == s and r["round"] == i) for i in range(rounds + 1)]
                      for k in seeds]) for s in strategies}
    out = {}
    for s in strategies:
        e = {"mean_dice_per_round": D[s].mean(0).round(4).tolist(), "sd_over_seeds_per_round": D[s].std(0).round(4).tolist()}
        for b in ("random", "even"):
            if b == s or b not in D:
                continue
            d = D[s] - D[b]
            e[f"paired_diff_vs_{b}"] = {"round0": round(float(d[:, 0].mean()), 4), "round0_per_seed": d[:, 0].round(4).tolist(),
                                        "mean_rounds_1_4": round(float(d[:, 1:].mean()), 4),
                                        "sd_over_seeds_rounds_1_4": round(float(d[:, 1:].mean(1).std()), 4),
                                        "per_round": d.mean(0).round(4).tolist(), "wins_seed_rounds": f"{int((d > 0).sum())}/{d.size}"}
        out[s] = e
    return out
