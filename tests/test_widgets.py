"""The three dock widgets driven through their loops in a real napari viewer (run under Xvfb: scripts/test.sh).

Real components throughout: the bundled sample studies, the npe2 manifest, real child processes
running the real pretraining / fine-tuning / export engines with tiny settings (32-pixel slices, a
few steps, one torch thread). Assertions are on layers, files on disk and process state.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from napari_ssl.train.events import Failed, Finished, Preview, Progress

pytestmark = pytest.mark.gui

PLUGIN = "napari-ssl"
TINY = {"image_size": 32, "batch_size": 4}


# --- helpers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssl_home(tmp_path_factory):
    """A private $NAPARI_SSL_HOME (runs, annotations, exports) for this module; children inherit it."""
    home = tmp_path_factory.mktemp("napari-ssl-home")
    old = os.environ.get("NAPARI_SSL_HOME")
    os.environ["NAPARI_SSL_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("NAPARI_SSL_HOME", None)
    else:
        os.environ["NAPARI_SSL_HOME"] = old


@pytest.fixture
def notes():
    """napari's notification records during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    return lambda: [(str(n.severity), str(n.message)) for n in notification_manager.records]


def wait_until(cond, timeout: float, what: str, interval: float = 0.02):
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while True:
        app.processEvents()
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def live_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True)
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def dock(viewer, name: str):
    """Open a widget the way Plugins > napari-ssl > name does (through the npe2 manifest)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def events_of(job, kinds=None) -> list:
    """The job's typed events (napari_ssl.train.events), as they arrive; `kinds`: only these classes."""
    seen: list = []
    job.event.connect(lambda ev: seen.append(ev) if kinds is None or isinstance(ev, kinds) else None)
    return seen


def start_tiny_pretraining(widget, steps: int = 10_000, preview_every_s: float = 0.3):
    widget.method.setCurrentText("inpainting")
    widget.image_size.setValue(TINY["image_size"])
    widget.batch_size.setValue(TINY["batch_size"])
    widget.steps.setValue(steps)
    widget.preview_every_s = preview_every_s
    widget.threads = 1
    widget.start()
    assert widget.job is not None, widget.status.text()
    return events_of(widget.job)


def world_to_lps(layer, idx):
    world = np.asarray(layer.translate, float) + np.asarray(layer.scale, float) * np.asarray(idx, float)
    return tuple(float(v) for v in world[::-1])  # (z, y, x) = (S, P, L) -> (L, P, S)


@pytest.fixture(scope="module")
def pretrained(ssl_home):
    """A (very) short real pretraining run in the runs folder.

    Made in a child process like every training here: importing the training stack (torchvision pulls
    in triton's LLVM) into a process whose OpenGL (Mesa llvmpipe) is already loaded can crash it.
    """
    from napari_ssl._napari.sample_data import MR_IMAGE
    from napari_ssl.train.runner import JobRunner

    out = Path(ssl_home) / "runs" / "tiny-inpainting"
    cfg = {"method": "inpainting", "data": [str(MR_IMAGE)], "out": str(out), "steps": 2, "devices": "cpu",
           "preview_every_s": 0, "threads": 1, **TINY}
    res = JobRunner("napari_ssl.train.jobs:pretrain_job", cfg).start().wait(300)
    assert res is not None and res["type"] == "done", res
    return str(out)


# --- the Plugins menu -------------------------------------------------------------------------
def test_plugins_menu_lists_the_three_widgets(make_napari_viewer):
    viewer = make_napari_viewer()
    bar = viewer.window._qt_window.menuBar()
    plugins = next(a.menu() for a in bar.actions() if a.text().replace("&", "") == "Plugins")
    plugins.aboutToShow.emit()  # napari fills the menu when it opens
    ours = next(a.menu() for a in plugins.actions() if a.menu() is not None and a.text() == PLUGIN)
    shown = [a.text().replace("&&", "\0").replace("&", "").replace("\0", "&") for a in ours.actions()]
    assert shown == ["Pretrain", "Annotate & Train", "Export"]
    ours.actions()[1].trigger()  # opening it from the menu docks the widget
    assert any("Annotate & Train" in name for name in viewer.window.dock_widgets)


