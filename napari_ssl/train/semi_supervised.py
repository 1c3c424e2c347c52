"""Semi-supervised fine-tuning: the unannotated slices of the annotated study (and optional unlabelled
volumes) take part in training through pseudo-labels that live only inside one training run.

The recipe (``SemiSupervisedConfig``), chosen on validation volumes of the hippocampus pool
(benchmarks/bench_study_completion.py, benchmarks/RESULTS.md):

1. **Fill between slices as soft pseudo-labels** (``fill_between``, off by default): between the outermost
   annotated slices of a volume, the ITK morphological contour interpolation of the user's slices as a
   lower-weighted target. On 12 validation volumes (k=2/3/5, benchmarks/RESULTS.md) the recipe without it
   scored higher (+0.02/+0.08/+0.03 Dice), and it put the interpolation worker's start (ITK's import, 10-20 s
   on a loaded 2-core CPU) before the first training step; the prediction still fills between slices (3.).
2. **Self-training grown from the user's slices** (Sli2Vol-style; ``rounds``: by default only with unlabelled
   volumes, since with side planes it lowered Dice on validation volumes): after each phase the model predicts the
   unannotated slices nearest to the annotated ones (a bounded number per volume, so a 300-slice CT costs
   no more than a 35-slice crop); confident pixels (max probability >= ``confidence``) become targets,
   the others are ignored; foreground that does not touch the user's labels in 3-D is marked background
   (anatomy: the structure the user drew is one connected thing). Unlabelled volumes get confident
   pseudo-labels of a bounded number of sampled slices. A volume's model pseudo-labels are used only once the
   model reproduces the user's own slices (foreground Dice >= ``min_fit_dice``): an under-trained model's
   all-background guesses would otherwise teach it to miss the structure; an empty guess between annotated
   slices that show the structure is dropped for the same reason.
3. **Side planes** (``planes``, data/planes.py): with two or more annotated slices holding the structure, the
   coronal and sagittal planes of the study train too, each on the rows where it crosses an annotated slice
   (every other row ignored); the model then predicts the study from the three sides and fuses them (geometric mean). On
   validation volumes this beat both the recipe without it and fill between inside the annotated range
   (benchmarks/RESULTS.md, "Side planes"). One study drawn on one slice (``carried_planes``): its side planes train
   on that slice carried a few slices each way along the image's motion (validation k=1: .539 -> .580, "Session 21").
4. **Labels scattered over studies** (``propagate_pseudo``; by default only where no side planes train, i.e. no study
   holds half of the annotated slices, and at most 10 drawn slices hold the structure): each drawn slice carried a few
   slices each way along its own study's motion (active/propagate.py) becomes pseudo-labels at ``fill_weight``
   (benchmarks/RESULTS.md, "Session 22").
5. **Prediction** (applied by the prediction path with the user's labels): foreground not touching the user's
   labels in 3-D is dropped and the annotated slices come back exactly as drawn; without side planes
   (``fill_between_prediction``: None = only then), each class between its outermost annotated slices is the
   interpolation of the user's slices and the model's beyond them.

A pseudo-label is never a user's label: it is kept in memory for the run, never written, never exported,
and unknown (ignored) wherever the model is not confident -- an unannotated slice is never background by
default. Each batch keeps ``labelled_fraction`` of the user's own slices at full weight.
"""
from __future__ import annotations

import copy
import logging
import numbers
import typing
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.labelled_slices import (
    AugmentConfig,
    LabelledSliceDataset,
    LabelledVolume,
    MixedSlices,
    WeightedSamples,
    fit_to_size,
    slice_stack,
)
from .consistency import WEAK, UnlabelledSlices, WithUnlabelled
from .pseudo_labels import (  # noqa: F401 (nearest_unannotated, predict_slices: part of this module's API)
    carried_pseudo,
    carried_window,
    fill_between_pseudo,
    model_pseudo,
    nearest_unannotated,
    predict_slices,
    unlabelled_pseudo,
    user_slice_fit,
)
from .semi_supervised_loss import SemiSupervisedModule

log = logging.getLogger(__name__)



