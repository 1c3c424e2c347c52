"""Pretraining throughput per method vs the network work the method itself needs, in the same run.

    .venv/bin/python benchmarks/bench_pretrain_throughput.py [--image-size 64] [--batch-size 16] [--steps 40] [--rounds 2]

For every method the real engine (`run_pretraining`: Lightning Trainer, SliceDataset + DataLoader,
augmentations, heads, losses, momentum updates, loss logging, events, previews every 5 s) trains on
real MR volumes (msd_hippocampus); images/s is measured from the engine's progress events, after a
few warm-up steps, excluding start-up and the final save. Right before and after each engine run
(interleaved, in mirrored order, so a busy machine affects all alike) three baselines run on one fixed
real batch, each with the same optimizer the engine builds (`napari_ssl.pretext.base.adamw`):

  inherent   everything the *published method* computes per step, and nothing else: the forward and
             backward passes of all its networks at their configured sizes (encoder, projection /
             prediction heads, classifier / fusion heads, U-Net decoder), the no-grad passes of momentum
             copies, its loss, the optimizer step over all its trainable parameters and the EMA update
             (BYOL, MoCo). It calls the method's own modules and loss code on inputs prepared once outside
             the timing (augmented views, holes, rotations, patches, shifted stacks). A projection head is
             part of BYOL/SimCLR/MoCo/SimSiam/Barlow Twins/VICReg as published, so its cost is the method's,
             not the engine's; the same rule makes the rotation / relative-position classifier, the
             offset-heatmap fusion head and the in-painting decoder inherent.
  encoder    only the encoder passes (the old "inherent"): the U-Net (in-painting), the encoder on the
             2 views (joint embedding) plus a no-grad pass of the momentum copy (BYOL, MoCo), on the 2
             patches (relative position) or the 2 stacks (offset heatmap); optimizer over those networks.
             engine / encoder - 1 shows what the heads, losses and bookkeeping add on top.
  bare       one forward+backward+optimizer step of the encoder on the batch (the same for all methods).

Times are CPU seconds of this (1-thread) process, less inflated than wall-clock by other processes on a shared
machine (wall-clock is reported too); every measurement is repeated --rounds times, round-robin over the
methods, and medians are reported. The engine run also records how much of its CPU time is spent outside the
method's optimize_step (Lightning, data, logging, events, previews): a load-independent split of the overhead.

overhead = engine time per image / baseline time per image - 1. The goal is <= 15 % against "inherent":
what the engine adds around the method (data loading, augmentations, Lightning, logging, events, previews).
The method's own efficiency (heads, loss implementation) shows in the "encoder" column, not in the goal.
Writes benchmarks/results/bench_pretrain_throughput.{json,png}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_ssl.data.cache import load_prepared, normalization_specs  # noqa: E402
from napari_ssl.data.slices import SliceDataset  # noqa: E402
from napari_ssl.models.unet import build_encoder, build_unet  # noqa: E402
from napari_ssl.pretext import METHODS, get_method  # noqa: E402
from napari_ssl.pretext.base import adamw  # noqa: E402
from napari_ssl.pretext.rotation import rotate_batch  # noqa: E402
from napari_ssl.train.pretrain import PretrainConfig, run_pretraining  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
GOAL = 0.15


def data_paths(n):
    d = Path(os.environ.get("NAPARI_SSL_DATA", REPO.parent / "shared" / "data")) / "msd_hippocampus" / "images"
    return [str(p) for p in sorted(d.glob("hippocampus_*.nii.gz"))[:n]]


def time_steps(step, reps, warm=3):
    """Median (wall, CPU) seconds of `step`; CPU = this process's CPU time (all its threads)."""
    for _ in range(warm):
        step()
    ts = []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        ts.append((time.perf_counter() - w0, time.process_time() - c0))
    return np.median(np.array(ts), axis=0)


