"""A trained model with the settings stored beside it, ready to segment arrays and files.

Training stores, with the weights, everything prediction must repeat: the normalisation, the
decision threshold chosen on the validation images, the flips the net was trained with (what
``--tta`` averages over) and the labels' sub-pixel offset (``input_shift``). A `Predictor`
reads them once and applies them to every image, so a caller never passes them by hand::

    predictor = Predictor.load("runs/isbi/best.pt", PredictOptions(tta=True))
    prob = predictor.probabilities(image)       # (C_out, H, W), the net's own (not calibrated)
    out = predictor.predict(image)              # what `unetile predict` writes: calibrated, p > 0.5
    predictor.predict_file(Path("a.tif"), Path("out/a.tif"))

What is written (`encode`):

- one output class, default: the foreground probability, calibrated so that 0.5 is the
  stored threshold (`calibrate`); 8-bit PNG (round(p * 255)) or float32 TIFF.
- one output class with ``threshold``: a mask, 255 where the calibrated probability is
  above it, else 0 (uint8).
- ``instances`` ("watershed" or "components"): a label image of cells (uint16, or uint32
  past 65535 cells) as TIFF, 0 = boundary (see instances.py).
- several classes: PNG holds the arg-max class id per pixel (uint8); TIFF the float32
  probabilities (C, H, W).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cell_size import median_diameter, resize_image, scale_factor, scaled_shape
from ..device import choose_precision, resolve_device, use_fast_kernels, uses_channels_last
from ..distributed import Context
from ..errors import UserInputError
from ..io import label_dtype, match_channels_first, voxel_size, write_image, write_volume
from ..nn.checkpoint import load_model
from ..nn.model import UNet, fold_batch_norm
from ..normalization import PREDICTION_FLOOR, PREDICTION_NOISE_FLOOR, Normalization
from .instances import DEFAULT_METHOD, InstanceSettings
from .streaming import open_input, predict_to_tiff
from .tiling import default_batch_size, default_tile, predict_tiled

log = logging.getLogger(__name__)

#: The scales at which `Predictor.estimate_factor` looks for cells (of the image's own size).
ESTIMATE_SCALES = (1.0, 0.5, 0.25)
MIN_ESTIMATE_SIDE = 32  # px: no estimate from an image scaled smaller than this


@dataclass(frozen=True)
class PredictOptions:
    """How to predict and what to write; the model's own settings come from its checkpoint."""

    tile_size: int | None = None  # px; None: the tool's choice
    batch_size: int | None = None  # tiles per forward pass; None: as many as fit in ~1.5 GB
    tta: bool = False  # average over the flips / rotations the model was trained with
    threshold: float | None = None  # write masks at this calibrated probability
    format: str = "auto"  # "png", "tif", "zarr" or "auto" (the input's own kind; OME-Zarr for zarr)
    precision: str = "auto"  # auto: bf16 + channels_last on CPUs with bf16, AMP on CUDA
    overwrite: bool = False
    instances: str | None = None  # "watershed" or "components": write cell labels (TIFF, or NGFF labels)
    label_name: str = "cells"  # OME-Zarr: the labels image's name under labels/
    into_input: bool = False  # OME-Zarr: write the cells into the input's own labels/ group
    convert_channels: bool = False  # RGB -> grey (or grey -> repeated) to fit the model
    resume: bool = False  # continue unfinished TIFF outputs of an interrupted run
    compile: bool = False  # CUDA: torch.compile + CUDA graphs (~10 s per tile shape; pays on large images)
    diameter: float | None = None  # px across of the cells in the input (a model trained with a cell
    #                                diameter); None: estimated per image (`Predictor.cell_scale`)
    # A nearly empty image's upper normalisation value is held to at least this fraction of the way
    # to its 99.9th percentile (`normalization.Normalization.floor`); 0: exactly as in training
    normalization_floor: float = PREDICTION_FLOOR
    # ... and to at least this many sd of its pixel noise above its low value, so that a field of
    # pure noise stays dark (`normalization.Normalization.noise_floor`); 0: off
    normalization_noise_floor: float = PREDICTION_NOISE_FLOOR