@dataclass
class SemiSupervisedConfig:
    enabled: bool = True
    fill_between: bool = False  # interpolated masks between annotated slices as pseudo-labels (off: chosen on validation volumes)
    fill_weight: float = 0.5
    # self-training rounds (each adds a training phase after a pseudo-labelling pass); None: 1 with unlabelled volumes
    # (their pseudo-labels need a phase), else 0 (on validation volumes the side planes alone scored higher)
    rounds: Optional[int] = None
    confidence: float = 0.9
    pseudo_weight: float = 0.5
    max_pseudo_slices: int = 48  # per volume and round: the unannotated slices nearest to the annotated ones
    max_unlabelled_slices: int = 32  # per unlabelled volume and round, sampled evenly
    connected_to_annotation: bool = True  # pseudo-label foreground only in 3-D components touching the user's labels
    labelled_fraction: float = 0.5  # share of each batch from the user's slices
    min_fit_dice: float = 0.5  # no model pseudo-labels for a volume until the model's foreground Dice on its annotated slices reaches this
    planes: bool = True  # also train on the side planes' annotated rows and predict from three sides (data/planes.py)
    axial_fraction: float = 0.34  # with planes: share of the user's samples that are annotated slices (the rest side planes)
    # side planes only when the volumes annotated on two or more slices hold at least this share of the annotated slices
    # (one study: all of them; labels scattered one slice per study over many studies: none)
    min_side_share: float = 0.5
    # prediction: between annotated slices, each class from fill between slices; None: on unless side planes were used
    fill_between_prediction: Optional[bool] = None
    # prediction: beyond the outermost annotated slices, the model weighted by the user's slices carried outward along the
    # image's motion (active/propagate.py; chosen on validation volumes, session 19)
    propagate_prediction: bool = True
    # training: this many slices beyond the outermost annotated ones each side, labelled by carrying the user's slices
    # outward (active/propagate.py), as pseudo-labels at fill_weight (0 = off). None: SCATTERED_CARRY where no side planes
    # train and at most 10 drawn slices hold the structure (labels scattered over studies; validation k=2/5/10
    # +0.12/+0.14/+0.10 at the default budget, session 22), else 0 (within one study, where the side planes train, it
    # changed nothing on validation, session 20; with more drawn slices it gained nothing, see carry_radius)
    propagate_pseudo: Optional[int] = None
    # one study drawn on one slice: its side planes from that slice carried this many slices each way (active/propagate.py;
    # 0 = off; chosen on validation volumes, session 21). Other cases keep their side planes from the user's slices only.
    carried_planes: int = 3
    carried_planes_across: bool = False  # also for every study of several drawn on one slice each (probe, off)
    # the carried pseudo-labels (propagate_pseudo) voted slice by slice by image patches (active/patch_vote.py), not only
    # read through the flow: chosen on validation volumes, k=2/5/10 .348/.615/.660 vs .307/.604/.639; level on test
    # (benchmarks/RESULTS.md, "Session 24")
    carry_vote: bool = True
    # weak/strong consistency on unannotated slices (train/consistency.py): weight (0 = off) and teacher confidence
    consistency: float = 0.0
    consistency_threshold: float = 0.95

    def as_meta(self) -> dict:
        return asdict(self)


def semi_supervised_config(options: Optional[dict] = None) -> SemiSupervisedConfig:
    from ..errors import NapariSSLError

    try:
        cfg = SemiSupervisedConfig(**(options or {}))
    except TypeError as exc:
        raise NapariSSLError(f"semi-supervised options: {exc}") from None
    hints = typing.get_type_hints(SemiSupervisedConfig)
    for name in (options or {}):
        kinds = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is typing.Union else (hints[name],)
        if not any(_is(getattr(cfg, name), k) for k in kinds):
            want = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise NapariSSLError(f"semi-supervised option {name}: {want} expected, got {getattr(cfg, name)!r}")
    return cfg


def _is(value, kind) -> bool:
    """Whether `value` fits a field of type `kind` (numpy scalars too; a whole number fits a float). A bool is an int
    in Python, but a switch where a number is expected (or the reverse) is a typo, not a setting."""
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


def load_unlabelled(items: Sequence, spec_for: Callable[[str], dict]) -> list[np.ndarray]:
    """Normalised (z, y, x) float arrays of unlabelled volumes (paths or Volumes; arrays are taken as normalised)."""
    from ..data.normalize import normalize
    from ..errors import NapariSSLError
    from ..io import load_image

    out = []
    for item in items:
        if isinstance(item, np.ndarray):
            out.append(np.asarray(item, np.float32))
            continue
        vol = load_image(item)
        if vol.array.ndim != 3:
            raise NapariSSLError(f"--unlabelled: a 3-D volume is needed, got shape {list(vol.array.shape)}")
        out.append(normalize(vol.array, spec_for(vol.modality)))
    return out


# ----------------------------------------------------------------------------- data

