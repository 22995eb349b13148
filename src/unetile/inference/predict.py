"""`unetile predict`: segment image files with a saved model and write the results.

Each input file maps to one output file of the same name in the output folder; a
multi-page TIFF stack gives a multi-page TIFF out (what is written: predictor.py).

Every input is read and every output checked before anything is written: an existing
file is only replaced with ``overwrite=True``, so a mistake never destroys earlier results.
With several processes (torchrun), whole files are shared out, and the slices of a TIFF
streamed to disk are shared within the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import distributed
from ..slides.chunked import is_zarr, open_chunked
from ..device import resolve_device
from ..errors import UserInputError
from ..io import TIFF_SUFFIXES, list_images, match_channels
from ..slides.block_run import cluster_client, predict_to_zarr
from ..slides.blocks import DEFAULT_BLOCK_PX
from ..cell_size import SAME_SCALE
from .predictor import PredictOptions, Predictor
from .streaming import open_input, part_path
from ..slides.zarr_labels import published_marker
from ..slides.zarr_output import part_store, progress_folder

__all__ = ["PredictOptions", "output_path", "predict_files"]

log = logging.getLogger(__name__)


def predict_files(
    model_path: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    options: PredictOptions = PredictOptions(),
    device: str | None = None,
    cluster: str | None = None,
    block_px: int = DEFAULT_BLOCK_PX,
) -> list[Path]:
    """Segment every image in ``input_path`` (file, zarr store or folder) into ``out_dir``;
    return the outputs. OME-Zarr outputs are predicted in blocks of about ``block_px`` px,
    on the Dask cluster ``cluster`` where given (block_run.py); a 3D net's volumes (an
    OME-Zarr with z, or a TIFF stack with ``format="zarr"``) in boxes of as many voxels
    (``block_px ** (2/3)`` a side: `slides.blocks.block_sides`)."""
    predictor = Predictor.load(model_path, options, resolve_device(device))
    sources = list_images(input_path)
    out_dir = Path(out_dir)
    if Path(input_path).is_dir():
        input_dir = Path(input_path).resolve()
        if out_dir.resolve() == input_dir or input_dir in out_dir.resolve().parents:
            raise UserInputError(f"{out_dir}: the output folder is inside the input folder {input_path}; "
                                 "choose another --out")
    if options.format not in ("auto", "png", "tif", "zarr"):
        raise UserInputError(f"--format {options.format}: use png, tif, zarr or auto")
    shapes = [_check_input(src, predictor) for src in sources]
    targets = _plan_outputs(input_path, sources, shapes, out_dir, options)
    _check_zarr_plan(sources, targets, options, cluster, model_path, predictor.spatial_dims)
    if any(t.suffix == ".zarr" for t in targets):
        _check_slide_scale(predictor)
        with cluster_client(cluster) as client:  # before anything is written: the scheduler must answer
            _make_out_dir(out_dir)
            return [_predict_zarr(predictor, src, t, client, block_px, device) for src, t in zip(sources, targets)]
    _make_out_dir(out_dir)

    ctx, dev = distributed.init(predictor.device)
    if ctx.active:
        predictor.to(dev)
    total = sum(shape[0] for shape in shapes)
    tile_progress = total == 1 and ctx.is_main  # one image: a bar over its tiles instead
    try:
        with tqdm(total=total, desc="predict", unit="image", disable=total < 2 or not ctx.is_main) as bar:
            for index, (src, target, shape) in enumerate(zip(sources, targets, shapes)):
                if predictor.streams(target) or index % ctx.world == ctx.rank:
                    predictor.predict_file(src, target, ctx=ctx, bar=bar, progress=tile_progress)
                else:
                    bar.update(shape[0])  # another process writes this file
                log.debug("wrote %s", target)
    finally:
        distributed.finish()
    return targets


def output_path(source: Path, out_dir: Path, fmt: str, n_slices: int, instances: bool = False) -> Path:
    """Same name as the input, with the suffix of the written format (stacks and cell labels
    are TIFF, or OME-Zarr: the default for a zarr input)."""
    if fmt == "zarr" or (fmt == "auto" and is_zarr(source)):
        return out_dir / f"{source.stem}.zarr"
    if instances:
        return out_dir / f"{source.stem}.tif"
    if fmt == "auto":
        fmt = "tif" if source.suffix.lower() in TIFF_SUFFIXES else "png"
    if n_slices > 1:
        fmt = "tif"
    return out_dir / f"{source.stem}.{fmt}"


def _check_input(src: Path, predictor: Predictor) -> tuple[int, ...]:
    """Read (and discard) one input to find its problems before anything is written -> its
    (N, C, H, W) shape. Prediction reads it again, keeping memory to one image. A zarr store
    is checked by its metadata only (its pixels may be a terabyte)."""
    if is_zarr(src):
        chunked = open_chunked(src)
        if chunked.dtype.kind not in "uif":
            raise UserInputError(f"{src}: unsupported pixel type {chunked.dtype}")
        shape = chunked.shape
        match_channels(np.zeros((shape[1], 1, 1), chunked.dtype), predictor.config.in_channels, src,
                       predictor.options.convert_channels)
        return shape
    img = open_input(src)
    if img.dtype.kind not in "uif":
        raise UserInputError(f"{src}: unsupported pixel type {img.dtype}")
    if img.dtype.kind == "f":
        # In bands of rows, so that a memory-mapped giant is checked in bounded memory.
        for n in range(img.shape[0]):
            for y in range(0, img.shape[2], 1024):
                if not np.isfinite(img[n, :, y : y + 1024]).all():
                    raise UserInputError(f"{src}: the image holds NaN or infinite values")
    match_channels(img[:1, :, :1, :1], predictor.config.in_channels, src, predictor.options.convert_channels)
    return img.shape


def _plan_outputs(input_path: str | Path, sources: list[Path], shapes: list[tuple[int, ...]], out_dir: Path,
                  options: PredictOptions) -> list[Path]:
    """The output of each input; refuse outputs that would replace an input, each other, or
    (without ``overwrite``) an existing file or an interrupted run's part file."""
    targets = [output_path(src, out_dir, options.format, shape[0], bool(options.instances))
               for src, shape in zip(sources, shapes)]
    for src, t in zip(sources, targets):
        if t.resolve() == src.resolve():
            raise UserInputError(f"{t}: the output would replace its own input; choose another --out")
    if len(set(targets)) != len(targets):
        raise UserInputError(f"{input_path}: two inputs share a name and would write the same output")
    if not options.overwrite:
        for t in targets:
            if t.exists():
                raise UserInputError(f"{t}: already exists (use --overwrite to replace it)")
            part = part_store(t) if t.suffix == ".zarr" else part_path(t)
            if part.exists() and not options.resume:
                raise UserInputError(f"{t}: an interrupted run left {part.name}; continue it with --resume, "
                                     "or start again with --overwrite")
    return targets


