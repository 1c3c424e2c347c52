"""Results arrive without building layers: the Annotate & Train widget makes the result layers when the
labels layer is made (hidden, empty, one per event-loop turn), and a result only swaps its data into them;
Train makes no layer; the finished job's child is joined off the GUI thread. Real napari viewer (Xvfb), real training job; no mocks."""
from __future__ import annotations

import numpy as np
from test_widgets import PLUGIN, TINY, dock, ssl_home, wait_until  # noqa: F401 (ssl_home: fixture)

from napari_ssl._napari.widgets import result_layers
from napari_ssl.train.events import Failed, Finished


def test_result_layers_are_made_ahead_and_results_only_swap_data(make_napari_viewer, ssl_home):  # noqa: F811
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    image, expert = viewer.layers[0], viewer.layers[1]
    widget = dock(viewer, "Annotate & Train")
    names = {kind: image.name + " " + kind for kind in ("prediction", "uncertainty", "fill between")}
    n_before = len(viewer.layers)
    labels = widget.create_labels_layer()
    # the call made the annotations layer only: the result layers come one per event-loop turn after it,
    # hidden, holding zeros, under a name that is not the result's
    assert len(viewer.layers) == n_before + 1
    # (each drawn once, for its shaders, then hidden)
    waiting = wait_until(lambda: all(result_layers.waiting_name(n) in viewer.layers
                                     and not viewer.layers[result_layers.waiting_name(n)].visible for n in names.values())
                         and {k: viewer.layers[result_layers.waiting_name(n)] for k, n in names.items()}, 60,
                         "the result layers made ahead of time")
    for kind, lay in waiting.items():
        assert result_layers.is_placeholder(lay) and lay.data.shape == image.data.shape
        assert not np.asarray(lay.data[0]).any() and names[kind] not in viewer.layers
    assert result_layers.same_layer(viewer.layers.selection.active, labels)  # painting stays on the annotations
    ids = {k: lay.unique_id for k, lay in waiting.items()}
    labels.data = np.zeros_like(labels.data)
    zs = np.flatnonzero(expert.data.reshape(expert.data.shape[0], -1).any(axis=1))
    for z in (int(zs[len(zs) // 4]), int(zs[len(zs) // 2]), int(zs[3 * len(zs) // 4])):
        labels.data[z] = (np.asarray(expert.data[z]) > 0).astype(labels.data.dtype)
    labels.refresh()
    widget.steps.setValue(4)
    widget.image_size.setValue(TINY["image_size"])
    widget.batch_size.setValue(TINY["batch_size"])
    widget.threads = 1
    n_layers = len(viewer.layers)
    widget.train()
    assert widget.running and len(viewer.layers) == n_layers  # Train makes no layer

    wait_until(lambda: not widget.running and not widget.results_pending, 300, "training, prediction and the layers")
    assert isinstance(widget.last_result, Finished), widget.last_result
    final = {k: viewer.layers[n] for k, n in names.items()}
    assert {k: lay.unique_id for k, lay in final.items()} == ids  # the same layers: arrival swapped data in
    assert len(viewer.layers) == n_layers
    assert not any(result_layers.is_placeholder(lay) or lay.name.endswith(result_layers.WAITING_SUFFIX) for lay in viewer.layers)
    pred, unc, fill = final["prediction"], final["uncertainty"], final["fill between"]
    assert pred.visible and not fill.visible  # the model's answer replaces the instant one on screen
    assert not unc.visible and repr(unc.name) in widget.status.text()  # the uncertainty arrives hidden, and the status says where
    assert pred.data.any() and unc.data.max() > 0 and fill.data.any()
    assert tuple(unc.contrast_limits) == (0, result_layers.UNCERTAINTY_LEVELS)  # fixed: never computed from the volume
    assert pred.contour >= 1 and fill.opacity < 0.5 and unc.colormap.map(np.array([0.0]))[0, 3] == 0
    order = [lay.name for lay in viewer.layers]
    assert order.index(unc.name) < order.index(pred.name) < order.index(labels.name)
    export = dock(viewer, "Export")  # offers the results, under their names
    offered = [export.labels_combo.itemText(i) for i in range(export.labels_combo.count())]
    assert pred.name in offered and fill.name in offered, offered
    # the finished child was joined by the runner's own thread, not by the GUI thread's poll
    runner = widget.job.runner
    assert runner.reap_in_thread and runner._reaper is not None  # a Future of the runner's helper threads
    runner.join_reaper(30)
    assert not runner.is_alive()


def test_a_failed_training_leaves_the_result_layers_waiting(make_napari_viewer, ssl_home):  # noqa: F811
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    image = viewer.layers[0]
    widget = dock(viewer, "Annotate & Train")
    labels = widget.create_labels_layer()
    labels.data = np.zeros_like(labels.data)
    labels.data[10, 5:15, 5:15] = 1
    labels.refresh()
    widget.fill_between_auto = False
    widget.steps.setValue(2)
    widget.threads = 1
    widget.device.addItem("no such device", "nosuchdevice:0")
    widget.device.setCurrentIndex(widget.device.count() - 1)
    widget.train()
    wait_until(lambda: not widget.running and not widget.results_pending and widget.last_result is not None, 300,
               "the job to fail")
    assert isinstance(widget.last_result, Failed), widget.last_result
    assert image.name + " prediction" not in viewer.layers and image.name + " uncertainty" not in viewer.layers
    for kind in ("prediction", "uncertainty"):  # hidden and empty, for the next Train
        lay = viewer.layers[result_layers.waiting_name(f"{image.name} {kind}")]
        assert result_layers.is_placeholder(lay) and not lay.visible
    # the export widget does not offer a layer that holds no result
    export = dock(viewer, "Export")
    offered = [export.labels_combo.itemText(i) for i in range(export.labels_combo.count())]
    assert labels.name in offered and not any(t.endswith(result_layers.WAITING_SUFFIX) for t in offered), offered


def test_dock_changes_do_not_relayout_the_window(make_napari_viewer):
    """Status text that wraps to more lines, the progress bar and the settings note appearing stay inside the dock
    (its scroll area): napari's canvas keeps its size, so the window (OpenGL canvas included) is not re-laid out
    and repainted at the Train click or with each progress step."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    widget = dock(viewer, "Annotate & Train")
    canvas = viewer.window._qt_viewer.canvas.native
    wait_until(lambda: canvas.isVisible() and canvas.width() > 0, 30, "the canvas to show")
    for _ in range(5):
        wait_until(lambda: True, 0.05, "")
    before = (canvas.width(), canvas.height())
    widget.status.setText("Training the model on 3 annotated slices; " * 12)
    widget.controls.set_bar(3, 300, "training: %p%")
    widget.show_settings_note("These settings will be slow on this machine: " * 6)
    wait_until(lambda: widget.progress_bar.isVisible(), 10, "the progress bar")
    for _ in range(10):
        wait_until(lambda: True, 0.05, "")
    assert (canvas.width(), canvas.height()) == before
    assert widget.status.height() > 3 * widget.status.fontMetrics().height()  # the text did wrap (the test means it)