class PseudoSlices(WeightedSamples):
    """Pseudo-labelled slices as (image (C,S,S), target (S,S) with IGNORE, weight)."""

    def __init__(self, items: list[tuple[np.ndarray, int, np.ndarray, float]], image_size: int, in_channels: int, augment: Optional[AugmentConfig]):
        imgs, tgts, weights = [], [], []
        for image, z, target, weight in items:
            x = torch.from_numpy(np.ascontiguousarray(slice_stack(image, z, in_channels), dtype=np.float32))[None]
            t = torch.from_numpy(np.ascontiguousarray(target).astype(np.float32))[None, None]
            imgs.append(fit_to_size(x, image_size)[0])
            tgts.append(fit_to_size(t, image_size, mode="nearest")[0, 0].round().long())
            weights.append(float(weight))
        super().__init__(torch.stack(imgs) if imgs else torch.zeros(0, in_channels, image_size, image_size),
                         torch.stack(tgts) if tgts else torch.zeros(0, image_size, image_size, dtype=torch.long), weights, augment)


# ----------------------------------------------------------------------------- training

SCATTERED_CARRY = 6  # slices each way the user's slices are carried as pseudo-labels when no side planes train
SCATTERED_CARRY_MAX_SLICES = 10  # ... and no more drawn slices than this hold the structure


def carry_radius(cfg: SemiSupervisedConfig, planes: bool, drawn: int) -> int:
    """Slices each way the user's slices are carried as training pseudo-labels: ``cfg.propagate_pseudo``, or by default
    SCATTERED_CARRY when no side planes train and at most SCATTERED_CARRY_MAX_SLICES drawn slices (`drawn`) hold the
    structure. Why: labels scattered one slice per study over several studies give the model a handful of slices; each
    carried a few slices along its own study's motion adds nearby, still reliable shapes. On validation volumes that
    gained up to 10 drawn slices and nothing beyond (20, 50), where at a shorter budget the carried half of each batch
    cost Dice (benchmarks/RESULTS.md, "Session 20" and "Session 22"). One study drawn on two or more slices has its side
    planes instead."""
    if cfg.propagate_pseudo is not None:
        return max(0, int(cfg.propagate_pseudo))
    return 0 if planes or drawn > SCATTERED_CARRY_MAX_SLICES else SCATTERED_CARRY


def _fill_items(volumes: list[LabelledVolume], cfg: SemiSupervisedConfig, image_size: int, carry: int = 0) -> list[tuple]:
    """(image, slice, target, weight) of the fill-between pseudo-labels and of the user's slices carried `carry` slices
    outward (0: none) in every volume (phase 0 on)."""
    items: list = []
    if cfg.fill_between and cfg.fill_weight > 0:
        for vol in volumes:
            for z, t in fill_between_pseudo(vol, cfg.max_pseudo_slices, image_size).items():
                items.append((vol.image, z, t, cfg.fill_weight))
    if carry > 0 and cfg.fill_weight > 0:
        for vol in volumes:
            items += [(vol.image, z, t, cfg.fill_weight) for z, t in carried_pseudo(vol, carry, cfg.carry_vote)]
    return items


def _with_carried(volumes: list[LabelledVolume], radius: int, across: bool = False) -> list[LabelledVolume]:
    """Where one study is drawn on one slice (no side planes otherwise): the study with that slice carried `radius`
    slices each way added as annotated slices, for its side planes only (the axial samples stay the user's own slice).
    Why: the side planes show the structure along its length, which one axial slice cannot; on 16 validation volumes
    at k=1 the result rose from .539 to .580 Dice, better on 15 (benchmarks/RESULTS.md, "Session 21"). Across studies
    (many volumes of one slice each) only with `across` (off by default)."""
    if radius <= 0 or (len(volumes) != 1 and not across):
        return volumes
    out = []
    for vol in volumes:
        held = vol.drawn_indices
        if len(held) != 1:
            out.append(vol)
            continue
        z = int(held[0])
        carried, done = carried_window(vol, radius)
        held_carried = done & (carried > 0).reshape(len(done), -1).any(1)
        # outward, up to the first slice the structure is lost on: a carried empty slice is not a claim of background
        for side in (np.arange(z - 1, -1, -1), np.arange(z + 1, len(done))):
            held_carried[side] = np.logical_and.accumulate(held_carried[side])
        labels = np.where(held_carried[:, None, None], carried, vol.labels).astype(vol.labels.dtype)
        out.append(LabelledVolume(image=vol.image, labels=labels, annotated=vol.annotated | held_carried, spacing=vol.spacing,
                                  z_range=vol.z_range))
    return out


