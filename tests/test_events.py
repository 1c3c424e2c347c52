"""Typed job events (napari_ssl.train.events): the dict on the pipe and the typed event at both ends."""
from __future__ import annotations

import pickle

import numpy as np

from napari_ssl.train import events as E


def test_every_event_type_goes_over_the_pipe_and_comes_back_equal():
    samples = [
        E.Started(total_steps=100, step=5),
        E.Progress(step=3, total_steps=100, epoch=0, images_per_s=12.5),
        E.Loss(step=3, values={"loss": 0.5}),
        E.Preview(step=3, images={"image": np.arange(6, dtype=np.float32).reshape(2, 3)}),
        E.Checkpoint(path="/runs/a", step=3),
        E.Status("Predicting", phase="predict", done=2, total=10, seconds_left=4.0),
        E.Log("lost an event"),
        E.Trained(out="/runs/m", stopped=True),
        E.Prediction(labels="p.npy", uncertainty="u.npy", uncertainty_scale=1 / 255, model="/runs/m", class_names=["a"],
                     slice_uncertainty=[0.1], suggestions=[{"rank": 0, "slice": 4, "uncertainty": 0.3}]),
        E.Exported(summary={"path": "x.dcm"}),
        E.Finished(out="/runs/m", stopped=False, step=7, rank=0, world_size=2, weights_sha256="ab", encoder_sha256="cd"),
        E.Failed("boom", traceback="tb", exitcode=-9, stopped=True),
    ]
    assert {type(s) for s in samples} == set(E.EVENT_TYPES.values())
    for ev in samples:
        wire = pickle.loads(pickle.dumps(ev.to_dict()))  # what the child's queue does
        assert type(wire) is dict and wire["type"] == ev.TYPE
        back = E.as_event(wire)
        assert type(back) is type(ev)
        if isinstance(ev, E.Preview):
            assert np.array_equal(back.images["image"], ev.images["image"]) and back.step == ev.step
        else:
            assert back == ev


def test_the_wire_dict_is_todays_dict():
    """Optional fields left unset are not sent, so the dicts the CLI printers see keep their keys."""
    assert E.Started(total_steps=2).to_dict() == {"type": "started", "total_steps": 2, "step": 0}
    assert E.Progress(step=2, total_steps=2, epoch=0).to_dict() == {"type": "progress", "step": 2, "total_steps": 2, "epoch": 0}
    assert E.Loss(step=1, values={"loss": 0.25}).to_dict() == {"type": "loss", "step": 1, "values": {"loss": 0.25}}
    assert E.Finished(out="/m", stopped=True).to_dict() == {"type": "done", "out": "/m", "stopped": True}
    assert E.Status("writing x").to_dict() == {"type": "status", "message": "writing x"}
    assert E.Trained.from_dict({"type": "done", "out": "/m", "stopped": False}).to_dict() == {"type": "trained", "out": "/m", "stopped": False}


def test_unknown_keys_and_types_are_kept():
    ev = E.as_event({"type": "progress", "step": 4, "total_steps": 8, "epoch": 1, "lr": 0.01})
    assert isinstance(ev, E.Progress) and ev.step == 4 and ev.extra == {"lr": 0.01}
    assert ev.to_dict() == {"type": "progress", "step": 4, "total_steps": 8, "epoch": 1, "lr": 0.01}
    odd = E.as_event({"type": "something-new", "x": 1})
    assert isinstance(odd, E.Unknown) and odd.kind == "something-new" and odd.to_dict() == {"type": "something-new", "x": 1}
    assert E.as_event(ev) is ev


def test_emitter_and_typed_sink_pass_dicts_on():
    got: list = []
    E.Emitter(got.append)(E.Checkpoint(path="/a", step=2))
    E.Emitter(got.append)({"type": "log", "message": "as before"})
    E.typed_sink(got.append)(E.Log("typed"))
    assert got == [{"type": "checkpoint", "path": "/a", "step": 2}, {"type": "log", "message": "as before"},
                   {"type": "log", "message": "typed"}]