def fwd_bwd(net, inputs, extra=None):
    """A step function: forward+backward+AdamW of `net` on each input tensor (and no-grad passes of `extra`)."""
    opt = adamw(net.parameters(), lr=1e-4, weight_decay=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for x in inputs:
            out = net(x)
            out = out[-1] if isinstance(out, (list, tuple)) else out
            loss = loss + out.float().mean()
        if extra is not None:
            with torch.no_grad():
                for x in inputs:
                    extra(x)
        loss.backward()
        opt.step()

    return step


def baselines(method, cls, opts, x, c, size):
    """(bare step, encoder-passes step) for `method` on batch x (B, C, S, S)."""
    enc = build_encoder("resnet18", c)
    bare = fwd_bwd(enc, [x])
    if method == "inpainting":
        encoder = fwd_bwd(build_unet("resnet18", c, classes=1), [x])
    elif method == "rotation":
        encoder = bare
    elif method == "relative-position":
        m = cls("resnet18", c, size, **opts)
        patches = x[:, :, : m.patch, : m.patch].repeat(2, 1, 1, 1).contiguous()
        encoder = fwd_bwd(enc, [patches])
    elif method == "offset-heatmap":
        encoder = fwd_bwd(enc, [torch.cat([x, x])])
    else:  # joint embedding: two views; momentum methods also embed both views with the EMA copy
        momentum = copy.deepcopy(enc) if method in ("byol", "moco") else None
        encoder = fwd_bwd(enc, [x, x], extra=momentum)
    return bare, encoder


def inherent_step(method, cls, opts, batch, c, size):
    """A step function: the method's own networks + loss + optimizer step (+ EMA update) on inputs prepared once."""
    m = cls("resnet18", c, size, **opts)
    m.train()
    o = m.configure_optimizers(1e-4, 1e-4, 1000)
    opt = o[0] if isinstance(o, (list, tuple)) else o
    with torch.no_grad():
        if method == "inpainting":
            _, mask, _, target = m._forward(batch)
            masked = batch["image"] * (1 - mask) + batch["image"].mean(dim=(1, 2, 3), keepdim=True) * mask
        elif method == "rotation":
            k = torch.randint(0, 4, (batch["image"].shape[0],))
            rotated = rotate_batch(batch["image"], k)
        elif method == "relative-position":
            ref, qry, label = m.make_pairs(batch)
            both, b = torch.cat([ref, qry]), ref.shape[0]
        elif method == "offset-heatmap":
            ref, qry, shift = m._pairs(batch)
            target = m._target(shift)
        else:
            v1, v2 = m.make_views(batch)

    def loss():
        if method == "inpainting":
            return m._reconstruction(torch.sigmoid(m.unet(masked)), target, mask)[0]
        if method == "rotation":
            return F.cross_entropy(m.head(m.pooled_features(rotated)), k)
        if method == "relative-position":
            f = m.pooled_features(both)
            return F.cross_entropy(m.head(torch.cat([f[:b], f[b:]], 1)), label)
        if method == "offset-heatmap":
            return F.mse_loss(m.predict(ref, qry), target)
        return m.pair_loss(v1, v2)["loss"]

    n = [0]

    def step():
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
        n[0] += 1
        m.on_train_step_end(n[0], 1000)

    return step


def engine_rate(method, paths, out, size, batch, steps, c, warm_steps=5):
    """(wall, CPU) seconds per image of the engine, steps timed, and the share of its CPU time spent outside
    the method's ``optimize_step`` (Lightning, data loading, logging, events, previews), measured in the same run."""
    marks = []
    inside = [0.0]  # CPU seconds spent in cls.optimize_step so far
    cls = get_method(method)
    original = cls.__dict__.get("optimize_step")
    inner = cls.optimize_step

    def timed_optimize_step(self, *a, **kw):  # the method's own step, only timed
        t0 = time.process_time()
        try:
            return inner(self, *a, **kw)
        finally:
            inside[0] += time.process_time() - t0

    def sink(ev):
        if ev["type"] == "progress":
            marks.append((time.perf_counter(), time.process_time(), ev["step"], inside[0]))

    cfg = PretrainConfig(method=method, data=paths, out=out, image_size=size, batch_size=batch, steps=steps, in_channels=c,
                         devices="cpu", preview_every_s=5.0, checkpoint_every_s=0, seed=0)
    cls.optimize_step = timed_optimize_step
    try:
        run_pretraining(cfg, events=sink)
    finally:
        if original is None:
            del cls.optimize_step
        else:
            cls.optimize_step = original
    marks = [m for m in marks if m[2] >= warm_steps]
    (w0, c0, s0, i0), (w1, c1, s1, i1) = marks[0], marks[-1]
    if s1 <= s0:
        raise RuntimeError(f"{method}: too few progress events to time ({marks})")
    outside = 1 - (i1 - i0) / (c1 - c0)
    return np.array([w1 - w0, c1 - c0]) / ((s1 - s0) * batch), s1 - s0, outside


def measure(method, volumes, paths, size, batch, args, out):
    """One round for one method: baselines, the engine, baselines again (mirrored order); (wall, CPU) s/image each."""
    cls = get_method(method)
    c = 3 if method == "offset-heatmap" else 1  # offset heatmap is defined on 2.5D stacks
    opts = cls.resolve_options({})
    ds = SliceDataset(volumes, size, c, context=cls.context_request(size, c, opts), seed=1)
    fb = ds.fixed_batch(batch)
    if len(fb["image"]) < batch:
        fb = {k: v.repeat((batch + len(v) - 1) // len(v), *([1] * (v.ndim - 1)))[:batch] for k, v in fb.items() if torch.is_tensor(v)}
    torch.manual_seed(0)
    bare, encoder = baselines(method, cls, opts, fb["image"], c, size)
    inherent = inherent_step(method, cls, opts, fb, c, size)
    ti1, te1, tb1 = time_steps(inherent, args.reps), time_steps(encoder, args.reps), time_steps(bare, args.reps)
    t_eng, n_steps, outside = engine_rate(method, paths, out, size, batch, args.steps, c)
    tb2, te2, ti2 = time_steps(bare, args.reps), time_steps(encoder, args.reps), time_steps(inherent, args.reps)
    # swap to (CPU, wall)
    cw = lambda a: np.array([a[1], a[0]])  # noqa: E731
    return {
        "in_channels": c, "timed_steps": n_steps, "engine": cw(t_eng), "outside": outside,
        "inherent": cw((ti1 + ti2) / 2 / batch), "encoder": cw((te1 + te2) / 2 / batch), "bare": cw((tb1 + tb2) / 2 / batch),
        "drift": cw(np.maximum(np.abs(tb2 - tb1) / np.minimum(tb1, tb2), np.abs(ti2 - ti1) / np.minimum(ti1, ti2))),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--volumes", type=int, default=20)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="repeat every measurement this many times (round-robin over methods); medians are reported")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(RESULTS / "bench_pretrain_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    # the engine (run_pretraining) sets glibc's malloc to keep freed memory for the rest of the process;
    # set it before the first baseline too, so engine and baselines always run under the same allocator
    from napari_ssl.train.malloc_tuning import keep_freed_memory

    keep_freed_memory()
    load_start = list(os.getloadavg())
    size, batch = args.image_size, args.batch_size
    paths = data_paths(args.volumes)
    specs = normalization_specs()
    volumes = load_prepared(paths, specs)
    methods = args.methods.split(",")
    per_round: dict[str, list[dict]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # rounds go over all methods, so a busy spell of the machine hits several methods a little
            for i, method in enumerate(methods):
                per_round[method].append(measure(method, volumes, paths, size, batch, args, os.path.join(tmp, f"{r}-{i}-{method}")))
                t = per_round[method][-1]
                print(f"round {r + 1}/{args.rounds} {method:<18} overhead vs inherent {100 * (t['engine'][0] / t['inherent'][0] - 1):+6.1f}% (CPU), "
                      f"{100 * (t['engine'][1] / t['inherent'][1] - 1):+6.1f}% (wall); outside the method's step {100 * t['outside']:.1f}%; "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for method in methods:
        rounds = per_round[method]
        row = {"method": method, "in_channels": rounds[0]["in_channels"], "timed_steps": rounds[0]["timed_steps"], "rounds": len(rounds)}
        for j, clock in enumerate(("cpu", "wall")):  # CPU time is the headline: 1 thread, less inflated by other processes' load
            sfx = "" if clock == "cpu" else "_wall"
            med = lambda f: float(np.median([f(t) for t in rounds]))  # noqa: E731  median over rounds of per-round values
            for name in ("engine", "inherent", "encoder", "bare"):
                row[f"{name}_images_per_s{sfx}"] = med(lambda t: 1 / t[name][j])
            for name in ("inherent", "encoder", "bare"):
                row[f"overhead_vs_{name}{sfx}"] = med(lambda t: t["engine"][j] / t[name][j] - 1)
            row[f"overhead_vs_inherent_per_round{sfx}"] = [float(t["engine"][j] / t["inherent"][j] - 1) for t in rounds]
            row[f"method_cost_vs_encoder{sfx}"] = med(lambda t: t["inherent"][j] / t["encoder"][j] - 1)
            row[f"baseline_drift{sfx}"] = max(float(t["drift"][j]) for t in rounds)
        row["engine_cpu_outside_method_step"] = float(np.median([t["outside"] for t in rounds]))
        row["within_goal"] = bool(row["overhead_vs_inherent"] <= GOAL)
        rows.append(row)
        print(f"{method:<18} engine {row['engine_images_per_s']:7.1f} img/s  inherent {row['inherent_images_per_s']:7.1f}  "
              f"encoder {row['encoder_images_per_s']:7.1f}  bare {row['bare_images_per_s']:7.1f}  | overhead vs inherent "
              f"{100 * row['overhead_vs_inherent']:+6.1f}%  vs encoder {100 * row['overhead_vs_encoder']:+6.1f}%  vs bare "
              f"{100 * row['overhead_vs_bare']:+6.1f}%  (wall: vs inherent {100 * row['overhead_vs_inherent_wall']:+6.1f}%)  "
              f"engine CPU outside the method's step {100 * row['engine_cpu_outside_method_step']:.1f}%", flush=True)
    result = {
        "benchmark": "bench_pretrain_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"image_size": size, "batch_size": batch, "steps": args.steps, "reps": args.reps, "rounds": args.rounds,
                     "volumes": len(paths), "encoder": "resnet18", "device": "cpu", "threads": torch.get_num_threads(), "precision": "32",
                     "preview_every_s": 5.0},
        "definitions": {
            "engine": "run_pretraining on real MR volumes; images/s from progress events after 5 warm-up steps (start-up and final save excluded)",
            "bare": "forward+backward+optimizer step of the method's encoder on one fixed real batch",
            "encoder": "forward+backward+optimizer step of the encoder passes only (U-Net; 2 views; +momentum no-grad; 2 patches; 2 stacks)",
            "inherent": "the published method's own networks at their configured sizes (encoder, heads, predictor, fusion/classifier head, decoder), "
                        "momentum passes, loss, optimizer step over all its parameters and EMA update, on inputs prepared once (no data pipeline, "
                        "augmentation, Lightning, logging or previews)",
            "optimizer": "napari_ssl.pretext.base.adamw (fused AdamW where available) for the engine and all baselines",
            "overhead": "engine seconds per image / baseline seconds per image - 1, in CPU time of the process (time.process_time; "
                        "1 thread, so it is the work done and is not inflated by other processes on a shared machine); "
                        "*_wall: the same in wall-clock time",
            "engine_cpu_outside_method_step": "share of the engine's CPU time (timed steps) spent outside the method's optimize_step: Lightning, "
                                              "data loading, logging, events, previews; measured inside the same engine run, so load-independent",
            "estimators": "engine: mean over the timed steps (previews included); baselines: median of --reps steps, before and after the engine run",
        },
        "goal": f"overhead_vs_inherent <= {GOAL}",
        "mixed_precision": "not measured: no GPU was lent to this task (CPU only); 16-mixed/bf16-mixed are passed to Lightning unchanged",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg())},
        "methods": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    plot(rows, Path(args.out).with_suffix(".png"))
    bad = [r["method"] for r in rows if not r["within_goal"]]
    print(f"wrote {args.out}; over the {int(GOAL * 100)}% goal vs inherent: {', '.join(bad) or 'none'}")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    xi = np.arange(len(rows))
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.5))
    w = 0.2
    ax[0].bar(xi - 1.5 * w, [r["engine_images_per_s"] for r in rows], w, label="engine (pipeline + method)")
    ax[0].bar(xi - 0.5 * w, [r["inherent_images_per_s"] for r in rows], w, label="inherent (method's networks + loss + step)")
    ax[0].bar(xi + 0.5 * w, [r["encoder_images_per_s"] for r in rows], w, label="encoder passes only")
    ax[0].bar(xi + 1.5 * w, [r["bare_images_per_s"] for r in rows], w, label="bare encoder fwd+bwd")
    ax[0].set_ylabel("images / s (CPU)")
    ax[0].set_xticks(xi, names, rotation=45, ha="right")
    ax[0].legend(fontsize=8)
    ax[1].bar(xi - w, [100 * r["overhead_vs_inherent"] for r in rows], w, label="vs inherent (goal)")
    ax[1].bar(xi, [100 * r["overhead_vs_encoder"] for r in rows], w, label="vs encoder passes")
    ax[1].bar(xi + w, [100 * r["overhead_vs_bare"] for r in rows], w, label="vs bare encoder")
    ax[1].axhline(100 * GOAL, color="r", ls="--", label=f"goal {int(GOAL * 100)}%")
    ax[1].set_ylabel("overhead %")
    ax[1].set_xticks(xi, names, rotation=45, ha="right")
    ax[1].legend(fontsize=8)
    fig.suptitle("pretraining throughput: engine vs the method's inherent work, encoder passes and a bare encoder step (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
