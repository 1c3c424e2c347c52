"""Results arrive without building layers: the Annotate & Train widget makes the result layers when Train is
clicked (hidden, empty, one per event-loop turn), and a result only swaps its data into them; the finished
job's child is joined off the GUI thread. Real napari viewer (Xvfb), real training job; no mocks."""
from __future__ import annotations

import threading

import numpy as np

from napari_ssl._napari.widgets import result_layers
from test_widgets import PLUGIN, TINY, dock, ssl_home, wait_until  # noqa: F401 (ssl_home: fixture)


def test_result_layers_are_made_at_the_click_and_results_only_swap_data(make_napari_viewer, ssl_home):  # noqa: F811
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_mr")
    image, expert = viewer.layers[0], viewer.layers[1]
    widget = dock(viewer, "Annotate & Train")
    labels = widget.create_labels_layer()
    labels.data = np.zeros_like(labels.data)
    zs = np.flatnonzero(expert.data.reshape(expert.data.shape[0], -1).any(axis=1))
    for z in (int(zs[len(zs) // 4]), int(zs[len(zs) // 2]), int(zs[3 * len(zs) // 4])):
        labels.data[z] = (np.asarray(expert.data[z]) > 0).astype(labels.data.dtype)
    labels.refresh()
    widget.steps.setValue(4)
    widget.image_size.setValue(TINY["image_size"])
    widget.batch_size.setValue(TINY["batch_size"])
    widget.threads = 1
    names = {kind: image.name + " " + kind for kind in ("prediction", "uncertainty", "fill between")}

    widget.train()
    # the click itself made no layer: they come one per event-loop turn after it, hidden, holding zeros
    assert not any(result_layers.waiting_name(n) in viewer.layers for n in names.values())
    waiting = wait_until(lambda: all(result_layers.waiting_name(n) in viewer.layers for n in names.values())
                         and {k: viewer.layers[result_layers.waiting_name(n)] for k, n in names.items()}, 60,
                         "the result layers made ahead of time")
    for kind, lay in waiting.items():
        if kind == "fill between" and not result_layers.is_placeholder(lay):
            continue  # fill between may already have arrived
        assert result_layers.is_placeholder(lay) and not lay.visible and lay.data.shape == image.data.shape
        assert names[kind] not in viewer.layers  # "exists under its name" still means "the result is there"
    assert result_layers.same_layer(viewer.layers.selection.active, labels)  # painting stays on the annotations
    ids = {k: lay.unique_id for k, lay in waiting.items()}

    wait_until(lambda: not widget.running and not widget.results_pending, 300, "training, prediction and the layers")
    assert widget.last_result["type"] == "done", widget.last_result
    final = {k: viewer.layers[n] for k, n in names.items()}
    assert {k: lay.unique_id for k, lay in final.items()} == ids  # the same layers: arrival swapped data in
    assert not any(result_layers.is_placeholder(lay) or lay.name.endswith(result_layers.WAITING_SUFFIX) for lay in viewer.layers)
    pred, unc, fill = final["prediction"], final["uncertainty"], final["fill between"]
    assert pred.visible and unc.visible and not fill.visible  # the model's answer replaces the instant one on screen
    assert pred.data.any() and unc.data.max() > 0 and fill.data.any()
    assert pred.contour >= 1 and fill.opacity < 0.5 and unc.colormap.map(np.array([0.0]))[0, 3] == 0
    order = [lay.name for lay in viewer.layers]
    assert order.index(unc.name) < order.index(pred.name) < order.index(labels.name)
    # the finished child was joined by the runner's own thread, not by the GUI thread's poll
    runner = widget.job.runner
    assert runner.reap_in_thread and runner._reaper is not None and runner._reaper is not threading.main_thread()
    runner.join_reaper(30)
    assert not runner.is_alive()


def test_placeholders_left_by_a_failed_training_are_removed(make_napari_viewer, ssl_home):  # noqa: F811
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
    assert widget.last_result["type"] == "error", widget.last_result
    wait_until(lambda: not widget._staged.busy, 30, "the clean-up")
    assert not any(lay.name.endswith(result_layers.WAITING_SUFFIX) for lay in viewer.layers), [lay.name for lay in viewer.layers]
    assert image.name + " prediction" not in viewer.layers
