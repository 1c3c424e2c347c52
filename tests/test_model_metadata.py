"""model.json's one schema (napari_ssl.models.metadata): files in the older shapes still load, unknown keys survive,
and what is written reads back the same."""
import json
import os
import time

import pytest

from napari_ssl.active.predict import load_segmentation_model_meta
from napari_ssl.errors import NapariSSLError
from napari_ssl.models.checkpoint import read_meta
from napari_ssl.models.metadata import PRETRAINED, SCHEMA_VERSION, SEGMENTATION, ModelMeta, read_model_meta, write_model_meta

# a pretraining folder's model.json as format 1 wrote it, and older spellings still found in the wild
OLD_PRETRAINED = {"format_version": 1, "kind": "pretrained-encoder", "method": "simclr", "encoder_name": "resnet18", "in_channels": 1,
                  "image_size": 64, "normalization": {"MR": {"mode": "percentile"}}, "data": {"volumes": 4, "slices": 120},
                  "steps": 30, "status": "complete", "weights_file": "encoder.safetensors", "saved_at": "2026-01-02T03:04:05+0000",
                  "options": {"temperature": 0.2}, "private_note": {"kept": [1, 2]}}
OLDER_SPELLINGS = {"type": "pretrain", "method": "rotation", "encoder": "resnet34", "in_channels": 3, "created_at": 1767323045,
                   "data_summary": {"volumes": 2}, "my_key": "x"}
OLD_SEGMENTATION = {"kind": "segmentation", "encoder": "resnet18", "in_channels": 1, "image_size": 32, "num_classes": 3,
                    "class_names": ["anterior", "posterior"], "classes": {"1": "anterior", "2": "posterior"},
                    "training": {"steps": 4}, "saved_at": "2026-01-02T03:04:05+0000", "weights_file": "model.safetensors"}
FINETUNE_SPELLING = {"type": "fine-tune", "encoder_name": "resnet18", "in_channels": 1, "num_classes": 2, "finished_at": 1767323045.5}


def _folder(tmp_path, name, meta):
    d = tmp_path / name
    d.mkdir()
    (d / "model.json").write_text(json.dumps(meta))
    return d


def test_old_shapes_load_with_their_fallbacks(tmp_path):
    m = read_model_meta(_folder(tmp_path, "old", OLD_PRETRAINED))
    assert (m.kind, m.encoder_name, m.in_channels, m.image_size, m.method) == (PRETRAINED, "resnet18", 1, 64, "simclr")
    assert m.format_version == 1 and m.created == "2026-01-02T03:04:05+0000"  # saved_at stands in for created
    assert m.extra == {"steps": 30, "status": "complete", "options": {"temperature": 0.2}, "private_note": {"kept": [1, 2]}}

    m = read_model_meta(_folder(tmp_path, "older", OLDER_SPELLINGS))
    assert (m.kind, m.encoder_name, m.in_channels, m.data) == (PRETRAINED, "resnet34", 3, {"volumes": 2})
    assert m.created == time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1767323045))
    assert m.extra == {"my_key": "x", "created_at": 1767323045}  # encoder, type, data_summary became fields; nothing dropped

    m = read_model_meta(_folder(tmp_path, "seg", OLD_SEGMENTATION))
    assert m.is_segmentation and m.encoder_name == "resnet18" and (m.num_classes, m.class_names) == (3, ["anterior", "posterior"])
    assert m.extra["classes"] == {"1": "anterior", "2": "posterior"} and m.extra["training"] == {"steps": 4}

    m = read_model_meta(_folder(tmp_path, "ft", FINETUNE_SPELLING))
    assert m.kind == SEGMENTATION and m.created.startswith(time.strftime("%Y-%m-%d", time.localtime(1767323045)))


def test_undated_file_is_dated_by_its_mtime(tmp_path):
    d = _folder(tmp_path, "undated", {"kind": "pretrained-encoder", "encoder_name": "resnet18"})
    os.utime(d / "model.json", (1767323045, 1767323045))
    assert read_model_meta(d).created == time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1767323045))


@pytest.mark.parametrize("raw", [OLD_PRETRAINED, OLDER_SPELLINGS, OLD_SEGMENTATION, FINETUNE_SPELLING])
def test_round_trip_keeps_every_value(tmp_path, raw):
    first = read_model_meta(_folder(tmp_path, "src", raw))
    out = tmp_path / "out"
    out.mkdir()
    write_model_meta(out, first)
    written = json.loads((out / "model.json").read_text())
    assert written["format_version"] == SCHEMA_VERSION and written["kind"] == first.kind
    assert written["encoder_name"] == first.encoder_name and written["created"] == first.created and written["saved_at"]
    again = read_model_meta(out)
    assert again.to_dict() == {**first.to_dict(), "format_version": SCHEMA_VERSION, "saved_at": again.saved_at}
    for key, value in raw.items():  # every value of the old file is still there, under its old or its schema name
        assert value in written.values() or key in ("type", "created_at", "finished_at", "format_version"), key
    # written again: the same object (the second write changes nothing but the write time)
    write_model_meta(out, again)
    assert {k: v for k, v in read_meta(str(out)).items() if k != "saved_at"} == {k: v for k, v in again.to_dict().items() if k != "saved_at"}


def test_new_shape_round_trips_exactly(tmp_path):
    meta = ModelMeta(kind=SEGMENTATION, encoder_name="resnet18", in_channels=1, image_size=64, num_classes=2, class_names=["liver"],
                     normalization={"CT": {"mode": "window", "window": [-100.0, 200.0]}}, created="2026-11-30T07:00:00+0000",
                     weights_file="model.safetensors", extra={"auto": {"rois": [[1, 2, 3, 4]]}, "metrics": {"final_loss": 0.5}})
    d = tmp_path / "m"
    d.mkdir()
    write_model_meta(d, meta)
    back = read_model_meta(d)
    assert back == meta  # every field, extra included (saved_at and the version were set on `meta` by the write)
    assert read_meta(str(d))["auto"] == {"rois": [[1, 2, 3, 4]]} and back.get("metrics") == {"final_loss": 0.5}


def test_prediction_reads_the_old_shape_and_refuses_what_it_cannot_use(tmp_path):
    meta = load_segmentation_model_meta(str(_folder(tmp_path, "seg", OLD_SEGMENTATION)))
    assert meta["encoder_name"] == "resnet18" and meta["num_classes"] == 3  # `encoder` in the file
    with pytest.raises(NapariSSLError, match="not a fine-tuned segmentation model"):
        load_segmentation_model_meta(str(_folder(tmp_path, "pre", OLD_PRETRAINED)))
    with pytest.raises(NapariSSLError, match="lacks encoder_name"):
        load_segmentation_model_meta(str(_folder(tmp_path, "bad", {"kind": "segmentation", "in_channels": 1, "num_classes": 2})))
    bad_json = tmp_path / "broken"
    bad_json.mkdir()
    (bad_json / "model.json").write_text("{not json")
    with pytest.raises(NapariSSLError, match="not valid JSON"):
        read_model_meta(bad_json)
