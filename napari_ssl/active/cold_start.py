"""The first slices to annotate over a set of studies, before any segmentation model exists.

TypiClust (Hacohen et al., ICML 2022): in the pretrained encoder's embedding of every slice, cluster into
(already annotated + n) groups with k-means, then take, from the largest groups holding no annotated slice, the
most *typical* slice (the inverse mean distance to its nearest neighbours in the group). Typical slices are
representative (what many slices look like) and one per group covers the variety. Picks keep to one per study
while possible (more studies rather than more slices per study: Zhang et al., MIDL 2025).

The embedding: the global average of the encoder's deepest feature map for each slice, L2-normalised, after the
normalisation and tile size the encoder was pretrained with.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ..errors import NapariSSLError


def load_encoder(encoder_dir: str):
    """(encoder module in eval mode, meta) from a pretrained-encoder folder (or a fine-tuned model folder)."""
    from ..models.checkpoint import load_weights, read_meta
    from ..models.unet import adapt_in_channels, build_encoder

    path = os.fspath(encoder_dir)
    meta = read_meta(path)
    if os.path.isfile(os.path.join(path, "encoder.safetensors")):
        sd, _ = load_weights(path, name="encoder")
    elif meta.get("kind") == "segmentation":
        full, _ = load_weights(path, name="model")
        sd = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
    else:
        raise NapariSSLError(f"{path} holds no encoder weights (encoder.safetensors or a fine-tuned model.safetensors)")
    enc_name = meta.get("encoder_name") or meta.get("encoder")
    if not enc_name:
        raise NapariSSLError(f"{path}: no encoder name in its model.json")
    ch = int(meta.get("in_channels") or 1)
    enc = build_encoder(enc_name, in_channels=ch)
    try:
        enc.load_state_dict(adapt_in_channels(sd, ch), strict=True)
    except RuntimeError as exc:
        raise NapariSSLError(f"{path}: encoder weights do not fit {enc_name} ({str(exc).strip().splitlines()[0][:160]})") from None
    return enc.eval(), meta


def slice_embeddings(encoder, images: Sequence[np.ndarray], image_size: int, in_channels: int = 1,
                     batch_size: int = 64) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(N, D) L2-normalised embeddings of every slice of the normalised (z, y, x) `images`, and [(volume, slice)] per row."""
    import torch

    from ..data.labelled_slices import fit_to_size, slice_stack

    feats, index = [], []
    dev = next(encoder.parameters()).device
    with torch.no_grad():
        for v, img in enumerate(images):
            img = np.asarray(img, np.float32)
            for s in range(0, img.shape[0], batch_size):
                zs = range(s, min(img.shape[0], s + batch_size))
                x = torch.from_numpy(np.stack([slice_stack(img, z, in_channels) for z in zs])).to(dev)
                f = encoder(fit_to_size(x, int(image_size)))[-1].mean((2, 3))
                feats.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
                index += [(v, z) for z in zs]
    return np.concatenate(feats).astype(np.float32), index


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 30) -> np.ndarray:
    """Cluster labels of the rows of `x` (k-means++ start, Lloyd iterations)."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    lab = np.zeros(n, int)
    for _ in range(iters):
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ c.T + (c ** 2).sum(1)[None]
        new = dist.argmin(1)
        if _ > 0 and (new == lab).all():
            break
        lab = new
        for j in range(k):
            if (lab == j).any():
                c[j] = x[lab == j].mean(0)
    return lab


def typicality(x: np.ndarray, k_nn: int = 20) -> np.ndarray:
    """1 / mean distance to the k nearest other rows (TypiClust's typicality)."""
    n = x.shape[0]
    if n < 2:
        return np.ones(n)
    d = np.sqrt(np.maximum((x ** 2).sum(1)[:, None] - 2 * x @ x.T + (x ** 2).sum(1)[None], 0.0))
    np.fill_diagonal(d, np.inf)
    k = min(int(k_nn), n - 1)
    near = np.partition(d, k - 1, axis=1)[:, :k]
    return 1.0 / (near.mean(1) + 1e-8)


def typiclust_picks(emb: np.ndarray, index: Sequence[tuple[int, int]], n: int, annotated: Optional[set] = None, seed: int = 0,
                    k_nn: int = 20, one_per_volume: bool = True) -> list[dict]:
    """n rows of `emb` to annotate next: [{"rank", "volume", "slice", "score", "cluster_size"}], best first.
    `annotated`: {(volume, slice)} already annotated (they count for coverage, never picked)."""
    if int(n) < 1:
        raise NapariSSLError("-n must be at least 1")
    annotated = set(annotated or ())
    index = [tuple(map(int, t)) for t in index]
    n_ann = sum(1 for t in index if t in annotated)
    lab = kmeans(emb, n_ann + int(n), seed=seed)
    sizes = np.bincount(lab, minlength=lab.max() + 1)
    covered = {lab[i] for i, t in enumerate(index) if t in annotated}
    used_vols = {v for v, _ in annotated}
    order = sorted((j for j in range(sizes.size) if sizes[j] > 0), key=lambda j: (j in covered, -sizes[j], j))
    picks: list[dict] = []
    taken: set = set()
    for relax in (False, True):
        for j in order:
            if len(picks) >= int(n):
                break
            if any(p["cluster"] == j for p in picks):
                continue
            rows = np.flatnonzero(lab == j)
            rows = [i for i in rows if index[i] not in annotated and index[i] not in taken]
            if not rows:
                continue
            typ = typicality(emb[np.flatnonzero(lab == j)], k_nn)
            pos = {int(i): t for i, t in zip(np.flatnonzero(lab == j), typ)}
            rows.sort(key=lambda i: -pos[int(i)])
            cand = [i for i in rows if relax or not one_per_volume or index[i][0] not in used_vols]
            if not cand:
                continue
            i = cand[0]
            picks.append({"volume": index[i][0], "slice": index[i][1], "score": float(pos[int(i)]), "cluster": int(j),
                          "cluster_size": int(sizes[j])})
            taken.add(index[i])
            used_vols.add(index[i][0])
        if len(picks) >= int(n):
            break
    free = [t for t in index if t not in annotated and t not in taken]
    for t in free[: max(0, int(n) - len(picks))]:  # fewer groups than picks: fill in slice order
        picks.append({"volume": t[0], "slice": t[1], "score": 0.0, "cluster": -1, "cluster_size": 0})
    for r, p in enumerate(picks):
        p["rank"] = r + 1
    return picks


def cold_start_pool(encoder_dir: str, images: Sequence, n: int = 5, annotated: Optional[Sequence[Optional[np.ndarray]]] = None,
                    seed: int = 0, batch_size: int = 64) -> list[dict]:
    """The first slices to annotate over several studies (Volumes, paths, or normalised arrays), from a pretrained encoder:
    [{"rank", "volume", "slice", "score", "cluster_size", "reason"}]. `annotated`: bool per slice, one per image (or None)."""
    from ..data.normalize import normalize, resolve_normalization
    from ..io import load_image

    enc, meta = load_encoder(encoder_dir)
    arrays = []
    for im in images:
        if isinstance(im, np.ndarray):
            arrays.append(im)
            continue
        vol = load_image(im)
        arrays.append(normalize(vol.array, resolve_normalization(meta.get("normalization"), vol.modality)))
    emb, index = slice_embeddings(enc, arrays, int(meta.get("image_size") or 64), int(meta.get("in_channels") or 1), batch_size)
    ann: set = set()
    for v, a in enumerate(annotated or []):
        if a is not None:
            ann |= {(v, int(z)) for z in np.flatnonzero(np.asarray(a, bool))}
    picks = typiclust_picks(emb, index, n, ann, seed=seed)
    for p in picks:
        p["reason"] = (f"typical of {p['cluster_size']} similar-looking slices not yet covered by an annotation"
                       if p["cluster_size"] else "every look-alike group is covered; next unannotated slice")
    return picks
