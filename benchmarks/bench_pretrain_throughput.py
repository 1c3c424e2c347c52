"""Pretraining throughput per method vs a bare forward+backward of the same networks, in the same run.

    .venv/bin/python benchmarks/bench_pretrain_throughput.py [--image-size 64] [--batch-size 16] [--steps 40]

For every method the real engine (`run_pretraining`: Lightning Trainer, SliceDataset + DataLoader,
augmentations, heads, losses, momentum updates, loss logging, events, previews every 5 s) trains on
real MR volumes (msd_hippocampus); images/s is measured from the engine's progress events, after a
few warm-up steps, excluding start-up and the final save. Right before and after each engine run
(interleaved, so a busy machine affects both alike) two baselines run on a fixed real batch:

  bare      one forward+backward+AdamW step of the method's encoder on the batch (the same for all methods);
  inherent  forward+backward+AdamW of exactly the network passes the method cannot avoid, without data
            loading, augmentation, heads, losses or Lightning: the U-Net (in-painting), the encoder on
            the 2 views (joint embedding) plus a no-grad pass of the momentum copy (BYOL, MoCo), on the
            2 patches (relative position) or on the 2 stacks (offset heatmap).

overhead = engine time per image / baseline time per image - 1. The goal is <= 15 % against "inherent"
(the data pipeline + method bookkeeping); against "bare" two-view methods necessarily cost ~2-3x.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_ssl.data.cache import load_prepared, normalization_specs  # noqa: E402
from napari_ssl.data.slices import SliceDataset  # noqa: E402
from napari_ssl.models.unet import build_encoder, build_unet  # noqa: E402
from napari_ssl.pretext import METHODS, get_method  # noqa: E402
from napari_ssl.train.pretrain import PretrainConfig, run_pretraining  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
GOAL = 0.15


def data_paths(n):
    d = Path(os.environ.get("NAPARI_SSL_DATA", REPO.parent / "shared" / "data")) / "msd_hippocampus" / "images"
    return [str(p) for p in sorted(d.glob("hippocampus_*.nii.gz"))[:n]]


def time_steps(step, reps, warm=2):
    for _ in range(warm):
        step()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def fwd_bwd(net, inputs, extra=None):
    """A step function: forward+backward+AdamW of `net` on each input tensor (and no-grad passes of `extra`)."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

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
    """(bare step, inherent step) for `method` on batch x (B, C, S, S)."""
    enc = build_encoder("resnet18", c)
    bare = fwd_bwd(enc, [x])
    b = x.shape[0]
    if method == "inpainting":
        inherent = fwd_bwd(build_unet("resnet18", c, classes=1), [x])
    elif method == "rotation":
        inherent = bare
    elif method == "relative-position":
        m = cls("resnet18", c, size, **opts)
        patches = x[:, :, : m.patch, : m.patch].repeat(2, 1, 1, 1).contiguous()
        inherent = fwd_bwd(enc, [patches])
    elif method == "offset-heatmap":
        inherent = fwd_bwd(enc, [torch.cat([x, x])])
    else:  # joint embedding: two views; momentum methods also embed both views with the EMA copy
        momentum = copy.deepcopy(enc) if method in ("byol", "moco") else None
        inherent = fwd_bwd(enc, [x, x], extra=momentum)
    return bare, inherent


