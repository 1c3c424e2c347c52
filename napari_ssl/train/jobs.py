"""Job functions for :class:`napari_ssl.train.runner.JobRunner`: ``job(config, events, stop_event)``.

Each wraps an engine (pretraining, fine-tuning, prediction, export) without re-implementing it, and
adds what a viewer needs: for the annotate-and-train loop, the prediction, uncertainty and suggested
slices of the image right after training, written as .npy files (read back with allow_pickle=False)
so large volumes never travel through the event queue.
"""
from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass, replace
from typing import Any, Callable, Optional

import numpy as np

from ..settings import THREADS_ENV
from .devices import job_devices
from .events import Exported, Finished, Prediction, Status, Trained, as_dict, as_event, typed_sink

EventSink = Callable[[dict], None]


def _as(cls, config: Any):
    if isinstance(config, cls):
        return config
    if is_dataclass(config):
        config = asdict(config)
    return cls(**dict(config))


def _limit_threads(config: Any) -> None:
    n = (config.get("threads") if isinstance(config, dict) else None) or os.environ.get(THREADS_ENV)
    if n:
        import torch

        torch.set_num_threads(int(n))


def pretrain_job(config: Any, events: EventSink, stop_event) -> str:
    """Self-supervised pretraining (napari_ssl.train.pretrain.run_pretraining)."""
    config = job_devices(config, "pretrain")
    from .pretrain import PretrainConfig, run_pretraining

    _limit_threads(config)
    cfg = _as(PretrainConfig, {k: v for k, v in config.items() if k != "threads"} if isinstance(config, dict) else config)
    return run_pretraining(cfg, events, stop_event)


def finetune_job(config: Any, events: EventSink, stop_event) -> str:
    """Fine-tuning on sparse annotations (napari_ssl.train.finetune.run_finetuning)."""
    config = job_devices(config, "finetune")
    from .finetune import FinetuneConfig, run_finetuning

    _limit_threads(config)
    cfg = _as(FinetuneConfig, {k: v for k, v in config.items() if k != "threads"} if isinstance(config, dict) else config)
    return run_finetuning(cfg, events, stop_event)


def _save_npy(path: str, array: np.ndarray) -> str:
    from ..io.atomic import atomic_path

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
    return path


def _predict_progress(events: EventSink):
    """A predict_volume progress callback that emits readable status events (slices done, time left)."""
    from ..progress_text import Eta, step_text

    eta = Eta()
    emit = typed_sink(events)

    def progress(done: int, total: int) -> None:
        left = eta.update(done, total)
        emit(Status(step_text("Predicting the whole image", done, total, left, unit="slice"),
                    phase="predict", done=int(done), total=int(total), seconds_left=left))

    return progress


def predict_job(config: dict, events: EventSink, stop_event) -> str:
    """Predict labels + uncertainty for one image and rank slices to annotate next.

    config: ``model`` (folder), ``image`` (Volume or path), ``out`` (folder for the .npy results),
    optional ``annotated_slices`` ((z,) bool, excluded from suggestions), ``labels`` (the user's label map: with
    ``annotated_slices``, those slices come back as drawn; ``keep_connected``), ``n`` (suggestions), ``tta`` (bool),
    ``device``. Emits ``{"type": "prediction", "labels": path, "uncertainty": path (uint8, x uncertainty_scale = 0..1),
    "slice_uncertainty": [...], "suggestions": [{"rank", "slice", "score", "reason"}, ...]}`` before done
    (``score``: the ranking, active.next_slice.suggest_in_study; default where the completed result is most likely wrong).
    """
    config = job_devices(config, "predict")
    from ..active.next_slice import suggest_in_study
    from ..active.predict import predict_volume
    from ..io import load_image

    _limit_threads(config)
    emit = typed_sink(events)
    os.makedirs(config["out"], exist_ok=True)
    emit(Status("Predicting the whole image: loading the model"))
    volume = load_image(config["image"])
    device = config.get("device")
    annotated = config.get("annotated_slices")
    annotation = None
    if config.get("labels") is not None and annotated is not None:  # the user's slices come back exactly as drawn
        annotation = (np.asarray(config["labels"]), np.asarray(annotated, bool))
    pred = predict_volume(config["model"], volume, tta=bool(config.get("tta", False)),
                          device=None if device in (None, "auto") else device, annotation=annotation,
                          keep_connected=bool(config.get("keep_connected", False)),
                          fill_between=bool(config.get("fill_between", False)), progress=_predict_progress(events),
                          roi=config.get("roi"), z_range=config.get("z_range"), seeds=config.get("seeds"),
                          propagate=bool(config.get("propagate", False)))
    emit(Status("Predicting the whole image: ranking the slices to annotate next"))
    suggestions = suggest_in_study(pred, annotated, None if annotation is None else annotation[0], n=int(config.get("n", 5)),
                                   score=config.get("score"))
    labels_path = _save_npy(os.path.join(config["out"], "prediction.npy"), pred.labels)
    # uint8 (0..255 for normalised entropy 0..1): a quarter of float32's size to write, read and show (a full CT: 78 MB, not 310)
    unc_u8 = np.clip(np.rint(pred.uncertainty * 255.0), 0, 255).astype(np.uint8)
    unc_path = _save_npy(os.path.join(config["out"], "uncertainty.npy"), unc_u8)
    emit(Prediction(labels=labels_path, uncertainty=unc_path, uncertainty_scale=1.0 / 255.0, model=config["model"],
                    class_names=list(pred.class_names),
                    slice_uncertainty=[float(v) for v in pred.slice_uncertainty],
                    suggestions=[{k: (v.item() if hasattr(v, "item") else v) for k, v in s.items()} for s in suggestions]))
    return config["out"]