class Predictor:
    """A loaded model (PyTorch checkpoint or exported ONNX) and its stored metadata.

    Attributes read from the checkpoint: ``normalization``, ``threshold`` (the calibrated
    decision threshold), ``flips`` (the group ``tta`` averages over) and ``input_shift``
    ((dy, dx) px, the labels' offset that training resampled the images by). ``precision``
    is decided once for the device (``options.precision``); a PyTorch net is made fast for
    it (`inference_model`).
    """

    def __init__(self, model, metadata: dict, options: PredictOptions = PredictOptions(),
                 device: torch.device = torch.device("cpu"), source: Path | None = None) -> None:
        self.options, self.device, self.source = options, device, source
        self.metadata = metadata
        if not 0.0 <= options.normalization_floor <= 1.0:
            raise UserInputError(f"--normalization-floor must be between 0 and 1, got {options.normalization_floor}")
        if not 0.0 <= options.normalization_noise_floor < math.inf:
            raise UserInputError("--normalization-noise-floor must be 0 or more, "
                                 f"got {options.normalization_noise_floor}")
        stored = Normalization.from_dict(metadata.get("normalization", Normalization().to_dict()))
        self.normalization = replace(stored, floor=options.normalization_floor,
                                     noise_floor=options.normalization_noise_floor)
        self.threshold = float(metadata.get("threshold", 0.5))
        self.flips = metadata.get("flips", "dihedral")  # models saved before flips were stored: all 8
        self.input_shift = tuple(metadata.get("input_shift", (0.0, 0.0)))
        # 3D models: the voxel size (z, y, x) um of the training volumes, used for an input
        # volume whose file does not say its own (it sets the watershed's smoothing per axis).
        stored_voxel = metadata.get("voxel_size")
        self.voxel_size = tuple(float(v) for v in stored_voxel) if stored_voxel else None
        # 2D models trained with --cell-diameter: px across that cells reach the net (cell_size.py)
        self.net_diameter = float(metadata["cell_diameter"]) if metadata.get("cell_diameter") else None
        if options.diameter is not None and (self.net_diameter is None or options.diameter <= 0):
            raise UserInputError(f"--diameter {options.diameter}: " + ("give the cells' diameter in px (> 0)"
                                 if self.net_diameter else "this model was trained without a cell diameter "
                                 "(--cell-diameter), so it segments images at their own size"))
        self.precision = choose_precision(options.precision, device)
        # How --instances cuts cells: the method asked for, with the settings training chose.
        self.instance_settings = (InstanceSettings.from_metadata(options.instances, metadata)
                                  if options.instances else None)
        self.model = inference_model(model, self.precision) if isinstance(model, UNet) else model
        use_fast_kernels(device)
        if options.compile:
            self.model = compiled(self.model, device)

    @classmethod
    def load(cls, path: str | Path, options: PredictOptions = PredictOptions(),
             device: str | torch.device | None = None) -> "Predictor":
        """From a checkpoint (``.pt``, as `unetile train` writes), an exported ``.onnx`` file or a
        BioImage.IO package (``.zip``) from `unetile export`; or a shipped model's name (unetile.zoo)."""
        from ..zoo import resolve_model

        dev = device if isinstance(device, torch.device) else resolve_device(device)
        path = resolve_model(path)
        if path.suffix.lower() == ".onnx":
            from ..packaging.export import OnnxModel

            if not path.is_file():
                raise UserInputError(f"{path}: no such model file")
            model = OnnxModel(path)
            return cls(model, model.metadata, options, dev, path)
        if path.suffix.lower() == ".zip":
            from ..packaging.model_package import load_package

            model, metadata = load_package(path, dev)
        else:
            model, metadata = load_model(path, dev)
        return cls(model, metadata, options, dev, path)

    @property
    def config(self):
        """The net's `UNetConfig` (channels in and out, depth, padding)."""
        return self.model.config

    @property
    def spatial_dims(self) -> int:
        """2: the net segments images (H, W); 3: volumes (Z, Y, X)."""
        return getattr(self.config, "spatial_dims", 2)

    def to(self, device: torch.device) -> "Predictor":
        """Move the net (where it is a PyTorch module) to ``device``."""
        if isinstance(self.model, torch.nn.Module):
            self.model.to(device)
        self.device = device
        return self

    def probabilities(self, image: np.ndarray, *, name: str | Path = "image", out=None, encode=None,
                      skip_batches: int = 0, on_batch=None, progress: bool = False) -> np.ndarray:
        """(H, W) or (C, H, W) -> (C_out, H, W) float32 probabilities, seamless at any size;
        a 3D net's volume (Z, Y, X) or (C, Z, Y, X) -> (C_out, Z, Y, X).

        The image's channels are matched to the net's (``options.convert_channels``; errors
        name the image ``name``); the other keywords go to `predict_tiled` (``out``: where to
        write, e.g. a TIFF on disk; ``encode``: applied to each tile before writing;
        ``skip_batches`` / ``on_batch``: resumable streaming). One-class maps are *not*
        calibrated here: `predict` and `encode_tile` do that.
        """
        image = self._matched(image, name)
        if self.net_diameter is not None and out is None:
            return self.at_cell_scale(image, name, progress)[0]
        return self._tiled(image, self.options.tta, progress=progress, out=out, encode=encode,
                           skip_batches=skip_batches, on_batch=on_batch)

    def _tiled(self, image: np.ndarray, tta: bool, **keywords) -> np.ndarray:
        """`predict_tiled` with this model's stored settings: (C, H, W) -> (C_out, H, W)."""
        tile = self.tile_size(image.shape[1:])
        return predict_tiled(self.model, image, tile_size=tile, batch_size=self.batch_size(tile), tta=tta,
                             flips=self.flips, normalization=self.normalization, input_shift=self.input_shift,
                             precision=self.precision, channels_last=self.channels_last, **keywords)

    def at_cell_scale(self, image: np.ndarray, name: str | Path = "image",
                      progress: bool = False) -> tuple[np.ndarray, float]:
        """A model with a cell diameter: (C, H, W) -> ((C_out, H, W) probabilities, the factor the
        image was enlarged by before the net saw it). The image is rescaled so that its cells are
        ``net_diameter`` px across (`cell_scale`) and the map brought back to (H, W)."""
        first, factor = self.cell_scale(image, name, progress)
        if factor == 1.0:
            return (first if first is not None else self._tiled(image, self.options.tta, progress=progress)), 1.0
        shape = scaled_shape(image.shape[1:], factor)
        prob = self._tiled(resize_image(image, shape), self.options.tta, progress=progress)
        return resize_image(prob, image.shape[1:]), factor

    def cell_scale(self, image: np.ndarray, name: str | Path = "image",
                   progress: bool = False) -> tuple[np.ndarray | None, float]:
        """(the map of a first pass, where one was run at the image's own size and can be kept; the
        factor that brings the image's cells to ``net_diameter`` px). ``options.diameter`` where
        given; else estimated (`estimate_factor`). Factors within `cell_size.SAME_SCALE` of 1 count as 1."""
        if self.options.diameter is not None:
            return None, scale_factor(self.options.diameter, self.net_diameter)
        first, factor = self.estimate_factor(image, name, progress)
        return (first if factor == 1.0 and not self.options.tta else None), factor

    def estimate_factor(self, image: np.ndarray, name: str | Path = "image",
                        progress: bool = False) -> tuple[np.ndarray, float]:
        """(the pass at the image's own size, the factor that brings its cells to ``net_diameter``).

        A pass without TTA at each scale of `ESTIMATE_SCALES` (the image's own, 1/2, 1/4: 1.31
        passes at its own size in all, an eighth of that of a TTA pass), cells cut as `predict`
        cuts them and their median diameter measured (`cell_size.median_diameter`). A net sees
        cells best near the size it was trained at, and splits much larger ones into pieces, so
        the scale whose cells come out nearest ``net_diameter`` gives the estimate."""
        settings = self.instance_settings or InstanceSettings.from_metadata(DEFAULT_METHOD, self.metadata)
        first, best = None, (np.inf, 1.0)  # (|log(found / net)|, factor)
        for scale in ESTIMATE_SCALES:
            shape = scaled_shape(image.shape[1:], scale)
            if scale != 1.0 and min(shape) < MIN_ESTIMATE_SIDE:
                continue
            maps = self._tiled(image if scale == 1.0 else resize_image(image, shape), False, progress=progress)
            first = maps if scale == 1.0 else first
            found = median_diameter(settings.labels(calibrate_map(maps, self.threshold)))  # as at the net's scale
            if found is not None and abs(np.log(found / self.net_diameter)) < best[0]:
                best = (abs(np.log(found / self.net_diameter)), scale * self.net_diameter / found)
        if best[0] == np.inf:
            log.info("%s: no cells found at any scale: predicted at its own size", name)
            return first, 1.0
        found = self.net_diameter / best[1]
        factor = scale_factor(found, self.net_diameter)
        log.info("%s: cells about %.1f px across -> x%.2f (to %.0f px)", name, found, factor, self.net_diameter)
        return first, factor

    def _matched(self, image: np.ndarray, name: str | Path) -> np.ndarray:
        """``image`` as (C, H, W) (3D nets: (C, Z, Y, X)) with the net's channels."""
        if image.ndim == self.spatial_dims:
            image = image[None]
        return match_channels_first(image, self.config.in_channels, name, self.options.convert_channels)

    def tile_size(self, shape: tuple[int, ...]) -> int | tuple[int, ...]:
        """The tile for an image of ``shape`` (H, W) or a volume's (Z, Y, X): ``options.tile_size``
        (every axis, for a volume), else the tool's choice."""
        if self.options.tile_size:
            return self.options.tile_size if len(shape) == 2 else (self.options.tile_size,) * len(shape)
        return default_tile(self.model, shape, self.precision, self.device)

    @property
    def channels_last(self) -> bool:
        """The net runs channels-last (see `inference_model` and `device.uses_channels_last`)."""
        return uses_channels_last(self.precision, self.device, self.spatial_dims)

    def batch_size(self, tile: int | tuple[int, ...]) -> int:
        """Tiles per forward pass: ``options.batch_size``, else what fits the device."""
        return self.options.batch_size or default_batch_size(self.model, tile, self.precision, self.device)

    def resume_fingerprint(self) -> dict:
        """What an interrupted output must have been made with to be continued: the model
        file and every option that changes what is written."""
        options = {k: v for k, v in asdict(self.options).items() if k not in ("overwrite", "resume")}
        return {"model": model_fingerprint(self.source), "options": options}

    def predict(self, image: np.ndarray, suffix: str = ".tif", *, name: str | Path = "image",
                progress: bool = False, voxel_size: tuple[float, float, float] | None = None) -> np.ndarray:
        """One image (or a 3D net's volume) -> the array `unetile predict` writes for it (see
        the module docstring).

        ``suffix``: the output file's kind (".png" holds 8-bit probabilities or class ids).
        ``voxel_size``: a volume's (z, y, x) um, for cutting cells (default: the model's).
        """
        settings = self.instance_settings
        if self.net_diameter is not None:
            prob, factor = self.at_cell_scale(self._matched(image, name), name, progress)
            settings = settings and settings.at_scale(1.0 / factor)  # cells are cut at the image's own size
        else:
            prob = self.probabilities(image, name=name, progress=progress)
        spacing = (voxel_size or self.voxel_size) if self.spatial_dims == 3 else None
        maps = calibrate_map(prob, self.threshold)
        if getattr(self.config, "flows", False) and settings is None and (suffix == ".png" or self.options.threshold
                                                                          is not None):
            maps = maps[:1]  # a flows net's picture or mask is of its cell probability, not of the flows
        return encode(maps, suffix, self.options.threshold, settings, spacing)

    def streams(self, target: Path) -> bool:
        """Whether ``target`` is written tile by tile into a TIFF on disk (bounded memory, resumable)."""
        return (target.suffix == ".tif" and not self.options.instances and self.config.out_channels == 1
                and self.spatial_dims == 2 and self.net_diameter is None)  # rescaled images are whole

    def predict_file(self, source: Path, target: Path, *, ctx: Context = Context(), bar: tqdm | None = None,
                     progress: bool = False) -> Path:
        """Segment the image or stack ``source`` into ``target`` (written atomically).

        Where `streams` holds, every process of ``ctx`` takes its share of the slices;
        otherwise the caller gives each file to one process. ``bar`` advances by one per
        slice; ``progress`` shows a bar over the tiles. ``target``'s folder must exist; an
        existing ``target`` is replaced (`predict_files` checks before it calls this).
        """
        if self.streams(target):
            self._predict_to_tiff(source, target, ctx, bar, progress)
            return target
        if self.spatial_dims == 3:
            self._predict_volume(source, target, bar, progress)
            return target
        slices = []
        for page in open_input(source):
            slices.append(self.predict(np.asarray(page), target.suffix, name=source, progress=progress))
            if bar is not None:
                bar.update(1)
        if len(slices) == 1:
            _write(target, slices[0], "CYX" if slices[0].ndim == 3 else None)
        else:
            _write(target, np.stack(slices), "QCYX" if slices[0].ndim == 3 else "QYX")
        return target

    def _predict_volume(self, source: Path, target: Path, bar: tqdm | None, progress: bool) -> None:
        """A 3D net: the whole stack ``source`` is one volume (its pages are z), predicted as
        one and written as an OME-TIFF volume with the input's voxel size."""
        pages = np.asarray(open_input(source))  # (Z, C, Y, X)
        if pages.shape[0] < 2:
            raise UserInputError(f"{source}: a 3D model segments volumes, and this image has one plane; "
                                 "give a TIFF stack (its pages are z)")
        voxel = voxel_size(source)
        result = self.predict(np.moveaxis(pages, 0, 1), target.suffix, name=source, progress=progress,
                              voxel_size=voxel)
        with _writing(target):
            write_volume(target, result, voxel or self.voxel_size)
        if bar is not None:
            bar.update(pages.shape[0])

    def _predict_to_tiff(self, source: Path, target: Path, ctx: Context, bar: tqdm | None, progress: bool) -> None:
        dtype = np.uint8 if self.options.threshold is not None else np.float32
        predict_slice = functools.partial(self._predict_slice_into, source, bar, progress)
        predict_to_tiff(source, target, dtype, predict_slice, self.resume_fingerprint(), self.options.resume, ctx)

    def _predict_slice_into(self, source: Path, bar: tqdm | None, progress: bool, page: np.ndarray, out,
                            skip_batches: int, on_batch) -> None:
        """`predict_to_tiff`'s callback: one slice of ``source`` into the TIFF on disk (``out``)."""
        self.probabilities(page, name=source, out=out, encode=self.encode_tile, skip_batches=skip_batches,
                           on_batch=on_batch, progress=progress)
        if bar is not None:
            bar.update(1)

    def encode_tile(self, prob: np.ndarray) -> np.ndarray:
        """A tile's probabilities (1, h, w) -> the (1, h, w) values a streamed TIFF or OME-Zarr
        holds (with --instances, the calibrated map that cells are cut from)."""
        mask_at = None if self.options.instances else self.options.threshold
        return encode(calibrate(prob, self.threshold), ".tif", mask_at)[None]


