"""Regression check of the data-driven defaults on hippocampus MR crops (validation volumes, the lowest-numbered files).

For each volume: 3 annotated slices at the 1/4, 2/4, 3/4 quantiles of the structure's extent; fine-tuning with the
widget's defaults (300 steps, batch 8, CPU, from scratch) -- on these crops the data-driven settings equal the old ones
(whole slice, 64 px, resnet18, per-scan percentiles; asserted) -- then whole-volume Dice (all labels as foreground and
mean over the two classes) of the prediction as before (every slice) and with the new same-study prediction
(slice range + keep-connected); fill between slices from the same slices as the baseline.

    PYTHONPATH=$PWD:$PWD/benchmarks .venv/bin/python benchmarks/check_auto_mr.py --volumes 4
"""
import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ct_reference as ref  # noqa: E402


def class_dice(pred, truth, k=2):
    return float(np.mean([ref.dice(pred == c, truth == c) for c in range(1, k + 1)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "check_auto_mr.json"))
    args = ap.parse_args()
    from napari_ssl.active.fill_between import fill_between_slices, shutdown_worker
    from napari_ssl.active.predict import predict_volume
    from napari_ssl.models.checkpoint import read_meta
    from napari_ssl.train.finetune import FinetuneConfig, load_image, load_labels, run_finetuning

    data = os.environ.get("NAPARI_SSL_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
    files = sorted(glob.glob(os.path.join(data, "msd_hippocampus", "images", "hippocampus_*.nii.gz")))[:200][: args.volumes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            img = load_image(f)
            lab = load_labels(f.replace("images", "labels"), img)
            sl = ref.quantile_slices(lab > 0, 3)
            sparse = np.zeros_like(lab)
            sparse[sl] = lab[sl]
            ann = np.zeros(lab.shape[0], bool)
            ann[sl] = True
            t = time.process_time()
            out = run_finetuning(FinetuneConfig(images=[img], labels=[sparse], out=os.path.join(tmp, os.path.basename(f)),
                                                classes=["anterior", "posterior"], steps=300, batch_size=8, devices="cpu"))
            meta = read_meta(out)
            auto = meta["auto"]
            assert auto["roi"] is None and meta["image_size"] == 64 and meta["encoder_name"] == "resnet18"
            assert auto["normalization"]["mode"] == "percentile"
            before = predict_volume(out, img, device="cpu").labels
            after = predict_volume(out, img, roi=auto["roi"], z_range=auto["z_range"], seeds=sparse, device="cpu").labels
            fb = fill_between_slices(sparse, ann)
            row = {"volume": os.path.basename(f), "slices": sl, "z_range": auto["z_range"], "cpu_s": round(time.process_time() - t, 1)}
            for name, p in (("before", before), ("defaults", after), ("fill_between", fb)):
                row[name] = {"dice_fg": round(ref.dice(p > 0, lab > 0), 4), "dice_mean_class": round(class_dice(p, lab), 4)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    shutdown_worker()
    summary = {m: {k: round(float(np.mean([r[m][k] for r in rows])), 4) for k in ("dice_fg", "dice_mean_class")}
               for m in ("before", "defaults", "fill_between")}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"rows": rows, "mean": summary, "loadavg": open("/proc/loadavg").read().split()[:3]}, fh, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
