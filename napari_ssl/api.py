"""The Python API: what a notebook, the CLI and the viewer's widgets call.

    from napari_ssl import api
    vol = api.load_volume("scan.nii.gz")
    api.pretrain("simclr", ["scans/"], "runs/pre", steps=2000)
    api.finetune(["scan.nii.gz"], ["labels.nii.gz"], "runs/seg", encoder_weights="runs/pre", steps=500)
    pred = api.predict("runs/seg", vol, tta=True)       # arrays on vol's (canonical) grid
    api.save_prediction(pred, vol, "mask.nii.gz", uncertainty="unc.nii.gz")
    api.suggest("runs/seg", vol, labels="labels.nii.gz", n=5)
    api.suggest_pool("runs/seg", [vol, "other.nii.gz"], n=4)   # rank over several scans: adds "volume"

Slice indices are along axis 0 of the canonical array (what napari shows as the first
dimension). Images may be given as paths or as :class:`~napari_ssl.io.Volume`; label maps as
paths, Volumes or numpy arrays on the image's grid (a napari Labels layer's data).
Training functions take ``events`` (a callable receiving the contract's event dicts) and
``stop_event`` (anything with ``is_set()``), and return the output folder.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np

from .errors import NapariSSLError
from .io.volume import Volume

if TYPE_CHECKING:  # torch is imported only by the functions that need it: load_volume stays light
    from .active.predict import Prediction

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Volume]
LabelsLike = Union[PathLike, Volume, np.ndarray]

__all__ = ["load_volume", "load_rtstruct", "deidentify", "pretrain", "finetune", "predict", "save_prediction", "suggest", "suggest_pool",
           "annotated_slices", "fill_between", "Prediction"]


def load_volume(path: PathLike) -> Volume:
    """One scan (NIfTI/NRRD/MHA file or DICOM series folder) on the canonical grid."""
    from .io import load_image

    return load_image(os.fspath(path))


def load_rtstruct(path: PathLike, source: Optional[ImageLike] = None, rois: Optional[Sequence[str] | str] = None
                  ) -> tuple[Volume, dict[int, str], dict[int, tuple]]:
    """An RTSTRUCT as (labels Volume on its series' canonical grid, {value: ROI name}, {value: ROI RGB colour}).

    `source`: the referenced series (Volume or folder); default: found in the RTSTRUCT's folder tree.
    `rois`: ROI names to take, in order (later ones win where they overlap); without it overlapping ROIs
    are an error. The Volume is usable as labels anywhere (finetune, export) and carries the series' identity.
    An RTSTRUCT path is also accepted directly wherever labels are (no overlap, or FinetuneConfig ``rois``)."""
    from .io.dicom.rtstruct import read_rtstruct_labels

    return read_rtstruct_labels(os.fspath(path), source=source if isinstance(source, Volume) or source is None else os.fspath(source), rois=rois)


def deidentify(sources: Sequence[PathLike] | PathLike, out: PathLike, *, key: Optional[str] = None, key_file: Optional[PathLike] = None,
               allow_burned_in: bool = False) -> dict:
    """De-identified copy of DICOM series (+ their SEG / RTSTRUCT) in a new folder `out`; see napari_ssl.io.dicom.deid.
    The key (pseudonym seed) comes from `key`, `key_file` or $NAPARI_SSL_DEID_KEY and is never written out."""
    from .io.dicom.deid import deidentify as _deidentify

    paths = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(p) for p in sources]
    return _deidentify(paths, os.fspath(out), key=key, key_file=_opt_path(key_file), allow_burned_in=allow_burned_in)


def pretrain(method: str, data: Sequence[PathLike] | PathLike, out: PathLike, *, events: Optional[Callable[[dict], None]] = None,
             stop_event: Any = None, **options: Any) -> str:
    """Self-supervised pretraining (thin wrapper over napari_ssl.train.pretrain.run_pretraining).

    `options` are PretrainConfig fields: encoder, in_channels, image_size, epochs, steps, batch_size, lr,
    devices, precision, init, pairs, options (method options dict), resume, seed, ..."""
    from .train.pretrain import PretrainConfig, run_pretraining

    paths = [os.fspath(data)] if isinstance(data, (str, os.PathLike)) else [os.fspath(p) for p in data]
    try:
        config = PretrainConfig(method=method, data=paths, out=os.fspath(out), **options)
    except TypeError as exc:
        raise NapariSSLError(f"pretrain: {exc}") from None
    return run_pretraining(config, events=events, stop_event=stop_event)


def finetune(images: Sequence[ImageLike] | ImageLike, labels: Sequence[LabelsLike] | LabelsLike, out: PathLike, *,
             encoder_weights: Optional[PathLike] = None, init_model: Optional[PathLike] = None, classes: Optional[Sequence[str] | str] = None,
             empty_slices: Optional[Sequence[Sequence[int]] | Sequence[int]] = None, steps: Optional[int] = None, epochs: Optional[int] = None,
             events: Optional[Callable[[dict], None]] = None, stop_event: Any = None, **options: Any) -> str:
    """Fine-tune a U-Net on the annotated slices; returns the model folder.

    `empty_slices`: for one image a list of slice indices annotated as empty; for several, one list per image.
    `options` are FinetuneConfig fields: encoder, in_channels, loss ("dice-ce"|"jaccard"), batch_size, image_size,
    lr, encoder_lr_scale, freeze_encoder_steps, transfer_decoder, augment, normalization, devices, precision, seed,
    semi_supervised (default True: unannotated slices train through in-run pseudo-labels), unlabelled (extra volumes),
    semi_options (SemiSupervisedConfig overrides)."""
    from .data.sparse_labels import parse_class_names
    from .train.finetune import FinetuneConfig, run_finetuning

    imgs = [images] if isinstance(images, (str, os.PathLike, Volume)) else list(images)
    labs = [labels] if isinstance(labels, (str, os.PathLike, Volume, np.ndarray)) else list(labels)
    imgs = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in imgs]
    labs = [os.fspath(i) if isinstance(i, os.PathLike) else i for i in labs]
    if empty_slices is not None and len(empty_slices) and not isinstance(empty_slices[0], (list, tuple, np.ndarray)):
        empty_slices = [list(empty_slices)]
    try:
        config = FinetuneConfig(images=imgs, labels=labs, out=os.fspath(out), encoder_weights=_opt_path(encoder_weights),
                                init_model=_opt_path(init_model), classes=parse_class_names(classes),
                                empty_slices=[list(e) for e in empty_slices] if empty_slices else None, steps=steps, epochs=epochs, **options)
    except TypeError as exc:
        raise NapariSSLError(f"finetune: {exc}") from None
    return run_finetuning(config, events=events, stop_event=stop_event)


def predict(model: PathLike, image: ImageLike, *, tta: bool = False, mc_dropout: int = 0, batch_size: int = 64,
            device: Optional[str] = None, labels: Optional[LabelsLike] = None, empty_slices: Sequence[int] = (),
            keep_connected: Optional[bool] = None, fill_between: Optional[bool] = None, propagate: Optional[bool] = None,
            progress=None) -> Prediction:
    """Segment every slice; returns labels, probabilities, voxel and slice uncertainty on the image's canonical grid.

    With the user's `labels` (and `empty_slices`), the annotated slices come back exactly as drawn (annotated-empty
    slices empty); `keep_connected` also drops predicted foreground that does not touch the user's labels in 3-D;
    `fill_between`: between annotated slices, each class is the interpolation of the user's slices (beyond them, the model's);
    `propagate`: beyond the outermost annotated slices, the model is weighted by the user's slices carried outward along the
    image (active/propagate.py). All default (None) to what the model's semi-supervised recipe recorded in model.json (off for
    supervised models).
    ``progress(slices_done, slices_total)`` is called as batches finish."""
    from .active.predict import predict_volume

    vol = image if isinstance(image, Volume) else load_volume(image)
    annotation = None
    if labels is not None:
        from .active.respect_annotation import annotation_from
        from .data.training_labels import load_labels

        annotation = annotation_from(load_labels(labels, vol), empty_slices)
        if keep_connected is None or fill_between is None or propagate is None:  # default: what the model's training recipe recommends
            from .active.predict import load_segmentation_model_meta

            semi = (load_segmentation_model_meta(os.fspath(model)).get("training") or {}).get("semi_supervised") or {}
            keep_connected = bool(semi.get("connected_to_annotation", False)) if keep_connected is None else keep_connected
            fill_between = bool(semi.get("fill_between_prediction", False)) if fill_between is None else fill_between
            propagate = bool(semi.get("propagate_prediction", False)) if propagate is None else propagate
    return predict_volume(os.fspath(model), vol, tta=tta, mc_dropout=mc_dropout, batch_size=batch_size, device=device,
                          annotation=annotation, keep_connected=bool(keep_connected), fill_between=bool(fill_between),
                          propagate=bool(propagate), progress=progress)


def save_prediction(prediction: Prediction, image: ImageLike, out: PathLike, *, probabilities: Optional[PathLike] = None,
                    uncertainty: Optional[PathLike] = None) -> None:
    """Write the label map (and optional probability / uncertainty maps) in the image file's own geometry."""
    from .active.predict import write_prediction

    vol = image if isinstance(image, Volume) else load_volume(image)
    write_prediction(prediction, vol, os.fspath(out), _opt_path(probabilities), _opt_path(uncertainty))


