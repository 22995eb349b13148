"""Everything a training run is built from, before the first step: the data (read, split,
weight maps decided), the labels' offset, the net, the optimiser and weight average, the
tile loader, and the metadata every checkpoint of the run stores (`build_run`)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import __version__, distributed
from ..cell_size import median_diameter, scale_factor
from ..device import choose_precision, uses_channels_last
from ..errors import UserInputError
from ..inference.instances import INTERIOR_SEEDED
from ..nn.checkpoint import load_payload
from ..nn.geometry import anisotropic_plan
from ..nn.model import UNet, UNetConfig, init_he
from ..normalization import Normalization
from ..registration import MAX_OFFSET, MIN_OFFSET, estimate_label_offset, parse_label_offset, shift_image
from ..spacing import relative_spacing
from .augment import Augmentation, elastic_margins
from .config import TrainConfig
from .data import (EpochSampler, LabelledImage, Targets, TileDataset, checksum, label_kind, prepare, read_pairs,
                   split, without_ignored)
from .device_augment import DeviceLoader, DeviceTiles
from .validation import calibration_subset, epoch_subset, memory_format, pixels

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One training run as built by `build_run`: what the loop's steps read and update."""

    cfg: TrainConfig  # resolved, with w0 / class balancing decided
    folder: Path  # the run folder
    ctx: distributed.Context
    device: torch.device
    precision: str  # fp32, bf16 or fp16
    raw: UNet  # the net being trained
    model: torch.nn.Module  # what the steps call: ``raw``, wrapped for DDP by the loop after a restore
    ema: torch.optim.swa_utils.AveragedModel | None  # the weight average (--ema), or None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16 only; a no-op otherwise
    loader: DataLoader | DeviceLoader  # batches (image, label, weight[, skeleton]) of augmented tiles
    sampler: EpochSampler
    steps_per_epoch: int
    val_items: list[LabelledImage]  # all validation images
    epoch_val_items: list[LabelledImage]  # those validated after each epoch (validation.epoch_subset)
    calibration_items: list[LabelledImage]  # those best.pt is calibrated on (validation.calibration_subset)
    input_shift: tuple[float, float]  # px: the images resampled onto the labels' grid
    metadata: dict  # stored with every checkpoint of the run (normalisation, tile, flips, shift)
    record: dict  # what config.json holds

    @property
    def averaged(self) -> UNet:
        """The weights that are validated and saved: the average where there is one."""
        return self.ema.module if self.ema is not None else self.raw

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def channels_last(self) -> bool:
        return uses_channels_last(self.precision, self.device, self.cfg.dims)