def inference_model(model: UNet, precision: str = "fp32") -> UNet:
    """A copy of ``model`` made for fast prediction: BatchNorm folded into the convolutions,
    weights stored in bf16/fp16 when predicting at that precision, channels-last memory.

    The same function as ``model`` in eval mode, to the rounding of the precision.
    """
    fast = fold_batch_norm(model)
    if precision in ("bf16", "fp16"):
        fast = fast.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    device = next(model.parameters()).device
    dims = getattr(model.config, "spatial_dims", 2)
    if uses_channels_last(precision, device, dims):
        fast = fast.to(memory_format=torch.channels_last_3d if dims == 3 else torch.channels_last)
    return fast.to(device)


def compiled(model: UNet, device: torch.device) -> torch.nn.Module:
    """``model`` through ``torch.compile`` with CUDA graphs (``mode="reduce-overhead"``), for CUDA.

    Measured on an H200 (docs/results.md): 1.3-1.5x the eager net's throughput at 8192², but each
    new tile batch shape compiles for ~10 s, so it pays on whole slides, not on small images.
    The compiled module still answers ``config``, ``halo`` etc. through to ``model``.
    """
    if not isinstance(model, UNet):
        raise UserInputError("--compile works on PyTorch checkpoints (.pt), not on exported models")
    if device.type != "cuda":
        raise UserInputError(f"--compile needs a CUDA device (this run is on {device}); it did not pay on CPUs")
    return torch.compile(model, mode="reduce-overhead", dynamic=False)


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


