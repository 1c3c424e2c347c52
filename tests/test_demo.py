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


def test_demo_headless_writes_screenshots_and_summary(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "demo out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}  # as on a server
    proc = subprocess.run(
        [sys.executable, "-m", "napari_ssl.cli", "demo", "--headless", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["samples"]) == {"mr", "ct"}
    for name in ("mr", "ct"):  # the plugin's widgets are docked, as a user would open them
        docks = " | ".join(summary["samples"][name]["dock_widgets"])
        for widget in ("Pretrain", "Annotate & Train", "Export"):
            assert widget in docks, docks

    mr = {ly["type"]: ly for ly in summary["samples"]["mr"]["layers"]}
    assert mr["image"]["shape"] == mr["labels"]["shape"] and len(mr["image"]["shape"]) == 3
    assert mr["image"]["scale"] == [1.0, 1.0, 1.0]
    assert mr["labels"]["label_values"] == [0, 1, 2]
    assert mr["labels"]["segment_names"] == {"1": "anterior", "2": "posterior"}

    ct = {ly["type"]: ly for ly in summary["samples"]["ct"]["layers"]}
    assert ct["image"]["shape"] == [3, 512, 512] and ct["labels"]["shape"] == [3, 512, 512]
    assert ct["image"]["scale"][1:] == pytest.approx([0.810547, 0.810547])
    assert ct["image"]["modality"] == "CT" and ct["image"]["units"] == "HU"
    assert ct["labels"]["label_values"] == [0, 1]
    assert ct["labels"]["translate"] == ct["image"]["translate"]

    text = json.dumps(summary)
    assert "JANCT000" not in text and "99000" not in text  # the sample CT's patient name / ID

    for name in ("mr", "ct"):
        shots = summary["samples"][name]["screenshots"]
        window = iio.imread(out / shots["window"]["file"])
        canvas = iio.imread(out / shots["canvas"]["file"])
        assert window.shape[0] >= 600 and window.shape[1] >= 800  # the whole napari window
        for img in (window, canvas):
            rgb = img[..., :3].astype(float)
            assert rgb.std() > 20, f"{name}: screenshot looks blank (std {rgb.std():.1f})"
    # what the user sees: in the CT canvas the liver overlay (reddish) is on the image's left
    # (the patient's right, radiological convention), and the body is centred
    canvas = iio.imread(out / summary["samples"]["ct"]["screenshots"]["canvas"]["file"])[..., :3].astype(int)
    reddish = (canvas[..., 0] - canvas[..., 2] > 40) & (canvas[..., 0] > 80)
    assert reddish.sum() > 1000
    cols = np.nonzero(reddish)[1]
    assert cols.mean() < canvas.shape[1] / 2
