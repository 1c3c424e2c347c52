"""Decoding the pixels of a stack into one preallocated array, then Modality rescale.

Uncompressed frames are read with ``os.preadv`` straight from the file into their slot of
the output array (no intermediate copy); compressed ones (JPEG, JPEG-LS, JPEG 2000, RLE,
deflate) go through pydicom and its pylibjpeg plugins. Files are read on a thread pool:
file reads and the decoders release the GIL.
"""
from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .frames import Frame
from .pydicom_fast import value

NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": "<",      # implicit VR little endian
    "1.2.840.10008.1.2.1": "<",    # explicit VR little endian
    "1.2.840.10008.1.2.2": ">",    # explicit VR big endian (retired)
}
INT16 = np.iinfo(np.int16)
INT32 = np.iinfo(np.int32)


def max_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def stored_dtype(ds) -> np.dtype:
    """Numpy dtype of the stored (pre-rescale) values of a monochrome image."""
    if "FloatPixelData" in ds:
        return np.dtype(np.float32)
    if "DoubleFloatPixelData" in ds:
        return np.dtype(np.float64)
    bits = int(value(ds, "BitsAllocated", 16))
    signed = int(value(ds, "PixelRepresentation", 0)) == 1
    if bits == 1:
        return np.dtype(np.uint8)
    if bits not in (8, 16, 32):
        raise ValueError(f"BitsAllocated {bits} is not supported")
    return np.dtype(f"{'i' if signed else 'u'}{bits // 8}")


@dataclass
class _FileJob:
    path: str
    direct: bool
    byteorder: str
    offset: int
    frame_bytes: int
    items: list[tuple[int, int]]  # (frame index in file, z in output)


def _jobs(frames: list[Frame], dtype: np.dtype) -> list[_FileJob]:
    by_file: dict[str, list[tuple[int, int]]] = defaultdict(list)
    first: dict[str, Frame] = {}
    for z, f in enumerate(frames):
        by_file[f.header.path].append((f.index, z))
        first.setdefault(f.header.path, f)
    jobs = []
    for path, items in by_file.items():
        h = first[path].header
        ds = h.ds
        frame_bytes = first[path].rows * first[path].cols * dtype.itemsize
        nframes = int(value(ds, "NumberOfFrames", 1) or 1)
        direct = (
            h.transfer_syntax in NATIVE_SYNTAXES
            and h.pixel_length != 0xFFFFFFFF
            and int(value(ds, "SamplesPerPixel", 1)) == 1
            and int(value(ds, "BitsAllocated", 16)) in (8, 16, 32)
            and h.pixel_offset >= 0
            and h.pixel_length >= nframes * frame_bytes
        )
        jobs.append(_FileJob(path, direct, NATIVE_SYNTAXES.get(h.transfer_syntax, "<"), h.pixel_offset, frame_bytes, sorted(items)))
    return jobs


def _unused_bits_fix(arr: np.ndarray, ds) -> None:
    """Sign-extend (signed) or clear (unsigned) the bits above BitsStored, in place."""
    alloc = int(value(ds, "BitsAllocated", 16))
    stored = int(value(ds, "BitsStored", alloc))
    if arr.dtype.kind in "iu" and 0 < stored < alloc and alloc == arr.dtype.itemsize * 8:
        shift = alloc - stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)


def _read_file(job: _FileJob, out: np.ndarray, ds) -> Optional[str]:
    """Fill the output slices of one file; return an error message instead of raising."""
    try:
        if job.direct:
            fd = os.open(job.path, os.O_RDONLY)
            try:
                for idx, z in job.items:
                    buf = memoryview(out[z]).cast("B")
                    n = os.preadv(fd, [buf], job.offset + idx * job.frame_bytes)
                    if n != job.frame_bytes:
                        return f"{job.path}: pixel data cut short"
                    if job.byteorder == ">" and out.dtype.itemsize > 1:
                        out[z].byteswap(inplace=True)
                    _unused_bits_fix(out[z], ds)
            finally:
                os.close(fd)
        else:
            from pydicom.pixels import iter_pixels

            zs = dict(job.items)
            indices = [i for i, _ in job.items]
            nframes = int(ds.get("NumberOfFrames", 1) or 1)
            kwargs = {"indices": indices} if nframes > 1 else {}
            for idx, arr in zip(indices, iter_pixels(job.path, **kwargs)):
                if arr.ndim != 2:
                    return f"{job.path}: not a single-channel image"
                out[zs[idx]] = arr
    except Exception as exc:  # corrupt / truncated compressed streams raise many kinds
        return f"{job.path}: cannot decode pixel data ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return None