def annotated_slices(labels: LabelsLike, image: Optional[ImageLike] = None, empty_slices: Sequence[int] = ()) -> np.ndarray:
    """Boolean mask over slices: annotated (any label, or listed as annotated-empty)."""
    from .data import sparse_labels

    return sparse_labels.annotated_slices(_label_map(labels, image), empty_slices)


def fill_between(labels: LabelsLike, image: Optional[ImageLike] = None, empty_slices: Sequence[int] = ()) -> np.ndarray:
    """Slicer's "Fill between slices" (ITK morphological contour interpolation) on the annotated slices:
    an instant completion, no training. Returns a label map on the image's grid (the labels' own grid when
    no image is given); annotated slices come back as drawn, annotated-empty ones empty."""
    from .active.fill_between import fill_between_slices
    from .data import sparse_labels

    arr = _label_map(labels, image)
    return fill_between_slices(arr, sparse_labels.annotated_slices(arr, empty_slices))


def _label_map(labels: LabelsLike, image: Optional[ImageLike]) -> np.ndarray:
    """A label array: as given, on `image`'s grid (checked / placed there), or on its own grid without an image."""
    from .data import sparse_labels
    from .data.training_labels import load_labels

    if isinstance(labels, np.ndarray):
        arr = sparse_labels.as_label_array(labels)
    else:
        vol = image if isinstance(image, Volume) else (load_volume(image) if image is not None else None)
        arr = load_labels(labels, vol) if vol is not None else sparse_labels.as_label_array(load_volume(labels).array)
    return arr