def build_run(cfg: TrainConfig, folder: Path, ctx: distributed.Context, device: torch.device) -> Run:
    """Read the data and build the net, optimiser and loader of a run (nothing is written)."""
    precision = choose_precision(cfg.precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise UserInputError("--precision fp16 needs CUDA; use bf16 or fp32 on a CPU")
    torch.manual_seed(cfg.seed)
    start = load_payload(cfg.init) if cfg.init is not None else None  # --init's checkpoint, read once
    cfg, train_items, val_items, channels, data_sha = load_data(cfg, start)
    input_shift = estimate_input_shift(cfg, train_items)
    if input_shift != (0.0, 0.0):
        # Training tiles come from resampled images; validation resamples per tile, as predict does.
        train_items = [dataclasses.replace(it, image=shift_image(it.image, input_shift)) for it in train_items]
    cell_target = cfg.cell_target  # decided by load_data (`cell_target_of`)
    kernels, pools = volume_plan(cfg, start)
    model_cfg = UNetConfig(
        in_channels=channels,
        out_channels=3 if cell_target in (*INTERIOR_SEEDED, "flows") else 1 if (cfg.classes or 2) == 2 else cfg.classes,
        flows=cell_target == "flows",
        depth=cfg.depth,
        width=cfg.width, padding=cfg.padding, up_mode=cfg.up_mode, dropout=cfg.dropout, batch_norm=cfg.batch_norm,
        **(dict(spatial_dims=3, kernels=kernels, pools=pools) if cfg.dims == 3 else {}),
    )
    raw = init_he(UNet(config=model_cfg))
    if start is not None:
        load_initial_weights(raw, start, cfg.init)
    tile, out_size = tile_shape(raw, cfg.tile_size)
    raw.to(device)
    if uses_channels_last(precision, device, cfg.dims):
        raw.to(memory_format=memory_format(cfg.dims))
    optimizer = build_optimizer(cfg, raw)
    ema = weight_average(raw, cfg.ema) if cfg.ema > 0 else None
    loader, sampler, steps_per_epoch = build_loader(cfg, train_items, tile, out_size, ctx, device,
                                                    soft_labels=(cfg.soft_labels and model_cfg.out_channels == 1)
                                                    or cell_target == "distance")  # distances warp bilinearly
    metadata = dict(normalization=cfg.normalization, tile_size=tile if isinstance(tile, int) else list(tile),
                    preset=cfg.preset, version=__version__,
                    flips=cfg.flips,  # predict --tta averages over the flips the net was trained with
                    input_shift=list(input_shift),  # and resamples its input as training did
                    cell_target=cell_target,  # what the map means to predict --instances
                    # px across that cells reach the net (predict rescales each image to it), or None
                    cell_diameter=cfg.net_diameter)
    if cfg.dims == 3:  # the voxel size the net was trained on (z, y, x) um, or None (unknown): predict reads it
        metadata.update(voxel_size=cfg.voxel_size)
    metadata.update(inherited_cell_settings(cfg, cell_target, start))
    record = {"train": dataclasses.asdict(cfg), "model": model_cfg.to_dict(), "tile_size": tile,
              "output_size": out_size, "precision": precision, "device": str(device), "processes": ctx.world,
              "version": __version__, "data_sha256": data_sha, "input_shift": list(input_shift),
              "train_images": [it.name for it in train_items], "val_images": [it.name for it in val_items]}
    log.info("training %s: %d train / %d val %s, tile %s -> %s, batch %d x %d process(es), %s, %s on %s",
             cfg.preset, len(train_items), len(val_items), "volumes" if cfg.dims == 3 else "images",
             _size_text(tile), _size_text(out_size), cfg.batch_size, ctx.world,
             _loss_text(cfg, cell_target), precision, device)
    calibration_items = calibration_subset(val_items, cfg.time_limit)
    return Run(cfg=cfg, folder=folder, ctx=ctx, device=device, precision=precision, raw=raw, model=raw, ema=ema,
               optimizer=optimizer, scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"), loader=loader,
               sampler=sampler, steps_per_epoch=steps_per_epoch, val_items=val_items,
               epoch_val_items=epoch_validation(val_items, calibration_items),
               calibration_items=calibration_items, input_shift=input_shift,
               metadata=metadata, record=record)


def volume_plan(cfg: TrainConfig, start: dict | None) -> tuple[tuple | None, tuple | None]:
    """A 3D net's (kernels, pools) per axis (`geometry.anisotropic_plan` for the run's voxel size,
    nnU-Net's rule; those of ``start``, the ``--init`` checkpoint, where there is one); (None, None)
    for images."""
    if cfg.dims != 3:
        return None, None
    if start is not None:
        saved = UNetConfig.from_dict(start["config"])
        return saved.kernels, saved.pools
    kernels, pools = anisotropic_plan(relative_spacing(cfg.voxel_size), cfg.depth)
    log.info("3D plan for voxels of %s um (z, y, x): kernels %s, poolings %s (z, y, x per level)",
             "unknown size (isotropic)" if cfg.voxel_size is None else ", ".join(f"{v:.4g}" for v in cfg.voxel_size),
             list(zip(*kernels)), list(zip(*pools)))
    return kernels, pools


def tile_shape(raw: UNet, tile_size: int) -> tuple[int | tuple[int, ...], int | tuple[int, ...]]:
    """(the net's input tile, its output window): px for an image; for a volume one per axis
    (z, y, x), each the valid size nearest ``tile_size`` along that axis."""
    if raw.config.spatial_dims == 2:
        tile = raw.valid_input_size(tile_size)
        if tile != tile_size:
            log.info("tile size %d -> %d (nearest size with exact poolings)", tile_size, tile)
        return tile, raw.output_size(tile)  # = tile with same padding
    tiles = tuple(raw.valid_input_size(tile_size, axis=axis) for axis in (-3, -2, -1))
    return tiles, tuple(raw.output_size(t, axis=axis) for t, axis in zip(tiles, (-3, -2, -1)))


def _size_text(size: int | tuple[int, ...]) -> str:
    return str(size) if isinstance(size, int) else "x".join(str(s) for s in size)


def epoch_validation(val_items: list[LabelledImage], calibrated: list[LabelledImage]) -> list[LabelledImage]:
    """The validation images scored after each epoch: all, or a spread subset of a large set
    (the log also says which ``calibrated`` images best.pt will be calibrated on)."""
    subset = epoch_subset(val_items)
    if len(subset) < len(val_items):
        log.info("validating %d of the %d validation images after each epoch (%.1f of %.1f Mpx); best.pt is "
                 "calibrated on %s", len(subset), len(val_items), pixels(subset) / 1e6, pixels(val_items) / 1e6,
                 "all of them" if len(calibrated) == len(val_items) else
                 f"{len(calibrated)} ({pixels(calibrated) / 1e6:.1f} Mpx, under the time limit)")
    return subset


def instance_labels(cfg: TrainConfig, train_pairs: list[tuple]) -> list[np.ndarray]:
    """The training labels (`read_pairs` tuples) that hold instance ids, not-annotated pixels 0."""
    labels = [(without_ignored(label, cfg.ignore_label)[0], path) for _, _, label, _, path in train_pairs]
    return [label for label, path in labels if label_kind(label, cfg.classes, str(path)) == "instances"]


def cell_target_of(cfg: TrainConfig, ids: list[np.ndarray], start: dict | None = None) -> str:
    """What the net learns from the labels: ``cfg.cell_target`` where some training labels hold
    instance ids (``ids``, `instance_labels`), else "foreground" (a warning where another target
    was asked for). "auto": the target of ``start`` (the ``--init`` checkpoint: its head fits no
    other), else flows for images (they part touching nuclei best, on a split by acquisition too:
    docs/results.md) and foreground for volumes."""
    with_ids = bool(ids)
    if cfg.cell_target not in ("foreground", "auto") and not with_ids:
        log.warning("--cell-target %s applies to instance-id labels only; these labels are masks or classes",
                    cfg.cell_target)
    if not with_ids:
        return "foreground"
    if cfg.cell_target != "auto":
        return cfg.cell_target
    if start is not None:
        return start.get("metadata", {}).get("cell_target") or "foreground"
    return "flows" if cfg.dims == 2 else "foreground"


def inherited_cell_settings(cfg: TrainConfig, cell_target: str, start: dict | None) -> dict:
    """How ``start`` (the ``--init`` checkpoint) cuts cells (its ``instances``), where it learnt
    the same target at the same cell diameter, as metadata for this run's checkpoints; a fine-tuned
    model keeps them when its validation images hold too few cells to choose again
    (`validation.MIN_CELLS_TO_CHOOSE`). Otherwise {}."""
    if start is None:
        return {}
    meta = start.get("metadata", {})
    same = meta.get("cell_target", "foreground") == cell_target and meta.get("cell_diameter") == cfg.net_diameter
    return {"instances": meta["instances"]} if same and "instances" in meta else {}


def load_initial_weights(model: UNet, payload: dict, path: str | Path) -> None:
    """Start ``model`` from the weights of ``payload``, the checkpoint ``path`` (``--init``,
    fine-tuning).

    The architecture must match (one line naming the difference otherwise); where the
    number of output classes differs, the output layer keeps its fresh initialisation.
    """
    saved = UNetConfig.from_dict(payload["config"])
    for name in ("spatial_dims", "in_channels", "depth", "width", "padding", "up_mode", "batch_norm", "kernels",
                 "pools"):
        have, want = getattr(saved, name), getattr(model.config, name)
        if have != want:
            raise UserInputError(f"--init {path}: the model has {name} {have}, this run needs {want}; start from a "
                                 "model of the same architecture (or train without --init)")
    state = payload["state_dict"]
    if saved.out_channels != model.config.out_channels:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        log.info("--init %s: %d output class(es) there, %d here: the output layer starts afresh", path,
                 saved.out_channels, model.config.out_channels)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise UserInputError(f"--init {path}: its weights do not fit this net ({(unexpected or missing)[0]})")
    log.info("starting from the weights of %s", path)


def build_loader(cfg: TrainConfig, train_items: list[LabelledImage], tile: int | tuple[int, ...],
                 out_size: int | tuple[int, ...],
                 ctx: distributed.Context, device: torch.device,
                 soft_labels: bool) -> tuple[DataLoader | DeviceLoader, EpochSampler, int]:
    """The loader of augmented training tiles -> (loader, its sampler, optimiser steps per epoch)."""
    aug = Augmentation(elastic=cfg.elastic, elastic_sigma=cfg.elastic_sigma, flips=cfg.flips, grey=cfg.grey,
                       soft_labels=soft_labels, zoom=cfg.zoom, **volume_augmentation(cfg, tile))
    dataset = TileDataset(train_items, tile, out_size, aug, cfg.seed, centre_crop=cfg.centre_crop,
                          skeleton=cfg.skeleton_recall > 0)
    per_epoch = cfg.samples_per_epoch or len(train_items)
    sampler = EpochSampler(per_epoch, ctx.rank, ctx.world)
    steps_per_epoch = math.ceil(per_epoch / (cfg.batch_size * ctx.world))
    if cfg.dims != 3 and tiles_on_device(cfg, device, train_items):  # volumes: on the CPU (config.py)
        log.info("training tiles are cut and augmented on %s", device)
        return DeviceLoader(DeviceTiles(dataset, device), sampler, cfg.batch_size), sampler, steps_per_epoch
    cpus = os.cpu_count() or 1
    workers = cfg.workers if cfg.workers is not None else (1 if cpus <= 2 else min(4, cpus // ctx.world - 1))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                        # Its own generator, so that creating an iterator never draws from the
                        # global RNG that dropout uses (exact resume mid-epoch).
                        generator=torch.Generator().manual_seed(cfg.seed))
    return loader, sampler, steps_per_epoch


#: Voxels within this ratio of each other count as isotropic: training volumes then rotate across z too.
ISOTROPIC = 1.5


def volume_augmentation(cfg: TrainConfig, tile: int | tuple[int, ...]) -> dict:
    """The `Augmentation` settings of volumes: the voxel size in in-plane px (physical
    displacements), and whether z may be swapped with y or x (isotropic voxels; a cubic tile
    and region, so that a swap keeps every window where it was)."""
    if cfg.dims != 3:
        return {}
    spacing = relative_spacing(cfg.voxel_size)
    margins = elastic_margins(Augmentation(elastic=cfg.elastic, elastic_sigma=cfg.elastic_sigma, spacing=spacing), 3)
    swaps = max(spacing) <= ISOTROPIC and len(set(tile)) == 1 and len(set(margins)) == 1
    return dict(spacing=spacing, axis_swaps=swaps)


def tiles_on_device(cfg: TrainConfig, device: torch.device, train_items: list[LabelledImage]) -> bool:
    """``--tiles-on``: "device" or "cpu" as asked; "auto": the device where it is a GPU, the
    skeleton recall is off (its skeletons are computed on the CPU) and the training images,
    labels and weights take less than a quarter of its free memory (flows and ``--zoom``: the CPU)."""
    flows = cfg.cell_target == "flows"  # their flows are warped and turned on the CPU (data.TileDataset)
    if cfg.tiles_on == "device" and flows:
        raise UserInputError("--tiles-on device cannot turn the flows of --cell-target flows; use --tiles-on cpu")
    if cfg.tiles_on != "auto":
        return cfg.tiles_on == "device"
    if flows or cfg.zoom != 1.0:
        return False
    if device.type != "cuda" or cfg.skeleton_recall > 0:
        return False
    size = sum(it.image.nbytes + 2 * it.classes.size * 4 for it in train_items)
    return size < 0.25 * torch.cuda.mem_get_info(device)[0]


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def weight_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the weights and BatchNorm statistics.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so that the
    average forgets the random initial weights within the first few dozen steps instead
    of 1 / (1 - decay) of them.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # BatchNorm's step counters
            for a, c in zip(averaged, current):
                a.copy_(c)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def automatic_weight_map(pairs: list[tuple], n_classes: int | None,
                         ignore_label: int | None = None) -> tuple[float, bool]:
    """``--w0 auto`` and ``--class-balance auto`` (the ``fast`` defaults): (w0, class balancing)
    for these training pairs.

    Instance ids: the paper's w0 = 10 with balanced classes. There the border term keeps
    touching cells apart, as on the paper's cell data (on synthetic touching nuclei, 3
    instead of 10 raised the cells' adapted Rand error from 0.19 to 0.29-0.49,
    benchmarks/touching_cells.py). Masks and membrane maps: w0 = 5 without class balancing.
    Balancing weights every membrane pixel of ISBI 2012 3.5x a cell pixel, thick membranes
    too, and the decision threshold then has to undo that; the border term alone weights
    the thin gaps between cells, which is where balancing kept cells apart. On ISBI 2012
    this lowered the pixel error and the adapted Rand error (docs/results.md, "The weight map").
    ``pairs``: `read_pairs` tuples; ``ignore_label``: the value of not-annotated pixels.
    """
    kinds = [label_kind(without_ignored(label, ignore_label)[0], n_classes, str(label_path))
             for _, _, label, _, label_path in pairs]
    return (10.0, True) if "instances" in kinds else (5.0, False)


def load_data(cfg: TrainConfig, start: dict | None = None):
    """-> (cfg with ``w0`` decided, train items, val items, channels, data checksum). ``start``:
    the ``--init`` checkpoint's payload, whose cell diameter a fine-tuning run keeps."""
    pairs = read_pairs(cfg.data, cfg.images, cfg.labels, cfg.dims)
    train_pairs, val_pairs = (pairs, read_pairs(cfg.val, dims=cfg.dims)) if cfg.val else split(pairs, cfg.val_fraction)
    cfg = with_weight_map_decided(cfg, train_pairs)
    ids = instance_labels(cfg, train_pairs)
    cfg = dataclasses.replace(cfg, cell_target=cell_target_of(cfg, ids, start))
    cfg = dataclasses.replace(cfg, cell_diameter=net_cell_diameter(cfg, ids, start))
    train_items, val_items = prepared(cfg, train_pairs), prepared(cfg, val_pairs)
    # only validation scores cells at the images' own sizes; training need not hold those labels
    train_items = [dataclasses.replace(it, own_instances=None) for it in train_items]
    paths = sorted({p for *_, ip, lp in train_pairs + val_pairs for p in (ip, lp)})
    channels = {it.image.shape[0] for it in train_items + val_items}
    if len(channels) != 1:
        raise UserInputError(f"{cfg.data or cfg.images}: images have different channel counts {sorted(channels)}")
    return cfg, train_items, val_items, channels.pop(), checksum(paths)


def with_weight_map_decided(cfg: TrainConfig, pairs: list[tuple]) -> TrainConfig:
    """``cfg`` with ``--w0 auto`` and ``--class-balance auto`` decided for these `read_pairs` tuples
    (`automatic_weight_map`)."""
    if "auto" not in (cfg.w0, cfg.class_balance) or not cfg.weight_map:
        return cfg
    w0, balance = automatic_weight_map(pairs, cfg.classes, cfg.ignore_label)
    cfg = dataclasses.replace(cfg, w0=w0 if cfg.w0 == "auto" else cfg.w0,
                              class_balance=balance if cfg.class_balance == "auto" else cfg.class_balance)
    log.info("weight map: w0 = %g, class balancing %s (auto: decided by the kind of labels)", cfg.w0,
             "on" if cfg.class_balance else "off")
    return cfg


def _loss_text(cfg: TrainConfig, cell_target: str) -> str:
    """The loss as the log names it."""
    if cell_target != "flows":
        return cfg.loss
    if cfg.small_cell_weight > 1.0:
        return f"flows + cell cross entropy (cells under their image's median up to {cfg.small_cell_weight:g}x)"
    return "flows + cell cross entropy"


def prepared(cfg: TrainConfig, pairs: list[tuple]) -> list[LabelledImage]:
    """`read_pairs` tuples -> `LabelledImage` items as ``cfg`` (its weight map and cell settings
    decided) wants them."""
    # cfg.classes stays None unless given, so that labels with many values read as instance ids.
    spacing = (cfg.voxel_size or (1.0, 1.0, 1.0)) if cfg.dims == 3 else None  # physical distances in volumes
    targets = Targets(n_classes=cfg.classes, normalization=Normalization.from_dict(cfg.normalization),
                      weight_map=cfg.weight_map, w0=cfg.w0, sigma=cfg.sigma, class_balance=cfg.class_balance,
                      cell_target=cfg.cell_target, spacing=spacing, ignore_label=cfg.ignore_label,
                      net_diameter=cfg.net_diameter, small_cell_weight=cfg.small_cell_weight)
    return prepare(pairs, targets)


def net_cell_diameter(cfg: TrainConfig, ids: list[np.ndarray], start: dict | None = None) -> float | str:
    """``--cell-diameter`` decided (cell_size.py): the px that each image's median cell is rescaled
    to, or "off" (volumes, and labels without instance ids). ``ids``: the training labels that hold
    instance ids (`instance_labels`); ``cfg.cell_target`` is decided (`cell_target_of`). "median":
    the median over the training images of their median cell's diameter. "auto": the diameter of
    ``start`` (the ``--init`` checkpoint) where it has one (fine-tuning keeps the scale it learnt);
    else off for flows (they part small and large nuclei at their own size, and rescaling cost
    large nuclei 0.14 AP@0.5: docs/results.md) and the median for the other targets."""
    if cfg.cell_diameter == "off" or cfg.dims == 3:
        return "off"
    if not ids:
        if cfg.cell_diameter not in ("auto", "median"):
            log.warning("--cell-diameter applies to instance-id labels only; these labels are masks or classes")
        return "off"
    if cfg.cell_diameter == "auto" and start is not None:
        stored = start.get("metadata", {}).get("cell_diameter")
        if stored:
            log.info("cells reach the net %.1f px across, as they did for --init %s", stored, cfg.init)
            return float(stored)
    if cfg.cell_diameter == "auto" and cfg.cell_target == "flows":
        log.info("cells: images at their own size (flows; --cell-diameter median rescales them)")
        return "off"
    measured = [d for d in map(median_diameter, ids) if d is not None]
    if cfg.cell_diameter not in ("auto", "median"):
        diameter = float(cfg.cell_diameter)
    elif measured:
        diameter = float(np.median(measured))
    else:
        return "off"
    if measured:
        factors = [scale_factor(d, diameter) for d in measured]
        log.info("cells: median diameter %.1f px (images from %.1f to %.1f); each image is rescaled so that its "
                 "median cell is %.1f px across (x%.2f to x%.2f; --cell-diameter)", np.median(measured),
                 min(measured), max(measured), diameter, min(factors), max(factors))
    return diameter


def estimate_input_shift(cfg: TrainConfig, train_items) -> tuple[float, float]:
    """The (dy, dx) px shift that puts the images on their labels' grid (``--label-offset``)."""
    setting = parse_label_offset(cfg.label_offset)
    if setting == "none":
        return 0.0, 0.0
    if setting != "auto":
        return setting
    dy, dx = estimate_label_offset([it.image for it in train_items], [it.classes > 0 for it in train_items])
    if max(abs(dy), abs(dx)) > MAX_OFFSET:
        log.warning("the labels seem %+.2f, %+.2f px (y, x) off the images: more than an annotation offset, so not "
                    "corrected; check that images and labels match, or set --label-offset", dy, dx)
        return 0.0, 0.0
    if max(abs(dy), abs(dx)) < MIN_OFFSET:
        return 0.0, 0.0
    log.info("the labels sit %+.2f, %+.2f px (y, x) off the images: images are resampled onto the labels' grid, "
             "here and by predict (--label-offset none: keep them)", dy, dx)
    return dy, dx