# --- Pretrain ---------------------------------------------------------------------------------
def test_pretrain_previews_loss_stop_and_runs_list(make_napari_viewer, ssl_home):
    from napari.utils import progress
    from safetensors.numpy import load_file

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    widget = dock(viewer, "Pretrain")
    n_scans = len(viewer.layers)
    assert widget.data_list.count() == 1  # the image layer (labels are not pretraining data)
    assert widget.method_help.text().startswith("context encoder")  # the one-line explanation
    assert [widget.device.itemText(i) for i in range(widget.device.count())][0] == "CPU"

    events = start_tiny_pretraining(widget)
    assert widget.start_button.text() == "Stop"
    pid = widget.job.pid
    assert psutil.Process(pid).is_running() and pid != os.getpid()  # a child process, not a thread
    previews = lambda: [e for e in events if isinstance(e, Preview)]  # noqa: E731
    wait_until(lambda: len(previews()) >= 2 and len(widget.preview_layers) == 3, 180, "two rounds of previews")
    first = {name: lay for name, lay in widget.preview_layers.items()}
    first_data = {name: np.array(lay.data, copy=True) for name, lay in first.items()}
    n_layers = len(viewer.layers)
    assert n_layers == n_scans + 3
    assert set(first) == {"inpainting_input", "inpainting_output", "feature_pca"}
    assert first["feature_pca"].rgb and first["feature_pca"].data.shape[-1] == 3
    n_seen = len(previews())
    wait_until(lambda: len(previews()) >= n_seen + 2, 120, "more previews")
    wait_until(lambda: len(widget.plot.values) >= 3, 60, "loss points")
    # the same layers were updated in place, not added again
    assert len(viewer.layers) == n_layers
    # (plugin widgets see napari's public-only proxies of layers: compare napari's unique layer ids)
    assert {n: lay.unique_id for n, lay in widget.preview_layers.items()} == {n: lay.unique_id for n, lay in first.items()}
    assert {lay.unique_id for lay in first.values()} <= {lay.unique_id for lay in viewer.layers}
    assert not np.array_equal(first_data["inpainting_output"], widget.preview_layers["inpainting_output"].data)
    # progress in napari's activity dock
    prog = widget.job._progress
    assert prog is not None and prog in progress._all_instances and prog.n >= 1
    # napari's "in progress" spinner is slowed down while the job runs (see calm_activity_spinner)
    from qtpy.QtWidgets import QLabel

    from napari_ssl._napari.job_runner import SPINNER_SPEED_PERCENT
    spinners = [lab.movie() for lab in viewer.window._qt_window.findChildren(QLabel)
                if lab.movie() is not None and lab.movie().fileName().endswith("loading.gif")]
    assert spinners and all(m.speed() == SPINNER_SPEED_PERCENT for m in spinners)
    assert all(np.isfinite(widget.plot.values))

    widget.stop()
    assert widget.start_button.text() == "Stopping..."
    wait_until(lambda: not widget.running, 120, "the job to stop")
    res = widget.last_result
    assert isinstance(res, Finished) and res.stopped, res
    out = Path(res.out)
    assert out.parent == Path(ssl_home) / "runs"
    meta = json.loads((out / "model.json").read_text())
    assert meta["status"] == "stopped" and meta["method"] == "inpainting" and meta["steps"] >= 1
    weights = load_file(str(out / "encoder.safetensors"))
    assert weights and all(np.isfinite(w).all() for w in weights.values())
    assert gone(pid), "the child process is still running after Stop"
    assert widget.start_button.text() == "Start" and widget.start_button.isEnabled()
    # the run is listed (name, method, date, data summary) and selected
    row = next(r for r in widget.runs.runs if r.path == str(out))
    assert row.method == "inpainting" and row.date[:4].isdigit() and "1 volumes" in row.data
    assert widget.runs.selected_path() == str(out)
    assert widget.runs.tree.topLevelItemCount() == len(widget.runs.runs) >= 1


