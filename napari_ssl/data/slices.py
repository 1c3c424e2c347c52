"""Batches of 2-D / 2.5D slices cut from normalised volumes, for pretraining.

The dataset is indexed by *lists* of slice indices (one list = one batch, see
:class:`ShardedBatchSampler`), so a whole batch is cut in one call with numpy slicing
and no per-sample collate. Every item is a random S x S crop of one axial slice (the C
adjacent slices for 2.5D, clamped at the ends of the volume); slices smaller than S are
zero-padded once when the dataset is built.

Keys (see napari_ssl.pretext.base): "image", "partner" (when asked; ``partner="nearby"``: a
nearby slice of the same volume or, when the study has other series, the slice of another series
at the nearest physical position; ``partner="same-depth"``: the slice at the same relative depth
of another volume), "context"/"context_dz" (when a method asks), "volume_index", "slice_index".
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import NapariSSLError
from .cache import PreparedVolume

# slices whose normalised intensities vary less than this are blank (air, padding) and skipped
BLANK_STD = 1e-3


class SliceDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        volumes: Sequence[PreparedVolume],
        image_size: int,
        in_channels: int = 1,
        context: tuple[int, int] | None = None,
        partner: bool | str = False,
        partner_range: int = 3,
        min_in_plane: int | None = None,
        seed: int = 0,
    ):
        if in_channels not in (1, 3):
            raise NapariSSLError(f"--in-channels must be 1 or 3 (3 adjacent slices), not {in_channels}")
        self.size = int(image_size)
        self.channels = int(in_channels)
        self.context = context
        if partner not in (False, None, True, "nearby", "same-depth"):
            raise ValueError(f"partner must be 'nearby' or 'same-depth', not {partner!r}")
        self.partner_kind = "nearby" if partner is True else (partner or None)
        self.partner_range = max(1, int(partner_range))
        self.seed = int(seed)
        self.epoch = 0
        dist, margin = context if context else (0, 0)
        self.margin = int(margin)
        self.distance = int(dist)
        need_plane = self.size // 2 if min_in_plane is None else int(min_in_plane)
        self._add_volumes(volumes, need_plane, self.distance + 1)
        self.depths = np.asarray([v.shape[0] for v in self.volumes])
        # partner candidates from other series of the same study
        by_group: dict[str, list[int]] = {}
        for j, g in enumerate(self.groups):
            by_group.setdefault(g, []).append(j)
        self.siblings = [[k for k in by_group[g] if k != j] for j, g in enumerate(self.groups)]
        self.nonblank: list[np.ndarray] = []  # same-depth partners: the non-blank slices of each volume
        if self.partner_kind == "same-depth":
            if len(self.volumes) < 2:
                raise NapariSSLError("--pairs position needs at least 2 volumes (positives come from different volumes)")
            self.nonblank = [self.index[self.index[:, 0] == j, 1] for j in range(len(self.volumes))]

    # --- building ---------------------------------------------------------------------------
    def _add_volumes(self, volumes: Sequence[PreparedVolume], need_plane: int, need_depth: int) -> None:
        """Keep the volumes big enough for a tile (padded to one with its margin) and index their non-blank slices."""
        self.volumes: list[np.ndarray] = []
        self.affines: list[np.ndarray] = []
        self.groups: list[str] = []
        self.source_index: list[int] = []
        index = []
        largest = (0, 0, 0)
        for i, pv in enumerate(volumes):
            d, h, w = pv.array.shape
            largest = max(largest, (min(h, w), d, max(h, w)))
            if min(h, w) < need_plane or d < need_depth:
                continue
            arr = self._pad(pv.array)
            j = len(self.volumes)
            self.volumes.append(arr)
            self.affines.append(pv.affine)
            self.groups.append(pv.group)
            self.source_index.append(i)
            flat = np.asarray(pv.array, dtype=np.float32).reshape(d, -1)
            keep = np.nonzero(flat.std(axis=1) > BLANK_STD)[0]
            index.extend((j, int(z)) for z in keep)
        if not self.volumes:
            raise NapariSSLError(
                f"volumes too small for --image-size {self.size}: need at least {need_plane} x {need_plane} pixels in-plane"
                + (f" and {need_depth} slices" if need_depth > 1 else "")
                + f"; the largest has {largest[0]} x {largest[2]} pixels and {largest[1]} slices; lower --image-size"
                + (" or the method's distance option" if need_depth > 1 else "")
            )
        if not index:
            raise NapariSSLError("every slice of the input volumes is blank (constant intensity); check --data")
        self.index = np.asarray(index, dtype=np.int64)

    def _pad(self, array: np.ndarray) -> np.ndarray:
        d, h, w = array.shape
        need = self.size + 2 * self.margin
        ph, pw = max(0, need - h), max(0, need - w)
        if not ph and not pw:
            return array
        return np.pad(np.asarray(array), ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_volumes(self) -> int:
        return len(self.volumes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # --- cutting ---------------------------------------------------------------------------
    def _cut(self, out: np.ndarray, vol: np.ndarray, z: int, y0: int, x0: int, size: int) -> None:
        c = self.channels
        d = vol.shape[0]
        if c == 1:
            out[0] = vol[z, y0 : y0 + size, x0 : x0 + size]
            return
        lo = z - c // 2
        if lo >= 0 and lo + c <= d:
            out[:] = vol[lo : lo + c, y0 : y0 + size, x0 : x0 + size]
        else:
            for k in range(c):
                out[k] = vol[min(max(lo + k, 0), d - 1), y0 : y0 + size, x0 : x0 + size]

    def __getitem__(self, indices) -> dict[str, torch.Tensor]:
        if isinstance(indices, (int, np.integer)):
            indices = [int(indices)]
        idx = np.asarray(indices, dtype=np.int64)
        rng = np.random.default_rng((self.seed, self.epoch, int(idx[0]), len(idx)))
        b, c, s, m = len(idx), self.channels, self.size, self.margin
        image = np.empty((b, c, s, s), np.float16)
        partner = np.empty((b, c, s, s), np.float16) if self.partner_kind else None
        context = np.empty((b, c, s + 2 * m, s + 2 * m), np.float16) if self.context else None
        dz = np.zeros(b, np.int64)
        vi, zi = self.index[idx, 0], self.index[idx, 1]
        u = rng.random((b, 4))
        for n in range(b):
            j, z = int(vi[n]), int(zi[n])
            vol = self.volumes[j]
            d, h, w = vol.shape
            y0 = m + int(u[n, 0] * (h - s - 2 * m + 1))
            x0 = m + int(u[n, 1] * (w - s - 2 * m + 1))
            self._cut(image[n], vol, z, y0, x0, s)
            if context is not None:
                up, down = z + self.distance <= d - 1, z - self.distance >= 0
                sign = 1 if (up and (not down or u[n, 2] < 0.5)) else -1
                dz[n] = sign * self.distance
                self._cut(context[n], vol, z + dz[n], y0 - m, x0 - m, s + 2 * m)
            if partner is not None:
                self._partner(partner[n], j, z, y0, x0, rng)
        batch = {
            "image": torch.from_numpy(image).float(),
            "volume_index": torch.from_numpy(np.asarray(self.source_index)[vi]),
            "slice_index": torch.from_numpy(zi.copy()),
        }
        if partner is not None:
            batch["partner"] = torch.from_numpy(partner).float()
        if context is not None:
            batch["context"] = torch.from_numpy(context).float()
            batch["context_dz"] = torch.from_numpy(dz)
        return batch

    def _partner(self, out: np.ndarray, j: int, z: int, y0: int, x0: int, rng: np.random.Generator) -> None:
        s = self.size
        if self.partner_kind == "same-depth":
            self._same_depth_partner(out, j, z, rng)
            return
        sib = self.siblings[j]
        if sib and rng.random() < 0.5:
            k = sib[int(rng.integers(len(sib)))]
            vol = self.volumes[k]
            d, h, w = vol.shape
            centre = self.affines[j] @ np.array([z, y0 + s / 2, x0 + s / 2, 1.0])
            zk, yk, xk = (np.linalg.inv(self.affines[k]) @ centre)[:3]
            zk = int(min(max(round(zk), 0), d - 1))
            yk = int(min(max(round(yk - s / 2), 0), h - s))
            xk = int(min(max(round(xk - s / 2), 0), w - s))
            self._cut(out, vol, zk, yk, xk, s)
            return
        vol = self.volumes[j]
        d, h, w = vol.shape
        step = int(rng.integers(1, self.partner_range + 1)) * (1 if rng.random() < 0.5 else -1)
        zp = z + step if 0 <= z + step < d else z - step
        zp = int(min(max(zp, 0), d - 1))
        yp = int(rng.integers(0, h - s + 1))
        xp = int(rng.integers(0, w - s + 1))
        self._cut(out, vol, zp, yp, xp, s)

    def _same_depth_partner(self, out: np.ndarray, j: int, z: int, rng: np.random.Generator) -> None:
        """The non-blank slice nearest to the same relative depth (z / depth) in another random volume."""
        k = int(rng.integers(len(self.volumes) - 1))
        k += k >= j
        vol = self.volumes[k]
        d, h, w = vol.shape
        rel = (z + 0.5) / self.volumes[j].shape[0]
        zs = self.nonblank[k]
        zk = int(zs[np.argmin(np.abs(zs + 0.5 - rel * d))]) if len(zs) else int(min(rel * d, d - 1))
        yk = int(rng.integers(0, h - self.size + 1))
        xk = int(rng.integers(0, w - self.size + 1))
        self._cut(out, vol, zk, yk, xk, self.size)

    # --- fixed views for previews -----------------------------------------------------------------
    def fixed_batch(self, n: int = 4) -> dict[str, torch.Tensor]:
        """A deterministic batch (same slices and crops every call) for previews."""
        rng_state = (self.seed, self.epoch)
        self.seed, self.epoch = 12345, 0
        try:
            picks = np.linspace(0, len(self.index) - 1, num=min(n, len(self.index))).astype(np.int64)
            return self[picks.tolist()] if len(picks) > 1 else self[[int(picks[0])]]
        finally:
            self.seed, self.epoch = rng_state

    def fixed_slice(self, max_size: int = 256) -> torch.Tensor:
        """The middle slice of the first volume, centred, padded to a multiple of 32: (1, C, H, W)."""
        vol = self.volumes[0]
        d, h, w = vol.shape
        z = d // 2
        hh, ww = min(h, max_size), min(w, max_size)
        y0, x0 = (h - hh) // 2, (w - ww) // 2
        out = np.zeros((self.channels, hh, ww), np.float16)
        lo = z - self.channels // 2
        for k in range(self.channels):
            out[k] = vol[min(max(lo + k, 0), d - 1), y0 : y0 + hh, x0 : x0 + ww]
        ph, pw = (-hh) % 32, (-ww) % 32
        out = np.pad(out, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        return torch.from_numpy(out.astype(np.float32))[None]


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of indices, split between DDP ranks; every rank gets the same number of batches."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.n, self.batch_size = int(n), int(batch_size)
        self.rank, self.world = int(rank), int(world_size)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(1, self.n // (self.batch_size * self.world))

    def __iter__(self) -> Iterator[list[int]]:
        g = np.random.default_rng((self.seed, self.epoch))
        need = len(self) * self.batch_size * self.world
        order = g.permutation(self.n)
        if need > self.n:  # fewer slices than one global batch: sample with repetition
            order = np.concatenate([order, g.integers(0, self.n, need - self.n)])
        order = order[:need].reshape(len(self), self.world, self.batch_size)
        for batch in order[:, self.rank]:
            yield batch.tolist()


def describe_volumes(volumes: Sequence[PreparedVolume], used: SliceDataset | None = None) -> dict:
    """Data summary for model.json: counts, modalities, shape and spacing ranges; no paths or identifiers."""
    shapes = np.asarray([v.array.shape for v in volumes]) if volumes else np.zeros((0, 3), int)
    spacings = np.asarray([v.spacing for v in volumes]) if volumes else np.zeros((0, 3))
    mods: dict[str, int] = {}
    for v in volumes:
        key = v.modality or "unknown"
        mods[key] = mods.get(key, 0) + 1
    out = {
        "num_volumes": len(volumes),
        "num_slices": int(shapes[:, 0].sum()) if len(shapes) else 0,
        "modalities": mods,
        "shape_min": shapes.min(0).tolist() if len(shapes) else None,
        "shape_max": shapes.max(0).tolist() if len(shapes) else None,
        "spacing_min": [round(float(s), 4) for s in spacings.min(0)] if len(spacings) else None,
        "spacing_max": [round(float(s), 4) for s in spacings.max(0)] if len(spacings) else None,
        "num_studies": len({v.group for v in volumes}),
    }
    if used is not None:
        out["num_volumes_used"] = used.num_volumes
        out["num_slices_used"] = len(used)
    return out