def engine_rate(method, paths, out, size, batch, steps, c, warm_steps=5):
    marks = []

    def sink(ev):
        if ev["type"] == "progress":
            marks.append((time.perf_counter(), ev["step"]))

    cfg = PretrainConfig(method=method, data=paths, out=out, image_size=size, batch_size=batch, steps=steps, in_channels=c,
                         devices="cpu", preview_every_s=5.0, checkpoint_every_s=0, seed=0)
    run_pretraining(cfg, events=sink)
    marks = [m for m in marks if m[1] >= warm_steps]
    (t0, s0), (t1, s1) = marks[0], marks[-1]
    if s1 <= s0:
        raise RuntimeError(f"{method}: too few progress events to time ({marks})")
    return (t1 - t0) / ((s1 - s0) * batch), s1 - s0  # seconds per image


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--volumes", type=int, default=20)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(RESULTS / "bench_pretrain_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    size, batch = args.image_size, args.batch_size
    paths = data_paths(args.volumes)
    specs = normalization_specs()
    volumes = load_prepared(paths, specs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, method in enumerate(args.methods.split(",")):
            cls = get_method(method)
            c = 3 if method == "offset-heatmap" else 1  # offset heatmap is defined on 2.5D stacks
            opts = cls.resolve_options({})
            ds = SliceDataset(volumes, size, c, context=cls.context_request(size, c, opts), seed=1)
            x = ds.fixed_batch(batch)["image"]
            if len(x) < batch:
                x = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
            torch.manual_seed(0)
            bare, inherent = baselines(method, cls, opts, x, c, size)
            tb1, ti1 = time_steps(bare, args.reps), time_steps(inherent, args.reps)
            t_eng, n_steps = engine_rate(method, paths, os.path.join(tmp, f"{i}-{method}"), size, batch, args.steps, c)
            tb2, ti2 = time_steps(bare, args.reps), time_steps(inherent, args.reps)
            t_bare, t_inh = (tb1 + tb2) / 2 / batch, (ti1 + ti2) / 2 / batch
            row = {
                "method": method, "in_channels": c,
                "engine_images_per_s": 1 / t_eng, "bare_images_per_s": 1 / t_bare, "inherent_images_per_s": 1 / t_inh,
                "overhead_vs_bare": t_eng / t_bare - 1, "overhead_vs_inherent": t_eng / t_inh - 1,
                "baseline_drift": abs(tb2 - tb1) / min(tb1, tb2), "timed_steps": n_steps,
            }
            row["within_goal"] = row["overhead_vs_inherent"] <= GOAL
            rows.append(row)
            print(f"{method:<18} engine {row['engine_images_per_s']:7.1f} img/s  bare {row['bare_images_per_s']:7.1f}  "
                  f"inherent {row['inherent_images_per_s']:7.1f}  overhead vs inherent {100 * row['overhead_vs_inherent']:+6.1f}%  "
                  f"vs bare {100 * row['overhead_vs_bare']:+6.1f}%", flush=True)
    result = {
        "benchmark": "bench_pretrain_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"image_size": size, "batch_size": batch, "steps": args.steps, "volumes": len(paths), "encoder": "resnet18",
                     "device": "cpu", "threads": torch.get_num_threads(), "precision": "32", "preview_every_s": 5.0},
        "definitions": {
            "engine": "run_pretraining on real MR volumes; images/s from progress events after 5 warm-up steps (start-up and final save excluded)",
            "bare": "forward+backward+AdamW of the method's encoder on one fixed real batch",
            "inherent": "forward+backward+AdamW of the network passes the method needs (U-Net; 2 views; +momentum no-grad; 2 patches; 2 stacks)",
            "overhead": "engine seconds per image / baseline seconds per image - 1",
        },
        "goal": f"overhead_vs_inherent <= {GOAL}",
        "mixed_precision": "not measured: no GPU was lent to this task (CPU only); 16-mixed/bf16-mixed are passed to Lightning unchanged",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_end": list(os.getloadavg())},
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
    ax[0].bar(xi - 0.27, [r["engine_images_per_s"] for r in rows], 0.27, label="engine (pipeline + method)")
    ax[0].bar(xi, [r["inherent_images_per_s"] for r in rows], 0.27, label="inherent network passes")
    ax[0].bar(xi + 0.27, [r["bare_images_per_s"] for r in rows], 0.27, label="bare encoder fwd+bwd")
    ax[0].set_ylabel("images / s (CPU)")
    ax[0].set_xticks(xi, names, rotation=45, ha="right")
    ax[0].legend(fontsize=8)
    ax[1].bar(xi - 0.2, [100 * r["overhead_vs_inherent"] for r in rows], 0.4, label="vs inherent")
    ax[1].bar(xi + 0.2, [100 * r["overhead_vs_bare"] for r in rows], 0.4, label="vs bare encoder")
    ax[1].axhline(100 * GOAL, color="r", ls="--", label=f"goal {int(GOAL * 100)}%")
    ax[1].set_ylabel("overhead %")
    ax[1].set_xticks(xi, names, rotation=45, ha="right")
    ax[1].legend(fontsize=8)
    fig.suptitle("pretraining throughput vs bare forward+backward (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