def test_killed_child_shows_error_and_viewer_keeps_working(make_napari_viewer, ssl_home, notes):
    viewer = make_napari_viewer(show=True)  # a shown window: its canvas renders (checked at the end)
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    widget = dock(viewer, "Pretrain")
    events = start_tiny_pretraining(widget)
    wait_until(lambda: any(isinstance(e, Progress) for e in events), 180, "training to run")
    pid = widget.job.pid
    os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
    wait_until(lambda: not widget.running, 30, "the death to be noticed")
    assert isinstance(widget.last_result, Failed)
    msg = widget.last_result.message
    assert "killed" in msg and "memory" in msg, msg
    assert any("ERROR" in sev.upper() and "killed" in m for sev, m in notes()), notes()
    assert widget.status.text().startswith("Error:")
    assert widget.start_button.text() == "Start" and widget.start_button.isEnabled()
    assert gone(pid)
    # the viewer still works: add a layer, change slice, render
    viewer.add_image(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32), name="after")
    viewer.dims.set_current_step(0, 3)
    for lay in viewer.layers:
        lay.visible = lay.name == "after"
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 0
    assert widget.data_list.count() == 2  # and the widget followed the new layer


def test_closing_napari_stops_the_job_and_leaves_no_orphan(make_napari_viewer, ssl_home):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    widget = dock(viewer, "Pretrain")
    events = start_tiny_pretraining(widget)
    wait_until(lambda: any(isinstance(e, Progress) for e in events), 180, "training to run")
    pid, out = widget.job.pid, Path(widget.out_dir)
    viewer.close()  # the window's close: napari cancels registered tasks, our job stops and saves
    assert gone(pid, 5), "the training process outlived the viewer"
    assert not [c for c in live_children() if c.pid == pid]
    meta = json.loads((out / "model.json").read_text())
    assert meta["status"] == "stopped" and (out / "encoder.safetensors").is_file()


