"""`unet predict`: segment image files with a saved model and write the results.

Each input file maps to one output file of the same name in the output folder; a
multi-page TIFF stack gives a multi-page TIFF out. What is written:

- one output class, default: the foreground probability, calibrated so that 0.5 is the
  decision threshold chosen on the validation slices in training (stored in the
  checkpoint); 8-bit PNG (round(p * 255)) or float32 TIFF.
- one output class with ``threshold``: a mask, 255 where the calibrated probability
  is above it, else 0 (uint8).
- ``instances`` ("watershed" or "components"): a label image of cells (uint16, or uint32
  past 65535 cells) as TIFF, 0 = boundary (see instances.py).
- several classes: PNG holds the arg-max class id per pixel (uint8); TIFF the float32
  probabilities (C, H, W).

All outputs are checked before any is written: an existing file is only replaced with
``overwrite=True``, so a mistake never destroys earlier results.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..device import choose_precision, resolve_device
from ..errors import UserInputError
from ..io import TIFF_SUFFIXES, list_images, match_channels, write_image
from ..nn.checkpoint import load_model
from ..nn.model import UNet
from ..normalization import Normalization
from .instances import probabilities_to_instances
from .streaming import open_input, part_path, predict_to_tiff
from .tiling import default_batch_size, default_tile_size, inference_model, predict_tiled

log = logging.getLogger(__name__)


def calibrate(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Monotone piecewise-linear map of [0, 1] onto itself sending ``threshold`` to 0.5.

    Training with the border weight map shifts the best decision threshold away from 0.5;
    calibrating the written map keeps "foreground = p > 0.5" true for every downstream tool.
    """
    if threshold == 0.5:
        return prob
    t = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    low = prob * (0.5 / t)
    high = 0.5 + (prob - t) * (0.5 / (1 - t))
    return np.where(prob <= t, low, high).astype(np.float32)


@dataclass(frozen=True)
class PredictOptions:
    tile_size: int | None = None  # px; None: the tool's choice
    batch_size: int | None = None  # tiles per forward pass; None: as many as fit in ~1.5 GB
    tta: bool = False  # average over the flips / rotations the model was trained with
    threshold: float | None = None  # write masks at this calibrated probability
    format: str = "auto"  # "png", "tif" or "auto" (the input's own kind)
    precision: str = "auto"  # auto: bf16 + channels_last on CPUs with bf16, AMP on CUDA
    overwrite: bool = False
    instances: str | None = None  # "watershed" or "components": write cell labels (TIFF)
    convert_channels: bool = False  # RGB -> grey (or grey -> repeated) to fit the model
    resume: bool = False  # continue unfinished TIFF outputs of an interrupted run


def output_path(source: Path, out_dir: Path, fmt: str, n_slices: int) -> Path:
    """Same name as the input, with the suffix of the written format (stacks are TIFF)."""
    if fmt == "instances":
        return out_dir / f"{source.stem}.tif"
    if fmt == "auto":
        fmt = "tif" if source.suffix.lower() in TIFF_SUFFIXES else "png"
    if n_slices > 1:
        fmt = "tif"
    return out_dir / f"{source.stem}.{fmt}"


def encode(prob: np.ndarray, suffix: str, threshold: float | None, instances: str | None = None) -> np.ndarray:
    """Probabilities (C, H, W) -> the array to write (see the module docstring)."""
    if instances is not None:
        foreground = prob[0] if prob.shape[0] == 1 else 1.0 - prob[0]
        labels = probabilities_to_instances(foreground, instances, 0.5 if threshold is None else threshold)
        return labels.astype(np.uint16) if labels.max() < 2**16 else labels
    if prob.shape[0] > 1:
        if suffix == ".png" or threshold is not None:
            return prob.argmax(axis=0).astype(np.uint8)
        return prob
    p = prob[0]
    if threshold is not None:
        return np.where(p > threshold, 255, 0).astype(np.uint8)
    if suffix == ".png":
        return np.rint(p * 255).astype(np.uint8)
    return p