def read_raw(frames: list[Frame], workers: Optional[int] = None, out: Optional[np.ndarray] = None) -> tuple[np.ndarray, list[int], list[str]]:
    """Stored values of `frames` as one (z, y, x) array; z indices that failed, with messages.

    ``out`` (optional): the array to fill, of the stored dtype and the stack's shape."""
    ds0 = frames[0].header.ds
    dtype = stored_dtype(ds0)
    if out is None:
        out = np.empty((len(frames), frames[0].rows, frames[0].cols), dtype=dtype)
    jobs = _jobs(frames, dtype)
    ds_of = {f.header.path: f.header.ds for f in frames}
    workers = workers or max_workers()
    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(lambda j: _read_file(j, out, ds_of[j.path]), jobs))
    else:
        errors = [_read_file(j, out, ds_of[j.path]) for j in jobs]
    failed: list[int] = []
    messages: list[str] = []
    for job, err in zip(jobs, errors):
        if err:
            failed.extend(z for _, z in job.items)
            messages.append(err)
    return out, sorted(failed), messages


def float_target(stored: np.dtype, slopes: np.ndarray, intercepts: np.ndarray) -> Optional[np.dtype]:
    """The floating dtype :func:`rescale` will give (known from the headers alone), else None."""
    slopes = np.asarray(slopes, float)
    intercepts = np.asarray(intercepts, float)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return None
    if stored.kind in "iu" and _integral(slopes) and _integral(intercepts):
        return None   # integer result (in place, or int32 if the range needs it)
    return np.dtype(np.float64 if stored == np.float64 else np.float32)


def widening_buffer(shape: tuple[int, int, int], stored: np.dtype, target: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(volume of `target` dtype, view of its last bytes as the stored-dtype stack of the same shape).

    Reading the stored values into the tail and converting slice by slice from the front
    (:func:`rescale_into`) needs no second full-size array: slice z of the result ends before
    stored slice z+1 begins, whatever the ratio of the item sizes.
    """
    if target.itemsize % stored.itemsize:
        raise ValueError("target item size must be a multiple of the stored one")
    out = np.empty(shape, dtype=target)
    nbytes = int(np.prod(shape)) * stored.itemsize
    raw = out.reshape(-1).view(np.uint8)[out.nbytes - nbytes:].view(stored).reshape(shape)
    return out, raw


def rescale_into(out: np.ndarray, raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """value = stored * slope + intercept per slice, from `raw` (the tail of `out`, see
    :func:`widening_buffer`) into `out`, front to back; same arithmetic as :func:`rescale`."""
    s = np.asarray(slopes, float).astype(out.dtype)
    c = np.asarray(intercepts, float).astype(out.dtype)
    for z in range(out.shape[0]):
        # numpy casts in small buffers and copies an input that overlaps its output (only the
        # last slice can overlap itself), so no slice-sized temporary is needed
        np.multiply(raw[z], s[z], out=out[z], dtype=out.dtype)
        np.add(out[z], c[z], out=out[z])
    return out


def _integral(v: np.ndarray) -> bool:
    return bool(np.all(np.abs(v - np.round(v)) < 1e-6))


def rescale(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply value = stored * slope + intercept per slice.

    Keeps the stored dtype when the rescale is the identity; an integer dtype (int16, else int32)
    when slope and intercept are integers and the actual range fits, converting in place when
    the item size allows; float32 otherwise.
    """
    slopes = np.asarray(slopes, float)
    intercepts = np.asarray(intercepts, float)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return raw
    target: np.dtype = np.dtype(np.float32)
    if raw.dtype.kind in "iu" and _integral(slopes) and _integral(intercepts):
        mins = raw.min(axis=(1, 2)).astype(np.int64)   # per slice, no copy of the volume
        maxs = raw.max(axis=(1, 2)).astype(np.int64)
        s_int = np.round(slopes).astype(np.int64)
        c_int = np.round(intercepts).astype(np.int64)
        ends = np.concatenate([mins * s_int + c_int, maxs * s_int + c_int])
        lo, hi = int(ends.min()), int(ends.max())
        if INT16.min <= lo and hi <= INT16.max:
            target = np.dtype(np.int16)
        elif INT32.min <= lo and hi <= INT32.max:
            target = np.dtype(np.int32)
    if target.kind == "i":
        # Integer arithmetic wraps modulo 2**bits; the true result fits `target`, so computing in
        # `target` (even on a view of unsigned data) is exact and needs no temporary.
        out = raw.view(target) if target.itemsize == raw.dtype.itemsize else raw.astype(target)
        mod = 1 << (8 * target.itemsize)
        half = mod >> 1

        def wrap(v: np.ndarray) -> np.ndarray:
            return ((np.round(v).astype(object) + half) % mod - half).astype(np.int64).astype(target)[:, None, None]

        if np.any(slopes != 1):
            np.multiply(out, wrap(slopes), out=out)
        if np.any(intercepts != 0):
            np.add(out, wrap(intercepts), out=out)
        return out
    out = raw.astype(np.float64 if raw.dtype == np.float64 else np.float32)
    out *= slopes.astype(out.dtype)[:, None, None]
    out += intercepts.astype(out.dtype)[:, None, None]
    return out