def _check_zarr_plan(sources: list[Path], targets: list[Path], options: PredictOptions, cluster: str | None,
                     model_path: str | Path, spatial_dims: int = 2) -> None:
    """What OME-Zarr outputs (and a cluster) can and cannot do, said before any work; a 3D
    net's inputs must be volumes (an OME-Zarr image with z, a stack: metadata only)."""
    zarr_out = [t.suffix == ".zarr" for t in targets]
    for src in (s for s, out in zip(sources, zarr_out) if out and spatial_dims == 3):
        open_chunked(src, "zyx")  # one line where it has no z
    if cluster is not None and not all(zarr_out):
        raise UserInputError("--cluster writes OME-Zarr outputs: add --format zarr")
    if any(zarr_out) and not all(zarr_out):
        raise UserInputError("zarr and other inputs mixed: give --format zarr to write them all as OME-Zarr")
    if options.into_input or options.label_name != "cells":
        _check_label_plan(sources, targets, zarr_out, options)
    if any(zarr_out) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserInputError("--devices does not split OME-Zarr outputs; use --cluster local:N")
    if cluster is not None and Path(model_path).suffix.lower() == ".onnx":
        raise UserInputError("--cluster runs PyTorch checkpoints (.pt); give the .pt model")


def _check_slide_scale(predictor: Predictor) -> None:
    """OME-Zarr outputs are predicted block by block at the slide's own size: a model trained
    with a cell diameter (cell_size.py) runs there only where the slide's cells already have
    about that size."""
    net = predictor.net_diameter
    if net is None:
        return
    given = predictor.options.diameter
    if given is None:
        log.warning("this model sees cells %.0f px across; OME-Zarr outputs are predicted at the slide's own size "
                    "(no rescaling): give --diameter PX to have the cells' size checked", net)
    elif abs(given / net - 1.0) > SAME_SCALE:
        raise UserInputError(f"--diameter {given:g}: OME-Zarr outputs are predicted at the slide's own size, and "
                             f"this model sees cells {net:.0f} px across; rescale the slide by {net / given:.2f} "
                             "first, or write TIFF outputs (--format tif), which are rescaled")


def _check_label_plan(sources: list[Path], targets: list[Path], zarr_out: list[bool], options: PredictOptions) -> None:
    """--into-input and --label-name: cells into OME-Zarr, never over an existing label image
    (except the one this run's interrupted predecessor published: --resume finishes it)."""
    import re

    name = options.label_name
    if not options.instances:
        raise UserInputError("--into-input and --label-name name the cells of OME-Zarr outputs: add --instances")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise UserInputError(f"--label-name {name!r}: use letters, digits, '_', '-' and '.', not first '.'")
    for src, target in zip(sources, targets) if options.into_input else []:
        if not is_zarr(src) or open_chunked(src).kind != "ome-zarr":
            raise UserInputError(f"{src}: --into-input writes into an OME-Zarr image's labels/; this is not one")
        ours = options.resume and published_marker(progress_folder(target)).exists()
        if (src / "labels" / name).exists() and not ours:
            raise UserInputError(f"{src}: already holds a label image '{name}' (labels/{name}); it is never "
                                 "replaced: choose another --label-name")
        if not os.access(src, os.W_OK) or ((src / "labels").exists() and not os.access(src / "labels", os.W_OK)):
            raise UserInputError(f"{src}: not writable, so --into-input cannot add its labels")
    if not all(zarr_out):
        raise UserInputError("--into-input and --label-name name the cells of OME-Zarr outputs: add --format zarr")


def _predict_zarr(predictor: Predictor, source: Path, target: Path, client, block_px: int,
                  device: str | None) -> Path:
    try:
        return predict_to_zarr(predictor, source, target, client, block_px, worker_device=device)
    except PermissionError as e:
        raise UserInputError(f"{target}: cannot write ({e.strerror or e})") from e


def _make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"{out_dir}: cannot create the output folder ({e.strerror})") from e
    if not os.access(out_dir, os.W_OK):
        raise UserInputError(f"{out_dir}: the output folder is not writable")
