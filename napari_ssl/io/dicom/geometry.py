"""Frames -> stacks: split by image size, orientation and repeated positions; order along the slice
normal; slice step from the positions; affine in the Volume convention.

ImageOrientationPatient holds two unit vectors: the first is the direction of increasing
column index (along a row, array x), the second of increasing row index (array y).
PixelSpacing is [row spacing (y), column spacing (x)]. The slice normal is their cross
product; slices are ordered by their ImagePositionPatient projected on it, ascending.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# Tolerances (rounding noise vs real differences): documented in napari_ssl.io.geometry_tolerance
from ..geometry_tolerance import DRIFT_TOL_MM, DRIFT_TOL_REL, GAP_FACTOR, ORIENTATION_TOL, SAME_POSITION_MM, UNEVEN_REL, consensus_orientation
from .frames import Frame

SPLIT_KEYS = ("stack", "echo", "temporal", "diffusion_b", "trigger", "acquisition")
DEFAULT_IOP = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


@dataclass
class Stack:
    frames: list[Frame]                  # in array order (ascending along the normal)
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.frames), self.frames[0].rows, self.frames[0].cols)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _cosines(iop: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = DEFAULT_IOP if iop is None else iop
    row_dir = _unit(np.asarray(iop[:3], float))   # increasing column index (x)
    col_dir = _unit(np.asarray(iop[3:], float))   # increasing row index (y)
    return row_dir, col_dir, _unit(np.cross(row_dir, col_dir))


def _split_by_size(frames: list[Frame]) -> list[list[Frame]]:
    groups: dict[tuple, list[Frame]] = defaultdict(list)
    for f in frames:
        groups[(f.rows, f.cols, round(f.pixel_spacing[0], 4), round(f.pixel_spacing[1], 4))].append(f)
    return list(groups.values())


def _split_by_orientation(frames: list[Frame]) -> list[list[Frame]]:
    reps: list[np.ndarray] = []
    groups: list[list[Frame]] = []
    for f in frames:
        iop = DEFAULT_IOP if f.orientation is None else f.orientation
        for i, r in enumerate(reps):
            if np.max(np.abs(r - iop)) <= ORIENTATION_TOL:
                groups[i].append(f)
                break
        else:
            reps.append(iop)
            groups.append([f])
    return groups


def _has_duplicates(frames: list[Frame], normal: np.ndarray) -> bool:
    if any(f.position is None for f in frames) or len(frames) < 2:
        return False
    d = np.sort([float(f.position @ normal) for f in frames])
    return bool(np.any(np.diff(d) < SAME_POSITION_MM))


def _split_repeats(frames: list[Frame], normal: np.ndarray) -> tuple[list[list[Frame]], Optional[str]]:
    """Frames sharing positions (echoes, time points, stacks) -> one group per repetition."""
    if not _has_duplicates(frames, normal):
        return [frames], None
    for key in SPLIT_KEYS:
        groups: dict[str, list[Frame]] = defaultdict(list)
        for f in frames:
            groups[f.split_keys.get(key, "")].append(f)
        if len(groups) > 1 and not any(_has_duplicates(g, normal) for g in groups.values()):
            parts = [groups[k] for k in sorted(groups, key=_natural)]
            return parts, f"several frames at each slice position (different {key}); split into {len(parts)} volumes"
    by_pos: dict[int, list[Frame]] = defaultdict(list)
    for f in sorted(frames, key=lambda f: f.order_hint):
        by_pos[int(round(float(f.position @ normal) / SAME_POSITION_MM))].append(f)
    n = max(len(v) for v in by_pos.values())
    parts = [[v[k] for v in by_pos.values() if len(v) > k] for k in range(n)]
    return parts, f"several frames at the same slice position; split into {n} volumes in instance order"


def _natural(s: str):
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def split_stacks(frames: list[Frame]) -> tuple[list[list[Frame]], list[str]]:
    """Frames of one series -> groups that each form a regular stack, and why it was split."""
    notes: list[str] = []
    by_size = _split_by_size(frames)
    if len(by_size) > 1:
        notes.append(f"series holds {len(by_size)} image sizes/pixel spacings; split into separate volumes")
    out: list[list[Frame]] = []
    for group in by_size:
        by_ori = _split_by_orientation(group)
        if len(by_ori) > 1:
            notes.append(f"series mixes {len(by_ori)} slice orientations; split into separate stacks")
        for g in by_ori:
            normal = _cosines(g[0].orientation)[2]
            parts, note = _split_repeats(g, normal)
            if note:
                notes.append(note)
            out.extend(parts)
    return out, notes


def _fallback_step(frames: list[Frame]) -> tuple[float, str]:
    f = frames[0]
    if f.spacing_between and f.spacing_between > 0:
        return float(f.spacing_between), "SpacingBetweenSlices"
    if f.thickness and f.thickness > 0:
        return float(f.thickness), "SliceThickness"
    return 1.0, ""


def build_stack(frames: list[Frame]) -> Stack:
    """Order the frames along the slice normal and derive the affine; warn about anything irregular."""
    warnings: list[str] = []
    # Files of one series may spell the orientation with different last digits (within
    # ORIENTATION_TOL, or they would be separate stacks): the one most files carry is used.
    rep, _ = consensus_orientation([f.orientation for f in frames])
    row_dir, col_dir, normal = _cosines(frames[rep].orientation)
    if frames[rep].orientation is None:
        warnings.append("no ImageOrientationPatient; axial orientation assumed")
    if frames[0].spacing_missing:
        warnings.append("no PixelSpacing; 1 mm pixels assumed")
    n = len(frames)
    if any(f.position is None for f in frames):
        frames = sorted(frames, key=lambda f: f.order_hint)
        step, source = _fallback_step(frames)
        origin = next((f.position for f in frames if f.position is not None), np.zeros(3))
        if n > 1:
            warnings.append(f"no ImagePositionPatient on every slice: slices stacked in instance order, "
                            f"{step:g} mm apart ({source or 'assumed'})")
        else:
            warnings.append(f"one slice without position; slice step {step:g} mm ({source or 'assumed'})")
    else:
        proj = np.array([float(f.position @ normal) for f in frames])
        order = np.argsort(proj, kind="stable")
        frames = [frames[i] for i in order]
        proj = proj[order]
        origin = frames[0].position
        if n == 1:
            step, source = _fallback_step(frames)
            warnings.append(f"single slice: slice step {step:g} mm taken from {source}" if source
                            else "single slice: slice step of 1 mm assumed")
        else:
            step = _step_from_positions(frames, proj, normal, warnings)
    ps = frames[0].pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = col_dir * ps[0]
    affine[:3, 2] = row_dir * ps[1]
    affine[:3, 3] = origin
    return Stack(frames=frames, affine=affine, warnings=warnings)


def _step_from_positions(frames: list[Frame], proj: np.ndarray, normal: np.ndarray, warnings: list[str]) -> float:
    """The slice step of frames ordered along the normal (`proj`: their positions on it), with a warning for
    missing slices, uneven spacing or in-plane drift (gantry tilt), which the affine cannot show."""
    n = len(frames)
    origin = frames[0].position
    diffs = np.diff(proj)
    typical = float(np.median(diffs))
    gaps = np.nonzero(diffs > GAP_FACTOR * typical)[0]
    if len(gaps):
        missing = int(sum(round(diffs[i] / typical) - 1 for i in gaps))
        where = ", ".join(f"{proj[i]:.2f}..{proj[i + 1]:.2f} mm" for i in gaps[:3])
        warnings.append(f"missing slice(s): about {missing} slice(s) absent in the positions ({where}); "
                        f"expected a step of {typical:.3g} mm")
        step = typical
    else:
        step = float(proj[-1] - proj[0]) / (n - 1)
        dev = float(np.max(np.abs(diffs - step)))
        if dev > UNEVEN_REL * step + 1e-4:
            warnings.append(f"uneven slice spacing: steps from {diffs.min():.4g} to {diffs.max():.4g} mm; "
                            f"the mean {step:.4g} mm is used")
    expected = origin[None, :] + (proj - proj[0])[:, None] * normal[None, :]
    pos = np.array([f.position for f in frames])
    drift = float(np.max(np.linalg.norm(pos - expected, axis=1)))
    if drift > max(DRIFT_TOL_REL * abs(step), DRIFT_TOL_MM):
        warnings.append(f"slice positions drift {drift:.3g} mm off the slice normal (gantry tilt?); "
                        f"the volume is shown unsheared")
    return step