def calibrate_map(prob: np.ndarray, threshold: float) -> np.ndarray:
    """(C, H, W) probabilities as `unetile predict` writes them: a one-class map calibrated to
    ``threshold`` (`calibrate`), class probabilities as they are."""
    return calibrate(prob, threshold) if prob.shape[0] == 1 else prob


def cell_threshold(threshold: float | None) -> float:
    """Where cells begin in the calibrated map: ``--threshold`` where given, else 0.5 (the
    calibrated decision threshold)."""
    return 0.5 if threshold is None else threshold


def encode(prob: np.ndarray, suffix: str, threshold: float | None,
           instances: InstanceSettings | None = None,
           spacing: tuple[float, float, float] | None = None) -> np.ndarray:
    """Calibrated probabilities (C, H, W) -> the array to write (see the module docstring);
    or a volume's (C, Z, Y, X), whose cells are cut with its voxel size ``spacing`` (z, y, x) um."""
    if instances is not None:
        labels = instances.labels(prob, cell_threshold(threshold), spacing=spacing)
        return labels.astype(label_dtype(labels))
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


def model_fingerprint(path: Path | None) -> str:
    """The model file's identity for a resume: path, size and modification time."""
    if path is None:
        return "in-memory model"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _write(target: Path, array: np.ndarray, axes: str | None) -> None:
    with _writing(target):
        write_image(target, array, axes=axes)


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """A failed write of ``target`` (no space, no permission) as one line for the user."""
    try:
        yield
    except OSError as e:
        raise UserInputError(f"{target}: cannot write ({e.strerror or e})") from e