# --- Annotate & Train -------------------------------------------------------------------------
def test_pretrain_positives_and_start_from_an_earlier_run(make_napari_viewer, ssl_home, pretrained):
    """Positives only for joint-embedding methods; Start from lists earlier runs and continues from one (--init)."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    widget = dock(viewer, "Pretrain")
    widget.method.setCurrentText("inpainting")
    assert not widget.pairs.isEnabled()
    widget.method.setCurrentText("simclr")
    assert widget.pairs.isEnabled()
    assert [widget.pairs.itemText(i) for i in range(widget.pairs.count())] == ["augment", "micle", "position"]
    widget.pairs.setCurrentText("position")
    widget.init_from.refresh()
    paths = [widget.init_from.itemData(i) for i in range(widget.init_from.count())]
    assert paths[0] is None and pretrained in paths
    widget.init_from.setCurrentIndex(paths.index(pretrained))
    cfg = widget.build_config()
    assert cfg["pairs"] == "position" and cfg["init"] == pretrained and cfg["method"] == "simclr"
    widget.method.setCurrentText("inpainting")  # positives do not apply: not sent
    cfg = widget.build_config()
    assert "pairs" not in cfg and cfg["init"] == pretrained

    # a real run continuing from the earlier encoder
    widget.run_name.setText("continued")
    widget.image_size.setValue(TINY["image_size"])
    widget.batch_size.setValue(TINY["batch_size"])
    widget.steps.setValue(2)
    widget.preview_every_s = 0
    widget.threads = 1
    widget.start()
    assert widget.job is not None, widget.status.text()
    wait_until(lambda: not widget.running, 300, "the continued run to finish")
    meta = json.loads((Path(widget.out_dir) / "model.json").read_text())
    assert meta["status"] == "complete", meta["status"]
    assert meta["init"] and meta["init"]["method"] == "inpainting", meta["init"]  # provenance of the starting encoder


def test_annotate_train_next_accept_train_again(make_napari_viewer, ssl_home, pretrained):
    from napari_ssl._napari.annotations_autosave import LABELS_FILE, read_annotations
    from napari_ssl._napari.widgets.annotate_widget import PALETTE

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    image, expert = viewer.layers[0], viewer.layers[1]
    widget = dock(viewer, "Annotate & Train")
    widget.set_classes(["anterior", "posterior"])
    assert widget.image_combo.currentText() == image.name

    labels = widget.create_labels_layer()
    # bound to the image: same grid, its geometry and identity in metadata, named coloured classes
    assert labels.data.shape == image.data.shape and np.issubdtype(labels.data.dtype, np.integer)
    assert np.allclose(labels.scale, image.scale) and np.allclose(labels.translate, image.translate)
    info = labels.metadata["napari_ssl"]
    assert np.allclose(info["affine"], image.metadata["napari_ssl"]["affine"])
    assert info["path"] == image.metadata["napari_ssl"]["path"] and info["path"].endswith(".nii.gz")
    assert labels.metadata["volume"].shape == image.data.shape
    assert info["annotation"]["image_layer"] == image.name
    assert info["segment_names"] == {1: "anterior", 2: "posterior"}
    assert list(labels.features["name"]) == ["background", "anterior", "posterior"]
    assert np.allclose(labels.colormap.map(np.array([1]))[0][:3], np.array([int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5)]) / 255)

    # annotate 3 slices (copying the expert's outline, as a user's brush would) and 1 empty slice
    zs = np.flatnonzero(expert.data.reshape(expert.data.shape[0], -1).any(axis=1))
    painted = [int(zs[1]), int(zs[len(zs) // 2]), int(zs[-2])]
    for z in painted:
        idx = np.nonzero(expert.data[z])
        labels.data_setitem((np.full(idx[0].shape, z), *idx), expert.data[z][idx])
    empty_z = int(zs[0]) - 2
    widget.go_to_slice(empty_z)
    assert widget.current_slice() == empty_z and viewer.dims.current_step[0] == empty_z
    widget.mark_current_slice_empty()
    widget.update_count()
    assert widget.empty_slices() == [empty_z]
    assert widget.count_label.text().startswith(f"4 of {image.data.shape[0]} slices annotated (3 with labels, 1 empty)")

    # autosaved as the user works, reloadable
    folder = widget.autosave.folder
    def saved_matches():  # noqa: E306
        got = read_annotations(folder) if (folder / LABELS_FILE).is_file() else None
        return got is not None and np.array_equal(got[0], labels.data) and got[1].get("empty_slices") == [empty_z]
    wait_until(saved_matches, 30, "the autosave")
    painted_copy = np.array(labels.data, copy=True)
    viewer.layers.remove(labels)
    labels = widget.create_labels_layer()  # the same image again: the autosave comes back
    assert np.array_equal(labels.data, painted_copy) and widget.empty_slices() == [empty_z]

    # train from the pretrained encoder (chosen in the list of runs)
    widget.select_pretrained(pretrained)
    assert widget.init_combo.currentData() == pretrained and "encoder:" in widget.init_combo.currentText()
    # the default: Steps and Image size on auto (the training budget and the crop come from data/auto_config.py)
    options = widget.controls.training_options()
    assert options["steps"] is None and options["image_size"] is None
    widget.steps.setValue(6)
    widget.image_size.setValue(TINY["image_size"])
    widget.batch_size.setValue(TINY["batch_size"])
    widget.threads = 1
    widget.train()
    assert widget.running and widget.job is None  # the inputs are being written off the GUI thread
    wait_until(lambda: widget.job is not None, 60, "the job to start")
    assert widget.train_button.text() == "Stop"
    assert widget.job.runner.config["finetune"]["encoder_weights"] == pretrained
    assert widget.job.runner.config["finetune"]["semi_supervised"] and widget.job.runner.config["predict"]["fill_between"]
    staged = widget.job.runner.config["finetune"]["images"][0]
    assert isinstance(staged, dict) and staged["__npy__"].endswith(".npy")  # no full volume pickled into the child
    pid = widget.job.pid
    # progress a person can read: what is happening and, once known, about how long is left
    seen = wait_until(lambda: "left" in widget.status.text() and widget.status.text(), 240, "a time-left estimate")
    assert seen.startswith("Training the model on 4 annotated slices: step ") and " of 6" in seen, seen
    # the instant result (fill between slices) arrives while the model trains, as its own layer
    wait_until(lambda: image.name + " fill between" in viewer.layers, 120, "the fill-between layer")
    wait_until(lambda: not widget.running and not widget.results_pending, 240, "fine-tuning and prediction")
    assert isinstance(widget.last_result, Finished), widget.last_result
    assert not widget.progress_bar.isVisible()
    assert gone(pid)
    model1 = widget.last_model
    meta1 = json.loads((Path(model1) / "model.json").read_text())
    assert Path(model1).parent == Path(ssl_home) / "runs" and (Path(model1) / "model.safetensors").is_file()
    assert len(widget.plot.values) >= 1
    pred = viewer.layers[image.name + " prediction"]
    unc = viewer.layers[image.name + " uncertainty"]
    assert type(pred).__name__ == "Labels" and type(unc).__name__ == "Image"
    for lay in (pred, unc):
        assert lay.data.shape == image.data.shape
        assert np.allclose(lay.scale, image.scale) and np.allclose(lay.translate, image.translate)
    assert set(np.unique(pred.data)) <= {0, 1, 2} and np.isfinite(unc.data).all() and unc.data.max() > 0
    # the default recipe: semi-supervised, and the prediction gives the user's slices back exactly as drawn
    assert widget.semi_supervised.isChecked() and meta1["training"]["semi_supervised"]["enabled"]
    assert all(np.array_equal(pred.data[z], labels.data[z]) for z in painted) and not pred.data[empty_z].any()
    annotated = widget.annotated_mask()
    assert widget.suggestions and not any(annotated[s["slice"]] for s in widget.suggestions)
    assert widget.suggest_list.count() == len(widget.suggestions)
    # readable at a glance: prediction as an outline, confident pixels of the uncertainty fully transparent,
    # both under the annotations (still the active layer), the fill-between hidden behind the model's answer
    assert pred.contour >= 1 and unc.colormap.map(np.array([0.0, 0.1]))[:, 3].max() == 0
    assert unc.colormap.map(np.array([1.0]))[0, 3] > 0.5
    order = [ly.name for ly in viewer.layers]
    assert order.index(unc.name) < order.index(pred.name) < order.index(labels.name)
    assert viewer.layers.selection.active.name == labels.name and not viewer.layers[image.name + " fill between"].visible
    assert not unc.visible and "show it with its eye" in widget.status.text()  # the uncertainty arrives hidden; the status says so
    # the list's order matches the number it shows
    shown = [float(widget.suggest_list.item(i).text().split("score ")[1].rstrip(")")) for i in range(widget.suggest_list.count())]
    assert shown == sorted(shown, reverse=True), shown

    # Next slice -> the top suggestion; correct the prediction there; Accept copies it
    z = widget.next_slice()
    assert z == widget.suggestions[0]["slice"] and viewer.dims.current_step[0] == z and widget.current_slice() == z
    pred.data_setitem((np.array([z] * 3), np.array([10, 10, 11]), np.array([10, 11, 10])), 2)  # the user's correction
    expected = np.array(pred.data[z], copy=True)
    before = int(widget.annotated_mask().sum())
    assert widget.accept_current_slice() == z
    assert np.array_equal(labels.data[z], expected)
    assert int(widget.annotated_mask().sum()) == before + 1
    wait_until(lambda: np.array_equal(read_annotations(folder)[0][z], expected), 30, "the accepted slice to be autosaved")

    # Train again: warm start from the last model; the uncertainty, which the user has now shown, stays shown
    unc.visible = True
    assert widget.warm_start.isChecked() and widget.train_button.text() == "Train again"
    first_job = widget.job
    widget.train()
    wait_until(lambda: widget.job is not first_job, 60, "the second job to start")
    assert widget.job.runner.config["finetune"]["init_model"] == model1
    assert widget.job.label == "Fine-tuning (warm start)"
    wait_until(lambda: not widget.running and not widget.results_pending, 240, "the second round")
    assert isinstance(widget.last_result, Finished), widget.last_result
    model2 = widget.last_model
    assert model2 != model1
    meta2 = json.loads((Path(model2) / "model.json").read_text())
    assert meta1["source"]["init"] == "pretrained-encoder" and meta1["source"]["weights"] == Path(pretrained).name
    assert meta2["source"]["init"] == "model" and meta2["source"]["model"] == Path(model1).name
    assert viewer.layers[image.name + " prediction"] is pred  # updated in place
    assert viewer.layers[image.name + " uncertainty"] is unc and unc.visible and "show it with its eye" not in widget.status.text()


def test_fill_between_slices_button(make_napari_viewer, ssl_home):
    """Fill between slices from the widget: an instant layer, annotated slices as drawn, close to the expert between them."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    image, expert = viewer.layers[0], viewer.layers[1]
    widget = dock(viewer, "Annotate & Train")
    widget.set_classes(["anterior", "posterior"])
    labels = widget.create_labels_layer()
    labels.data = np.zeros_like(labels.data)  # (an earlier test's autosave may come back: start blank)
    assert not widget.fill_between()  # nothing drawn yet: a clear error, no layer
    assert widget.status.text().startswith("Error:") and image.name + " fill between" not in viewer.layers
    zs = np.flatnonzero(expert.data.reshape(expert.data.shape[0], -1).any(axis=1))
    painted = [int(zs[len(zs) * i // 6]) for i in (1, 3, 5)]
    for z in painted:
        labels.data[z] = expert.data[z]
    labels.refresh()
    assert widget.fill_between()
    wait_until(lambda: image.name + " fill between" in viewer.layers, 120, "the fill-between layer")
    fill = viewer.layers[image.name + " fill between"]
    assert fill.data.shape == image.data.shape and np.allclose(fill.scale, image.scale)
    assert fill.opacity < 0.5 and viewer.layers.selection.active.name == labels.name  # translucent, painting stays on the annotations
    for z in painted:
        np.testing.assert_array_equal(fill.data[z], expert.data[z])
    between = [z for z in range(painted[0] + 1, painted[-1]) if z not in painted]
    a, b = fill.data[between] > 0, np.asarray(expert.data)[between] > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.5, dice  # a real interpolation, not an empty or copied mask
    assert not fill.data[: painted[0]].any() and not fill.data[painted[-1] + 1:].any()  # no extrapolation


# --- Export -----------------------------------------------------------------------------------
def test_export_dicom_seg_with_edited_names_and_nifti(make_napari_viewer, ssl_home, notes):
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    from napari_ssl._napari.sample_data import MR_IMAGE

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct_liver_seg")
    ct = viewer.layers[0]
    seg_layer = next(lay for lay in viewer.layers if type(lay).__name__ == "Labels")
    widget = dock(viewer, "Export")
    widget.labels_combo.select(seg_layer.name)
    widget.format.setCurrentText("DICOM-SEG")
    assert widget.source_combo.currentText() == ct.name
    # edit the segment's name; its category / type follow
    name_item = widget.segments.item(0, 1)
    assert name_item.text() == "Liver"
    name_item.setText("Liver edited by hand")
    assert widget.segment_names() == {1: "Liver edited by hand"}
    assert "Liver" in widget.segments.item(0, 3).text()
    out = Path(ssl_home) / "exports" / "liver.dcm"
    widget.path.setText(str(out))
    widget.export()
    wait_until(lambda: widget.last_result is not None, 120, "the DICOM-SEG export")
    assert isinstance(widget.last_result, Finished), widget.last_result
    seg = hd.seg.segread(str(out))
    assert seg.Modality == "SEG" and seg.number_of_segments == 1
    assert seg.get_segment_description(1).SegmentLabel == "Liver edited by hand"
    ct_uid = ct.metadata["napari_ssl"]["series_instance_uid"]
    assert ct_uid and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
    # voxel for voxel: each frame placed by its own ImagePositionPatient, compared with the layer's slice
    ds = pydicom.dcmread(out)
    orient = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in orient], [1, 0, 0, 0, 1, 0])  # axial: rows ~ P (y), columns ~ L (x)
    frames = np.asarray(ds.pixel_array).reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    seen = set()
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        lps = np.array([float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient])
        z, y0, x0 = (lps[::-1] - np.asarray(seg_layer.translate)) / np.asarray(seg_layer.scale)
        assert abs(y0) < 1e-3 and abs(x0) < 1e-3 and abs(z - round(z)) < 1e-3, (z, y0, x0)
        np.testing.assert_array_equal(frames[i] > 0, seg_layer.data[int(round(z))] > 0)
        seen.add(int(round(z)))
    assert seen and all(not seg_layer.data[z].any() for z in set(range(seg_layer.data.shape[0])) - seen)
    assert any("exported" in m for _, m in notes())

    # NIfTI of the MR sample's labels, read back with SimpleITK in the source file's geometry
    for lay in list(viewer.layers):
        viewer.layers.remove(lay)
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    mr_labels = viewer.layers[1]
    widget.labels_combo.select(mr_labels.name)
    widget.format.setCurrentText("DICOM-SEG")
    assert "needs a DICOM source" in widget.status.text()  # an MR NIfTI has no DICOM series to reference
    widget.last_result = None
    widget.export()
    assert widget.last_result is None and widget.status.text().startswith("Error:")
    widget.format.setCurrentText("NIfTI")
    nii = Path(ssl_home) / "exports" / "hippo.nii.gz"
    widget.path.setText(str(nii))
    widget.export()
    wait_until(lambda: widget.last_result is not None, 120, "the NIfTI export")
    assert isinstance(widget.last_result, Finished), widget.last_result
    got, src = sitk.ReadImage(str(nii)), sitk.ReadImage(str(MR_IMAGE))
    assert got.GetSize() == src.GetSize() and np.allclose(got.GetSpacing(), src.GetSpacing())
    assert np.allclose(got.GetOrigin(), src.GetOrigin()) and np.allclose(got.GetDirection(), src.GetDirection())
    assert int(np.count_nonzero(sitk.GetArrayFromImage(got))) == int(np.count_nonzero(mr_labels.data))
    rng = np.random.default_rng(0)
    nz = np.argwhere(mr_labels.data)
    for idx in list(nz[rng.choice(len(nz), 200)]) + list(rng.integers(0, mr_labels.data.shape, (100, 3))):
        itk_idx = got.TransformPhysicalPointToIndex(world_to_lps(mr_labels, idx))
        assert got.GetPixel(itk_idx) == mr_labels.data[tuple(idx)]


def test_export_widget_writes_a_deidentified_copy_with_the_seg(make_napari_viewer, ssl_home, tmp_path, monkeypatch):
    import pydicom

    from napari_ssl._napari.widgets.export_widget import ExportWidget

    monkeypatch.setenv("NAPARI_SSL_DEID_KEY", "widget-test-key")   # the child process inherits it
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "ct_liver_seg")
    ct = viewer.layers[0]
    seg_layer = next(lay for lay in viewer.layers if type(lay).__name__ == "Labels")
    widget = dock(viewer, "Export")
    assert isinstance(widget, ExportWidget)
    widget.labels_combo.select(seg_layer.name)
    widget.format.setCurrentText("DICOM-SEG")
    widget.deid.setChecked(True)
    out = tmp_path / "liver.dcm"
    widget.path.setText(str(out))
    widget.export()
    wait_until(lambda: widget.last_result is not None, 120, "the export with a de-identified copy")
    assert isinstance(widget.last_result, Finished), widget.last_result
    deid = tmp_path / "liver_deid"
    files = sorted(deid.rglob("*.dcm"))
    sources = ct.metadata["volume"].source_paths
    assert len(files) == len(sources) + 1
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seg = next(d for d in dss if d.Modality == "SEG")
    imgs = [d for d in dss if d.Modality != "SEG"]
    assert all(d.PatientIdentityRemoved == "YES" for d in dss)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == imgs[0].SeriesInstanceUID != ct.metadata["napari_ssl"]["series_instance_uid"]
    assert "de-identified copy" in widget.status.text()
    widget.format.setCurrentText("NIfTI")
    assert not widget.deid.isEnabled() and not widget.deid.isChecked()