def _annotated_for(model_classes: int, vol: Volume, labels: Optional[LabelsLike], empty_slices: Sequence[int]) -> np.ndarray:
    from .data import sparse_labels

    if labels is None:
        return sparse_labels.annotated_slices(np.zeros((vol.shape[0], 1), np.uint8), empty_slices)
    from .data.training_labels import load_labels

    arr = load_labels(labels, vol)
    top = int(arr.max()) if arr.size else 0
    if top > model_classes:
        raise NapariSSLError(f"label index {top} has no class in the model (it predicts classes 1..{model_classes}); "
                             "give the label map this model was trained for")
    return sparse_labels.annotated_slices(arr, empty_slices)


def _model_classes(model: PathLike) -> int:
    from .active.predict import load_segmentation_model_meta

    return int(load_segmentation_model_meta(os.fspath(model))["num_classes"]) - 1


def suggest(model: PathLike, image: ImageLike, labels: Optional[LabelsLike] = None, *, n: int = 5, min_distance: Optional[int] = None,
            empty_slices: Sequence[int] = (), tta: bool = True, mc_dropout: int = 0, prediction: Optional[Prediction] = None,
            device: Optional[str] = None, score: Optional[str] = None) -> list[dict]:
    """The unannotated slices of this study to annotate next, best first: [{"rank", "slice", "score", "reason", ...}].

    `score`: how a slice is ranked (active.next_slice): "expected-error" (default: where the completed result, the
    model with the user's slices and the interpolation between them, is most likely wrong under the model's own
    probabilities, summed over +-2 slices), "gap" (the middle of the largest unannotated stretch of the predicted
    structure), or the earlier uncertainty scores "foreground-entropy" / "entropy" (their answer also holds
    "uncertainty" and "min_distance"). Pass `prediction` to reuse one already computed (with the labels folded in,
    as :func:`predict` with `labels` gives it)."""
    from .active.next_slice import suggest_in_study

    if int(n) < 1:
        raise NapariSSLError("-n must be at least 1")
    vol = image if isinstance(image, Volume) else load_volume(image)
    ann = _annotated_for(_model_classes(model), vol, labels, empty_slices)
    lab = None
    if labels is not None:
        from .train.finetune import load_labels

        lab = load_labels(labels, vol)
    pred = prediction or predict(model, vol, tta=tta, mc_dropout=mc_dropout, device=device, labels=lab, empty_slices=empty_slices)
    if pred.slice_uncertainty.shape[0] != vol.shape[0]:
        raise NapariSSLError(f"the prediction has {pred.slice_uncertainty.shape[0]} slices but the image has {vol.shape[0]}")
    return suggest_in_study(pred, ann, None if lab is None else np.asarray(lab), n=n, score=score, min_distance=min_distance)