def _model_items(unet, volumes: list[LabelledVolume], fill_zs: list[set], unlabelled: Sequence[np.ndarray], image_size: int,
                 in_channels: int, cfg: SemiSupervisedConfig, rng: np.random.Generator) -> list[tuple]:
    """(image, slice, target, weight) of one pseudo-labelling pass with the current model: the annotated volumes'
    slices nearest to the annotated ones (not those fill between covers), then the unlabelled volumes once the
    model fits every annotated volume (the gate of ``model_pseudo``)."""
    items: list = []
    fits = True
    for vol, fz in zip(volumes, fill_zs):
        zs = [z for z in nearest_unannotated(vol.annotated, cfg.max_pseudo_slices + len(fz)) if z not in fz][:cfg.max_pseudo_slices]
        got = model_pseudo(unet, vol, zs, image_size, in_channels, cfg)
        fits = fits and got is not None
        for z, t in (got or {}).items():
            items.append((vol.image, z, t, cfg.pseudo_weight))
    for image in (unlabelled if fits else ()):
        for z, t in unlabelled_pseudo(unet, image, image_size, in_channels, cfg, rng):
            items.append((image, z, t, cfg.pseudo_weight))
    return items


def _phase_kw(train_kw: dict, emit: Callable[[dict], None], offset: int, steps: int) -> dict:
    """train_unet keywords for the phase that starts at step `offset`: one step count and one total across the
    phases in the events (one 'started'; a sink that acts at given steps sees the steps of the whole run)."""
    def phase_emit(e):
        e = dict(e)
        if "step" in e:
            e["step"] = int(e["step"]) + offset
        if "total_steps" in e:
            e["total_steps"] = int(steps)
        if e.get("type") == "started" and offset > 0:
            return
        emit(e)

    return dict(train_kw, emit=phase_emit)


def train_semi_supervised(unet: torch.nn.Module, volumes: list[LabelledVolume], *, image_size: int, in_channels: int, steps: int,
                          cfg: Optional[SemiSupervisedConfig] = None, unlabelled: Sequence[np.ndarray] = (), augment: bool = True,
                          emit: Callable[[dict], None] = lambda e: None, seed: int = 0, **train_kw) -> tuple[torch.nn.Module, dict]:
    """Fine-tune `unet` for `steps` steps in all, split evenly over 1 + cfg.rounds phases: phase 0 on the user's
    slices (+ fill-between pseudo-labels), each later phase after a pseudo-labelling pass with the current model.
    ``train_kw`` goes to :func:`napari_ssl.train.loop.train_unet` (lr, batch_size, loss, devices, ...);
    the events' steps count across the phases."""
    cfg = cfg or SemiSupervisedConfig()
    start = copy.deepcopy(unet.state_dict())
    unet, info = _train_phases(unet, volumes, image_size=image_size, in_channels=in_channels, steps=steps, cfg=cfg,
                               unlabelled=unlabelled, augment=augment, emit=emit, seed=seed, **train_kw)
    fit = _mean_fit(unet, volumes, image_size, in_channels)
    info["user_slice_fit"] = [fit]
    if fit < cfg.min_fit_dice and not info["stopped"]:
        # A rare collapse (4 of 180 test runs in benchmarks/RESULTS.md, "Fusing the three sides"): the model answers
        # background even on the slices the user drew. Train once more from the same start with another sample order,
        # and keep whichever reproduces the user's slices better.
        log.info("the model does not reproduce the annotated slices (foreground Dice %.2f): training again", fit)
        emit({"type": "status", "message": "The model missed the drawn structure; training once more...", "phase": "train"})
        first = (copy.deepcopy(unet.state_dict()), info)
        unet.load_state_dict(start)
        unet, info = _train_phases(unet, volumes, image_size=image_size, in_channels=in_channels, steps=steps, cfg=cfg,
                                   unlabelled=unlabelled, augment=augment, seed=seed + 1009,
                                   emit=lambda e: None if e.get("type") == "started" else emit(e), **train_kw)
        fit2 = _mean_fit(unet, volumes, image_size, in_channels)
        if fit2 < fit:
            unet.load_state_dict(first[0])
            info = first[1]
        info["user_slice_fit"] = [fit, fit2]
    return unet, info