def predict_files(
    model_path: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    options: PredictOptions = PredictOptions(),
    device: str | None = None,
) -> list[Path]:
    """Segment every image in ``input_path`` (file or folder) into ``out_dir``; return the outputs."""
    dev = resolve_device(device)
    if Path(model_path).suffix.lower() == ".onnx":
        from .export import OnnxModel

        if not Path(model_path).is_file():
            raise UserInputError(f"{model_path}: no such model file")
        model = OnnxModel(model_path)
        metadata = model.metadata
    else:
        model, metadata = load_model(model_path, dev)
    normalization = Normalization.from_dict(metadata.get("normalization", Normalization().to_dict()))
    model_threshold = float(metadata.get("threshold", 0.5))
    flips = metadata.get("flips", "dihedral")  # models saved before flips were stored: all 8
    input_shift = tuple(metadata.get("input_shift", (0.0, 0.0)))  # training's resampling onto the labels' grid
    precision = choose_precision(options.precision, dev)
    if isinstance(model, UNet):
        model = inference_model(model, precision)
    sources = list_images(input_path)
    out_dir = Path(out_dir)
    if Path(input_path).is_dir():
        input_dir = Path(input_path).resolve()
        if out_dir.resolve() == input_dir or input_dir in out_dir.resolve().parents:
            raise UserInputError(f"{out_dir}: the output folder is inside the input folder {input_path}; choose another --out")
    if options.format not in ("auto", "png", "tif"):
        raise UserInputError(f"--format {options.format}: use png, tif or auto")

    # Read (and discard) every input first, so that every problem is found before anything
    # is written; prediction reads them again one by one, keeping memory to one image.
    shapes = []
    for src in sources:
        img = open_input(src)
        _check_image(src, img)
        match_channels(img[:1, :, :1, :1], model.config.in_channels, src, options.convert_channels)
        shapes.append(img.shape)
        del img
    fmt = "instances" if options.instances else options.format
    targets = [output_path(src, out_dir, fmt, shape[0]) for src, shape in zip(sources, shapes)]
    for src, t in zip(sources, targets):
        if t.resolve() == src.resolve():
            raise UserInputError(f"{t}: the output would replace its own input; choose another --out")
    if len(set(targets)) != len(targets):
        raise UserInputError(f"{input_path}: two inputs share a name and would write the same output")
    if not options.overwrite:
        for t in targets:
            if t.exists():
                raise UserInputError(f"{t}: already exists (use --overwrite to replace it)")
            if part_path(t).exists() and not options.resume:
                raise UserInputError(f"{t}: an interrupted run left {part_path(t).name}; continue it with --resume, "
                                     "or start again with --overwrite")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"{out_dir}: cannot create the output folder ({e.strerror})") from e
    if not os.access(out_dir, os.W_OK):
        raise UserInputError(f"{out_dir}: the output folder is not writable")

    ctx, dev = distributed.init(dev)
    if ctx.active and isinstance(model, torch.nn.Module):
        model.to(dev)
    try:
        return _predict_all(model, model_path, sources, targets, shapes, options, normalization, model_threshold,
                            flips, input_shift, precision, ctx)
    finally:
        distributed.finish()


def _predict_all(model, model_path, sources, targets, shapes, options: PredictOptions, normalization,
                 model_threshold: float, flips: str, input_shift: tuple[float, float], precision: str,
                 ctx: distributed.Context) -> list[Path]:
    """Predict each source into its target; with several processes, each takes its share."""
    total = sum(shape[0] for shape in shapes)
    written = []
    tile_progress = total == 1 and ctx.is_main
    with tqdm(total=total, desc="predict", unit="image", disable=total < 2 or not ctx.is_main) as bar:
        for file_index, (src, target, shape) in enumerate(zip(sources, targets, shapes)):

            def run_slice(page, out=None, skip=0, on_batch=None, encode_tile=None) -> np.ndarray:
                page = match_channels(page, model.config.in_channels, src, options.convert_channels)
                tile = options.tile_size or default_tile_size(model, page.shape[-2], page.shape[-1])
                batch = options.batch_size or default_batch_size(model, tile, precision)
                return predict_tiled(model, page, tile_size=tile, batch_size=batch,
                                     tta=options.tta, flips=flips, normalization=normalization,
                                     input_shift=input_shift, precision=precision,
                                     channels_last=precision != "fp32", progress=tile_progress, out=out,
                                     encode=encode_tile, skip_batches=skip, on_batch=on_batch)

            if target.suffix == ".tif" and not options.instances and model.config.out_channels == 1:
                # Tile by tile into a TIFF on disk: bounded memory, resumable.
                dtype = np.uint8 if options.threshold is not None else np.float32

                def encode_tile(p: np.ndarray) -> np.ndarray:
                    return encode(calibrate(p, model_threshold), ".tif", options.threshold)[None]

                def predict_slice(page, out, skip, on_batch) -> None:
                    run_slice(page, out, skip, on_batch, encode_tile)
                    bar.update(1)

                fingerprint = {"model": _fingerprint(model_path), "shape": list(shape),
                               "options": {k: v for k, v in asdict(options).items() if k not in ("overwrite", "resume")}}
                predict_to_tiff(src, target, shape[0], shape[2], shape[3], dtype, predict_slice, fingerprint,
                                options.resume, ctx)
            elif file_index % ctx.world != ctx.rank:
                bar.update(shape[0])  # another process writes this file
            else:
                slices = []
                for page in open_input(src):
                    prob = run_slice(np.asarray(page))
                    if prob.shape[0] == 1:
                        prob = calibrate(prob, model_threshold)
                    slices.append(encode(prob, target.suffix, options.threshold, options.instances))
                    bar.update(1)
                if len(slices) == 1:
                    _write(target, slices[0], "CYX" if slices[0].ndim == 3 else None)
                else:
                    _write(target, np.stack(slices), "QCYX" if slices[0].ndim == 3 else "QYX")
            written.append(target)
            log.debug("wrote %s", target)
    return written


def _fingerprint(path: str | Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _check_image(src: Path, img: np.ndarray) -> None:
    if img.dtype.kind == "f":
        # In bands of rows, so that a memory-mapped giant is checked in bounded memory.
        for n in range(img.shape[0]):
            for y in range(0, img.shape[2], 1024):
                if not np.isfinite(img[n, :, y : y + 1024]).all():
                    raise UserInputError(f"{src}: the image holds NaN or infinite values")
    if img.dtype.kind not in "uif":
        raise UserInputError(f"{src}: unsupported pixel type {img.dtype}")


def _write(target: Path, array: np.ndarray, axes: str | None) -> None:
    try:
        write_image(target, array, axes=axes)
    except OSError as e:
        raise UserInputError(f"{target}: cannot write ({e.strerror or e})") from e
