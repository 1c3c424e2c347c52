"""Screenshots of the three dock widgets in use, for the docs: docs/screenshots/*.png.

Run under a real X server (napari's canvas needs OpenGL):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

It opens napari with the bundled sample studies, drives each widget through its loop with tiny
settings (a few pretraining / fine-tuning steps on the CPU, one torch thread), and saves the whole
window (dock widgets included) at each stage. Runs and annotations go to a temporary
$NAPARI_SSL_HOME, never the user's.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1500, 950)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    ap.add_argument("--pretrain-s", type=float, default=40.0, help="seconds of pretraining before Stop")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = tempfile.mkdtemp(prefix="napari-ssl-shots-")
    atexit.register(shutil.rmtree, home, True)  # runs and exports of the session shown: about 0.3 GB
    os.environ["NAPARI_SSL_HOME"] = home
    os.environ.setdefault("NAPARI_SSL_THREADS", "1")

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-ssl", show=True)
    app = QApplication.instance()
    qt_window = viewer.window._qt_window
    qt_window.resize(*WINDOW)

    def pump(seconds: float = 0.3) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    def wait(cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.02)

    def shot(name: str) -> Path:
        pump(0.5)
        path = out / f"{name}.png"
        img = viewer.screenshot(canvas_only=False, flash=False)
        import imageio.v3 as iio

        iio.imwrite(path, img)
        print(f"wrote {path} {img.shape[1]}x{img.shape[0]}", flush=True)
        return path

    viewer.open_sample("napari-ssl", "hippocampus_mr")
    image, expert = viewer.layers[0], viewer.layers[1]
    viewer.dims.set_point(0, image.data_to_world([image.data.shape[0] // 2, 0, 0])[0])

    def dock(name: str, tabify: bool):
        dw, widget = viewer.window.add_plugin_dock_widget("napari-ssl", name, tabify=tabify)
        dw.raise_()
        pump(0.5)
        return dw, widget

    # --- 1. Pretrain: previews, loss curve, activity dock
    pre_dock, pre = dock("Pretrain", tabify=False)
    pre.method.setCurrentText("inpainting")
    pre.image_size.setValue(64)
    pre.batch_size.setValue(8)
    pre.epochs.setValue(50)
    pre.preview_every_s = 2.0
    pre.threads = 1
    expert.visible = False
    pre.start()
    viewer.window._status_bar._toggle_activity_dock(True)
    wait(lambda: len(pre.plot.values) >= 3 and pre.preview_layers, 240, "pretraining previews")
    t_end = time.monotonic() + args.pretrain_s
    while time.monotonic() < t_end:
        pump(0.2)
    viewer.reset_view()
    shot("pretrain_running")
    pre.stop()
    wait(lambda: not pre.running, 120, "pretraining to stop")
    viewer.window._status_bar._toggle_activity_dock(False)
    pre.runs.refresh()
    pre.runs.select_path(pre.out_dir)
    shot("pretrain_stopped")
    pretrained = pre.out_dir
    for name in list(pre.preview_layers):
        viewer.layers.remove(pre.preview_layers.pop(name))
    viewer.reset_view()

    # --- 2. Annotate & Train
    ann_dock, ann = dock("Annotate & Train", tabify=True)
    ann.set_classes(["anterior", "posterior"])
    labels = ann.create_labels_layer()
    zs = np.flatnonzero(expert.data.reshape(expert.data.shape[0], -1).any(axis=1))
    for z in zs[:: max(1, len(zs) // 4)][:4]:  # the "user" outlines 4 slices (copied from the expert labels)
        labels.data[z] = expert.data[z]
    labels.refresh()
    ann.go_to_slice(int(zs[0]) - 2)
    pump(0.3)
    ann.mark_current_slice_empty()
    ann.go_to_slice(int(zs[len(zs) // 2]))
    ann.update_count()
    viewer.reset_view()
    shot("annotate_labels")
    ann.select_pretrained(pretrained)
    ann.steps.setValue(60)
    ann.image_size.setValue(64)
    ann.threads = 1
    ann.train()
    # while the model trains: the instant fill-between layer, and progress with the time left
    wait(lambda: labels.name.replace(" annotations", " fill between") in viewer.layers and "left" in ann.status.text(),
         300, "fill between slices and a time-left estimate")
    ann.go_to_slice(int((zs[0] + zs[max(1, len(zs) // 4)]) // 2))
    shot("annotate_training")
    wait(lambda: not ann.running and not ann.results_pending, 300, "fine-tuning")
    from napari_ssl.train.events import Finished

    if not isinstance(ann.last_result, Finished):
        raise RuntimeError(f"fine-tuning failed: {ann.last_result}")
    z = ann.next_slice()
    viewer.reset_view()
    shot("annotate_prediction")
    ann.accept_current_slice()
    ann.update_count()
    shot("annotate_accepted")

    # --- 3. Export (NIfTI of the MR annotations; DICOM-SEG of the CT sample)
    exp_dock, exp = dock("Export", tabify=True)
    exp.labels_combo.select(labels.name)
    exp.format.setCurrentText("NIfTI")
    exp.path.setText(str(Path(home) / "exports" / "annotations.nii.gz"))
    exp.export()
    wait(lambda: not (exp.job and exp.job.running), 120, "NIfTI export")
    shot("export_nifti")
    for lay in list(viewer.layers):
        viewer.layers.remove(lay)
    viewer.open_sample("napari-ssl", "ct_liver_seg")
    viewer.reset_view()
    seg = [lay for lay in viewer.layers if lay.__class__.__name__ == "Labels"][0]
    exp.labels_combo.select(seg.name)
    exp.format.setCurrentText("DICOM-SEG")
    exp.path.setText(str(Path(home) / "exports" / "liver_seg.dcm"))
    exp.export()
    wait(lambda: not (exp.job and exp.job.running), 120, "DICOM-SEG export")
    shot("export_dicom_seg")
    viewer.close()
    print(f"runs and annotations were written under {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