_NPY = "__npy__"
_VOLUME = "__volume_without_array__"


def offload_arrays(config: Any, folder: str) -> Any:
    """The config with every large array (also a Volume's voxels) written to `folder` as .npy and replaced by a
    reference that :func:`load_offloaded` turns back in the job process.

    Why: a job's config travels to the child process through a pipe that the child only reads once Python
    has started there (seconds); pickling a full CT into it blocked the viewer for that long at the click.
    Called off the GUI thread (writing a file releases the GIL)."""
    from ..io.volume import Volume

    os.makedirs(folder, exist_ok=True)
    staged: dict[int, dict] = {}  # id -> reference: an object shared by several entries (the image of the
    # fine-tuning and of the prediction) is written once and comes back as one object

    def save(obj: Any, a: np.ndarray, extra: Optional[dict] = None) -> dict:
        if id(obj) not in staged:
            path = _save_npy(os.path.join(folder, f"array{len(staged) + 1}.npy"), a)
            staged[id(obj)] = {**(extra or {}), _NPY: path}
        return staged[id(obj)]

    def walk(obj):
        if isinstance(obj, Volume):
            # without the per-slice DICOM headers too (the job needs voxels and geometry): the rest must fit the
            # pipe's buffer, or the viewer waits at the start for the child to read it
            return save(obj, obj.array, {_VOLUME: replace(obj, array=np.zeros((1, 1, 1), obj.array.dtype), warnings=list(obj.warnings),
                                                          source_datasets=[], source_frames=[])})
        if isinstance(obj, np.ndarray) and obj.nbytes >= 1 << 20:
            return save(obj, obj)
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(config)


def load_offloaded(obj: Any) -> Any:
    """Inverse of :func:`offload_arrays` (in the job process); the same Volume object wherever it was shared."""
    cache: dict[str, Any] = {}

    def walk(o):
        if isinstance(o, dict) and _NPY in o:
            path = o[_NPY]
            if path not in cache:
                arr = np.load(path, allow_pickle=False)
                os.remove(path)  # read whole (no memory map): the staged copy is no longer needed
                cache[path] = replace(o[_VOLUME], array=arr) if _VOLUME in o else arr
            return cache[path]
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(obj)


def train_predict_job(config: dict, events: EventSink, stop_event) -> str:
    """One round of the active-learning loop: fine-tune, then predict and suggest on the same image.

    config: ``finetune`` (FinetuneConfig or its fields) and ``predict`` (predict_job's config without
    ``model``). The fine-tuning's own "done" becomes a "trained" event, so the job ends once, after prediction.
    """
    emit = typed_sink(events)

    def relay(ev: dict) -> None:
        emit(Trained.from_dict(as_dict(ev)) if isinstance(as_event(ev), Finished) else ev)

    config = load_offloaded(config)

    model_dir = finetune_job(config["finetune"], relay, stop_event)
    pred_cfg = dict(config["predict"], model=model_dir)
    pred_cfg.update(_same_study_prediction(config["finetune"], model_dir))
    if "threads" in config:
        pred_cfg["threads"] = config["threads"]
    predict_job(pred_cfg, events, None)  # predict even after Stop: the saved model is worth seeing
    stopped = bool(stop_event is not None and stop_event.is_set())
    emit(Finished(out=model_dir, stopped=stopped))
    return model_dir


def _same_study_prediction(finetune: Any, model_dir: str) -> dict:
    """Predicting the study just annotated: the crop the model trained on, and the drawing as seeds (keep-connected)."""
    from ..models.checkpoint import read_meta

    labels = (finetune.get("labels") if isinstance(finetune, dict) else getattr(finetune, "labels", None)) or []
    meta = read_meta(model_dir)
    auto = meta.get("auto") or {}
    out = {"roi": (auto.get("rois") or [None])[0], "z_range": (auto.get("z_ranges") or [None])[0]}
    semi = (meta.get("training") or {}).get("semi_supervised") or {}
    if semi.get("fill_between_prediction") is False:  # the recipe's own choice (off when the model predicts from three sides)
        out["fill_between"] = False
    out["propagate"] = bool(semi.get("propagate_prediction", False))
    if labels and isinstance(labels[0], np.ndarray):
        out["seeds"] = labels[0]
    return out


def export_job(config: dict, events: EventSink, stop_event) -> str:
    """Write labels as DICOM-SEG or NIfTI and optionally send to a PACS (napari_ssl.io.export.export_labels)."""
    from ..io.export import export_labels

    emit = typed_sink(events)
    emit(Status(f"writing {os.path.basename(os.fspath(config['out_path']))}"))
    config = dict(config)
    deid = config.pop("deidentify", None)  # {"sources", "out", "key_file"}: a de-identified copy with the SEG
    summary = export_labels(**config)
    if deid:
        from ..io.dicom.deid import deidentify

        emit(Status("writing the de-identified copy"))
        summary["deidentified"] = deidentify(list(deid["sources"]) + [summary["path"]], deid["out"], key_file=deid.get("key_file"))
    emit(Exported(summary))
    return summary.get("path") or os.fspath(config["out_path"])
