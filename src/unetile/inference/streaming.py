"""Prediction of images and stacks larger than memory, resumable, straight to a TIFF on disk.

The input is memory-mapped where its TIFF allows it (uncompressed, contiguous pages), so
tiles are read from disk as they are needed. The output is an uncompressed TIFF created
at full size first; each batch of tiles is written into it through a memory map opened
for that write only, so resident memory stays bounded by the tile batch, not the image.

Progress is recorded beside the output after every batch (``.NAME.progress.json``). A run
that is killed leaves ``.NAME.part.tif`` and its progress file; ``--resume`` continues
after the last batch written. Batches are always formed the same way, so the result is
bit-identical to an uninterrupted run. The finished file is renamed into place.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile

from ..distributed import Context
from ..errors import UserInputError
from ..io import TIFF_SUFFIXES, read_image, tiff_checked


def open_input(path: Path) -> np.ndarray:
    """(N, C, H, W) view of an image file: memory-mapped for plain TIFFs, else read whole."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tiff_checked(path):
                with tifffile.TiffFile(path) as tif:
                    axes = tif.series[0].axes
                mapped = tifffile.memmap(path, mode="r")
        except (ValueError, OSError, tifffile.TiffFileError, IndexError):
            return read_image(path)
        if set(axes) <= set("QIZTYX") and axes.endswith("YX"):
            return mapped.reshape(-1, 1, *mapped.shape[-2:])
    return read_image(path)


class TiffSlice:
    """One slice (1, H, W) of an output TIFF stack on disk, written by slice assignment.

    Each assignment maps the file, writes, flushes and unmaps, so written pages leave
    this process's resident memory at once.
    """

    def __init__(self, path: Path, index: int, n: int, height: int, width: int, dtype: np.dtype):
        self.path, self.index, self.n = path, index, n
        self.shape = (1, height, width)
        self.dtype = np.dtype(dtype)
        self.offset = _data_offset(path)

    def __setitem__(self, key, value) -> None:
        _, ys, xs = key
        full = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.offset,
                         shape=(self.n, self.shape[1], self.shape[2]))
        full[self.index, ys, xs] = value[0]
        full.flush()
        del full


def _data_offset(path: Path) -> int:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.compression != 1 or not tif.series[0].dataoffset:
            raise ValueError(f"{path}: not a contiguous uncompressed TIFF")
        return int(tif.series[0].dataoffset)


def _progress_path(target: Path, ctx: Context) -> Path:
    rank = f".rank{ctx.rank}" if ctx.active else ""
    return target.parent / f".{target.name}.progress{rank}.json"


def part_path(target: Path) -> Path:
    return target.parent / f".{target.name}.part.tif"


class SlicePredictor(Protocol):
    """What `predict_to_tiff` calls for each slice: predict ``page`` (C, H, W) into ``out``,
    skipping the first ``skip_batches`` tile batches, calling ``on_batch(batches_done)``."""

    def __call__(self, page: np.ndarray, out: TiffSlice, skip_batches: int,
                 on_batch: Callable[[int], None]) -> None: ...


def predict_to_tiff(
    source: Path,
    target: Path,
    dtype: np.dtype,
    predict_slice: SlicePredictor,
    fingerprint: dict,
    resume: bool,
    ctx: Context = Context(),
) -> None:
    """Predict every slice of ``source`` into the TIFF ``target``, resumably.

    ``fingerprint`` (model, options) must match, with the input's shape, for a resume to
    continue. With several processes (``ctx``), process r predicts slices r, r + N, r + 2N,
    ... into the one file, each keeping its own progress; rank 0 creates and finally
    renames it.
    """
    part = part_path(target)
    pages = open_input(source)  # (N, C, H, W)
    n_slices, _, height, width = pages.shape
    mine = list(range(ctx.rank, n_slices, ctx.world))
    fingerprint = {**fingerprint, "shape": list(pages.shape), "processes": ctx.world}
    progress = _Progress(_progress_path(target, ctx), fingerprint)
    continuing = resume and part.exists()
    if continuing:
        progress.load(target)
    if ctx.is_main and not continuing:
        shape = (n_slices, height, width) if n_slices > 1 else (height, width)
        metadata = {"axes": "QYX" if n_slices > 1 else "YX"}
        tifffile.memmap(part, shape=shape, dtype=dtype, photometric="minisblack", metadata=metadata)
    ctx.barrier()
    progress.save()
    for k in range(progress.slice, len(mine)):
        out = TiffSlice(part, mine[k], n_slices, height, width, dtype)
        skip = progress.batches if k == progress.slice else 0
        predict_slice(pages[mine[k]], out, skip, functools.partial(progress.batch_done, k))
        progress.slice_done(k)
    ctx.barrier()
    if ctx.is_main:
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, target)
        for p in target.parent.glob(f".{glob.escape(target.name)}.progress*.json"):
            p.unlink(missing_ok=True)
    ctx.barrier()


class _Progress:
    """This process's position in its share of the slices, saved beside the output after
    every tile batch: ``slice`` (an index into the share) and ``batches`` done in it."""

    def __init__(self, path: Path, fingerprint: dict) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.slice, self.batches = 0, 0

    def load(self, target: Path) -> None:
        """Continue where an interrupted run with the same fingerprint stopped."""
        if not self.path.exists():
            return
        saved = json.loads(self.path.read_text())
        if saved.get("fingerprint") != self.fingerprint:
            raise UserInputError(f"{target}: the unfinished output was made with other settings or another model; "
                                 "run without --resume (and with --overwrite) to start again")
        self.slice, self.batches = saved["slice"], saved["batches"]

    def batch_done(self, slice_: int, batches: int) -> None:
        """``batches`` tile batches of slice ``slice_`` (of this process's share) are written."""
        self.slice, self.batches = slice_, batches
        self.save()

    def slice_done(self, slice_: int) -> None:
        """Slice ``slice_`` is whole: the next starts at its first batch."""
        self.batch_done(slice_ + 1, 0)

    def save(self) -> None:
        _write_state(self.path, {"fingerprint": self.fingerprint, "slice": self.slice, "batches": self.batches})


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