def suggest_pool(model: PathLike, images: Sequence[ImageLike], labels: Optional[Sequence[Optional[LabelsLike]]] = None, *, n: int = 5,
                 min_distance: Optional[int] = None, max_per_volume: Optional[int] = None, depth_spacing: Optional[float] = None,
                 empty_slices: Optional[Sequence[Sequence[int]]] = None,
                 tta: bool = True, mc_dropout: int = 0, predictions: Optional[Sequence[Prediction]] = None,
                 batch_size: int = 64, device: Optional[str] = None, score: Optional[str] = None,
                 encoder: Optional[PathLike] = None) -> list[dict]:
    """Rank the unannotated slices of several scans together (the union of their slices), best first; ``volume``
    indexes `images`.

    Default (`score` None or "typiclust", benchmarks/bench_next_slice.py --mode cold): TypiClust in an encoder's slice
    embedding (active.cold_start: the most typical slice of each group of look-alike slices not yet covered by an
    annotation, one per scan while possible): [{"rank", "volume", "slice", "score", "reason", ...}]. The embedding comes
    from `encoder` (a pretrained encoder folder: what the benchmark measured) or else from `model`, which may itself be
    a pretrained encoder (the cold start, before any segmentation model exists) or a fine-tuned model (its encoder).

    `score` "foreground-entropy" / "entropy": the earlier ranking by the model's uncertainty,
    [{"rank", "volume", "slice", "uncertainty", "min_distance"}]:

    `labels` / `empty_slices`: one entry (or None) per image. A batch spreads over scans first
    (at most ceil(n / scans) picks per scan while that is possible), and picks in one scan keep
    `min_distance` slices apart from each other and from its annotated slices; picks in different
    scans keep `depth_spacing` apart in relative depth (slice / depth; default 0.5 / n, 0 = off).
    `score`: "foreground-entropy" (entropy x P(structure), slice mean) or "entropy" (slice mean
    predictive entropy); see active.predict.slice_scores."""
    from .active.suggest import rank_pool

    if int(n) < 1:
        raise NapariSSLError("-n must be at least 1")
    cold = _is_pretrained_encoder(model)
    if cold and score not in (None, "typiclust"):
        raise NapariSSLError(f"a pretrained encoder ranks by typicality (cold start); score {score!r} needs a fine-tuned model")
    if score in (None, "typiclust"):
        from .active.cold_start import cold_start_pool

        vols, anns = _pool_inputs(images, labels, empty_slices, 10 ** 6 if cold else _model_classes(model))
        return cold_start_pool(os.fspath(encoder if encoder is not None else model), vols, n=n, annotated=anns)
    vols, anns = _pool_inputs(images, labels, empty_slices, _model_classes(model))
    if predictions is None:
        predictions = _pool_predictions(model, vols, tta=tta, mc_dropout=mc_dropout, batch_size=batch_size, device=device)
    if len(predictions) != len(vols):
        raise NapariSSLError(f"{len(vols)} image(s) but {len(predictions)} prediction(s)")
    from .active.predict import slice_scores

    return rank_pool([slice_scores(p, score) for p in predictions], anns, n=n, min_distance=min_distance, max_per_volume=max_per_volume,
                     depth_spacing=depth_spacing)


def _pool_inputs(images: Sequence[ImageLike], labels: Optional[Sequence[Optional[LabelsLike]]],
                 empty_slices: Optional[Sequence[Sequence[int]]], n_classes: int) -> tuple[list[Volume], list[np.ndarray]]:
    """The scans of a pool as Volumes, and each one's annotated-slice mask (labels / empty slices: one per scan or None)."""
    vols = [i if isinstance(i, Volume) else load_volume(i) for i in images]
    labs = list(labels) if labels is not None else [None] * len(vols)
    empt = list(empty_slices) if empty_slices is not None else [()] * len(vols)
    if len(labs) != len(vols) or len(empt) != len(vols):
        raise NapariSSLError(f"{len(vols)} image(s) but {len(labs)} label map(s) / {len(empt)} empty-slice list(s); "
                             "give one per image (None for none)")
    return vols, [_annotated_for(n_classes, v, lab, e or ()) for v, lab, e in zip(vols, labs, empt)]


def _pool_predictions(model: PathLike, vols: Sequence[Volume], *, tta: bool, mc_dropout: int, batch_size: int,
                      device: Optional[str]) -> list:
    """One prediction per scan with the model loaded once."""
    import torch

    from .active.predict import load_segmentation_model, predict_volume

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_segmentation_model(os.fspath(model), dev)
    return [predict_volume(os.fspath(model), v, tta=tta, mc_dropout=mc_dropout, batch_size=batch_size, device=dev, loaded=loaded)
            for v in vols]


def _is_pretrained_encoder(model: PathLike) -> bool:
    """A pretraining result (pretrained encoder, no segmentation head) rather than a fine-tuned model."""
    path = os.path.join(os.fspath(model), "model.json")
    if not os.path.isfile(path):
        return False
    import json

    try:
        with open(path) as f:
            return json.load(f).get("kind") == "pretrained-encoder"
    except (OSError, ValueError):
        return False


def _opt_path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def __getattr__(name: str):
    if name == "Prediction":  # api.Prediction without importing torch at `import napari_ssl.api`
        from .active.predict import Prediction

        return Prediction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