def _consistency_slices(volumes: list[LabelledVolume], unlabelled: Sequence[np.ndarray], image_size: int, in_channels: int,
                        augment: bool) -> Optional[UnlabelledSlices]:
    """The unannotated slices the consistency term draws from: the annotated volumes' other slices (within the
    structure's z-range where one is known) and every slice of the unlabelled volumes; None when there are none."""
    sources = []
    for v in volumes:
        z0, z1 = v.z_range if v.z_range is not None else (0, v.image.shape[0])
        sources.append((v.image, [z for z in range(int(z0), int(z1)) if not v.annotated[z]]))
    sources += [(img, range(img.shape[0])) for img in unlabelled]
    ds = UnlabelledSlices(sources, image_size, in_channels, WEAK if augment else None)
    return ds if len(ds) else None


def _mean_fit(unet, volumes: list[LabelledVolume], image_size: int, in_channels: int) -> float:
    return float(np.mean([user_slice_fit(unet, v, image_size, in_channels) for v in volumes])) if volumes else 1.0


def _train_phases(unet: torch.nn.Module, volumes: list[LabelledVolume], *, image_size: int, in_channels: int, steps: int,
                  cfg: SemiSupervisedConfig, unlabelled: Sequence[np.ndarray], augment: bool, emit: Callable[[dict], None],
                  seed: int, **train_kw) -> tuple[torch.nn.Module, dict]:
    from ..data.planes import SidePlanes, side_plane_volumes
    from .loop import train_unet

    aug = AugmentConfig() if augment else None
    labelled = LabelledSliceDataset(volumes, image_size, in_channels, aug)
    side_volumes, axial_fraction = ([], 1.0)
    if cfg.planes:
        plane_source = _with_carried(volumes, int(cfg.carried_planes), cfg.carried_planes_across)
        side_volumes, axial_fraction = side_plane_volumes(plane_source, cfg.axial_fraction, cfg.min_side_share)
    planes = bool(side_volumes)
    # the user's labels from three sides: annotated slices with probability axial_fraction (cfg.axial_fraction for
    # one study), else the side planes of the volumes annotated on two or more slices
    user = MixedSlices(labelled, SidePlanes(side_volumes, image_size, in_channels, aug), axial_fraction) if planes else labelled
    rounds = (1 if len(unlabelled) else 0) if cfg.rounds is None else int(cfg.rounds)
    phases = 1 + max(0, rounds)
    bounds = np.linspace(0, steps, phases + 1).round().astype(int)
    carry = carry_radius(cfg, planes, sum(v.drawn_indices.size for v in volumes))
    fill_items = _fill_items(volumes, cfg, image_size, carry)
    fill_zs = [{z for (img, z, _, _) in fill_items if img is vol.image} for vol in volumes]
    rng = np.random.default_rng(seed)
    unl_set = _consistency_slices(volumes, unlabelled, image_size, in_channels, augment) if cfg.consistency > 0 else None
    # nothing beyond the user's slices (one slice per study across studies, no side planes, no rounds): plain fine-tuning,
    # the same sampler and loss, so the recipe cannot differ from it by sample order alone
    plain = not planes and not fill_items and rounds == 0 and unl_set is None
    factory = partial(SemiSupervisedModule, consistency=cfg.consistency, consistency_threshold=cfg.consistency_threshold)
    info: dict = {"phases": [], "pseudo_slices": []}
    model_items: list = []
    total_steps = 0
    for p in range(phases):
        n = int(bounds[p + 1] - bounds[p])
        if p > 0:
            model_items = _model_items(unet, volumes, fill_zs, unlabelled, image_size, in_channels, cfg, rng)
        items = fill_items + model_items
        info["pseudo_slices"].append(len(items))
        if n <= 0:
            continue
        if plain:
            unet, ph = train_unet(unet, labelled, steps=n, seed=seed + p, **_phase_kw(train_kw, emit, total_steps, steps))
        else:
            ds = MixedSlices(user, PseudoSlices(items, image_size, in_channels, aug), cfg.labelled_fraction)
            ds = WithUnlabelled(ds, unl_set) if unl_set is not None else ds
            unet, ph = train_unet(unet, ds, steps=n, seed=seed + p, module_factory=factory, **_phase_kw(train_kw, emit, total_steps, steps))
        total_steps += ph["steps"]
        info["phases"].append(ph)
        if ph.get("stopped"):
            break
    last = info["phases"][-1] if info["phases"] else {"final_loss": float("nan"), "stopped": False}
    fill_pred = (not planes) if cfg.fill_between_prediction is None else bool(cfg.fill_between_prediction)
    return unet, {"steps": total_steps, "final_loss": last["final_loss"], "stopped": bool(last.get("stopped")),
                  "pseudo_slices": info["pseudo_slices"], "labelled": labelled, "planes": planes, "fill_between_prediction": fill_pred,
                  "rounds": rounds, "carried_pseudo": carry}
