"""`napari-ssl demo --headless`: starts its own Xvfb, opens the samples in napari, writes what it saw."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[1]


STAGES = {"mr": ["opened", "pretrain", "annotate", "fill_between", "train", "suggest", "export"],
          "ct": ["opened", "annotate", "fill_between", "train", "suggest", "export"]}


def test_demo_runs_the_loop_headless(tmp_path):
    """The loop on both samples through the widgets (--quick: a few training steps), a screenshot per stage."""
    import highdicom as hd
    import imageio.v3 as iio
    import SimpleITK as sitk

    out = tmp_path / "demo out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "NAPARI_SSL_HOME")}  # as on a server
    proc = subprocess.run(
        [sys.executable, "-m", "napari_ssl.cli", "demo", "--headless", "--quick", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert "Dice of the prediction" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["samples"]) == {"mr", "ct"}
    assert (out / "home" / "runs").is_dir()  # the demo's runs stay in its own folder
    for name in ("mr", "ct"):
        s = summary["samples"][name]
        assert "error" not in s, s.get("error")
        docks = " | ".join(s["dock_widgets"])
        for widget in ("Pretrain", "Annotate & Train", "Export"):
            assert widget in docks, docks
        assert [st["stage"] for st in s["stages"]] == STAGES[name]
        # every stage has its screenshot of the whole window, and it is not blank
        for stage in STAGES[name]:
            img = iio.imread(out / s["screenshots"][stage]["file"])
            assert img.shape[0] >= 600 and img.shape[1] >= 800
            assert img[..., :3].astype(float).std() > 20, f"{name} {stage}: screenshot looks blank"
        # the result layers are in the viewer, on the image's grid
        layers = {ly["name"]: ly for ly in s["layers"]}
        image = next(ly for ly in s["layers"] if ly["type"] == "image" and not ly["name"].endswith("uncertainty"))
        for suffix in (" annotations", " prediction", " uncertainty", " fill between"):
            assert layers[image["name"] + suffix]["shape"] == image["shape"], suffix
        d = s["dice_prediction"]
        assert 0.0 <= d["all_slices"] <= 1.0 and d["unannotated_slices"] is not None
        assert s["suggested_slices"] and s["went_to_slice"] == s["suggested_slices"][0]
        assert s["went_to_slice"] not in s["annotated_slices"]

    mr, ct = summary["samples"]["mr"], summary["samples"]["ct"]
    assert mr["pretrained"]["method"] == "inpainting" and len(mr["annotated_slices"]) == 3
    assert ct["annotated_slices"] == [0, 2]
    # fill between from the first and last CT slice recovers the middle one's liver closely (a real interpolation)
    assert ct["dice_fill_between"]["unannotated_slices"] > 0.9, ct["dice_fill_between"]
    # a trained model, even a quick one, finds the liver on the slice it never saw
    assert ct["dice_prediction"]["unannotated_slices"] > 0.3, ct["dice_prediction"]
    assert mr["dice_prediction"]["all_slices"] > 0.05, mr["dice_prediction"]

    # exports: a DICOM-SEG on the CT sample's series, and NIfTI files of the predictions
    seg_file = out / "exports" / "ct_prediction_seg.dcm"
    seg = hd.seg.segread(str(seg_file))
    assert seg.Modality == "SEG" and seg.get_segment_description(1).SegmentLabel == "Liver"
    nii = sitk.ReadImage(str(out / "exports" / "mr_prediction.nii.gz"))
    mr_image = next(ly for ly in mr["layers"] if ly["type"] == "image")
    assert sorted(nii.GetSize()) == sorted(mr_image["shape"])  # in the source file's own axis order
    assert int(np.count_nonzero(sitk.GetArrayFromImage(nii))) > 0
    assert {e["format"] for e in ct["exports"]} == {"DICOM-SEG", "NIfTI"}

    text = json.dumps(summary)
    assert "JANCT000" not in text and "99000" not in text  # the sample CT's patient name / ID
    # what the user sees first: in the CT canvas the liver overlay (reddish) is on the image's left
    # (the patient's right, radiological convention), and the body is centred
    canvas = iio.imread(out / ct["screenshots"]["opened_canvas"]["file"])[..., :3].astype(int)
    reddish = (canvas[..., 0] - canvas[..., 2] > 40) & (canvas[..., 0] > 80)
    assert reddish.sum() > 1000
    cols = np.nonzero(reddish)[1]
    assert cols.mean() < canvas.shape[1] / 2
