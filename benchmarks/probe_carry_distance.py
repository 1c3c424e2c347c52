#!/usr/bin/env python
"""How far a drawn slice can be carried (active/propagate.py) before its labels stop matching the structure.

For each structure, from each of 3 drawn slices (the 1/4, 1/2 and 3/4 quantiles of its extent), the labels are
carried 1..--radius slices each way along the image's motion and compared with the reference there (foreground Dice;
a side lost before that distance counts 0). Two data sets, so that a carrying distance is not set by one of them:
- ``mr``: the 20 validation volumes of bench_label_efficiency's --split val (MSD hippocampus, 1 mm, expert labels);
- ``ct``: the 10 RTSTRUCT ROIs of the full-size clinical CT (2.5 mm slices; automatic contours as the reference).
No training. Why: the across-studies default carries each drawn slice SCATTERED_CARRY slices each way as training
pseudo-labels (napari_ssl/train/semi_supervised.py); this says how reliable those pseudo-labels are on each.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_carry_distance.py --data mr,ct

Writes benchmarks/results/probe_carry_distance.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
OUT = os.path.join(HERE, "results", "probe_carry_distance")


def carried_dice(image: np.ndarray, mask: np.ndarray, z: int, radius: int, spacing, vote: bool = False) -> dict[int, float]:
    """Foreground Dice of the labels of slice z carried d slices each way, mean of the two sides, for d in 1..radius."""
    from napari_ssl.active.propagate import propagate_labels

    import ct_reference as ref

    ann = np.zeros(mask.shape[0], bool)
    ann[z] = True
    lab = np.where(ann[:, None, None], mask, 0).astype(np.uint8)
    carried, done, _ = propagate_labels(image, lab, ann, (z - radius, z + radius + 1), spacing=spacing, vote=vote)
    out = {}
    for d in range(1, radius + 1):
        vals = []
        for zz in (z - d, z + d):
            if not 0 <= zz < mask.shape[0]:
                continue
            t, c = mask[zz] > 0, (carried[zz] > 0) if done[zz] else np.zeros_like(mask[zz], bool)
            if t.any() or c.any():
                vals.append(ref.dice(t, c))
        if vals:
            out[d] = float(np.mean(vals))
    return out


def structures_mr():
    from napari_ssl.data.normalize import default_spec, normalize
    from napari_ssl.train.finetune import load_image, load_labels

    import bench_label_efficiency as le

    if not os.path.isdir(le.DATA):
        raise SystemExit(f"hippocampus data missing: {le.DATA} (see ../shared/data/README.md)")
    names = le.volume_ids()
    for v in le.VAL_POOL:
        img = load_image(os.path.join(le.DATA, "images", names[v]))
        lab = load_labels(os.path.join(le.DATA, "labels", names[v]), img)
        yield f"hippocampus (val volume {v})", normalize(img.array, default_spec(img.modality)), lab, None


def structures_ct():
    import pydicom

    from napari_ssl.data.normalize import default_spec, normalize
    from napari_ssl.io import load_volume

    import ct_reference as ref

    folder, rt = os.path.join(DATA, "tcia_cervical_ct", "CT_images"), os.path.join(DATA, "tcia_cervical_ct", "RTstruct.dcm")
    if not os.path.isfile(rt):
        raise SystemExit(f"CT data missing: {rt} (see ../shared/data/README.md)")
    vol = load_volume(folder)
    img = normalize(np.asarray(vol.array, np.float32), default_spec(vol.modality))
    for roi in pydicom.dcmread(rt).StructureSetROISequence:
        m = ref.rasterise_roi(rt, vol, str(roi.ROIName))
        if m.any():
            yield str(roi.ROIName), img, m.astype(np.uint8), tuple(float(s) for s in vol.spacing)


def main(argv=None) -> int:
    import ct_reference as ref

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mr,ct", help="comma-separated: mr, ct")
    p.add_argument("--radius", type=int, default=10)
    p.add_argument("--vote", action="store_true", help="labels voted slice by slice by image patches (active/patch_vote.py)")
    p.add_argument("--out", default=OUT + ".json")
    args = p.parse_args(argv)
    t0 = time.time()
    rows: dict[str, list] = {}
    for kind in args.data.split(","):
        source = {"mr": structures_mr, "ct": structures_ct}[kind]()
        rows[kind] = []
        for name, image, mask, spacing in source:
            for z in ref.quantile_slices(mask > 0, 3):
                if not mask[z].any():
                    continue
                t = time.time()
                dice = carried_dice(image, mask, z, args.radius, spacing, args.vote)
                rows[kind].append({"structure": name, "slice": int(z), "dice": dice, "seconds": time.time() - t})
            print(kind, name, "done", flush=True)
    summary = {kind: {d: float(np.mean([r["dice"].get(d, 0.0) for r in rr])) for d in range(1, args.radius + 1)} for kind, rr in rows.items()}
    worst = {kind: {d: float(np.min([r["dice"].get(d, 0.0) for r in rr])) for d in range(1, args.radius + 1)} for kind, rr in rows.items()}
    res = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_carry_distance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "wall_seconds": time.time() - t0, "mean_dice_by_distance": summary, "min_dice_by_distance": worst, "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in summary:
        d = sorted(summary[kind])
        ax.plot(d, [summary[kind][x] for x in d], "o-", label=f"{kind}: mean")
        ax.plot(d, [worst[kind][x] for x in d], ":", label=f"{kind}: worst structure/slice")
    ax.set_xlabel("slices from the drawn slice")
    ax.set_ylabel("carried labels' Dice")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Drawn slice carried along the motion")
    fig.tight_layout()
    fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=100)
    for kind in summary:
        secs = [r["seconds"] for r in rows[kind]]
        print(kind, {d: round(v, 3) for d, v in summary[kind].items()},
              f"seconds per drawn slice carried {args.radius} each way: mean {np.mean(secs):.2f}, max {np.max(secs):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
