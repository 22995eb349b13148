"""Training: a plain loop over random tiles, validation on whole images, a run folder.

The run folder holds ``config.json`` (every setting, the package version, the data's
checksum), ``last.pt`` (model + optimiser + RNG + position: ``--resume`` continues
exactly), ``best.pt`` (by ``select_by`` on the validation images), ``metrics.csv``,
``curves.png`` and TensorBoard events (``tb/``).

Validation predicts each whole validation image exactly as ``unet predict`` does
(overlap-tile, mirror extension), sweeps the decision threshold, and keeps the best
threshold with the model: the border weight map and class balancing move it away from
0.5, and ``unet predict`` writes probabilities calibrated so that 0.5 is this threshold.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import __version__, distributed, symmetries
from ..device import autocast, choose_precision, resolve_device
from ..errors import Interrupted, UserInputError
from ..evaluation import metrics
from ..inference.tiling import predict_tiled
from ..nn.checkpoint import load_payload, model_payload, save_model, save_payload
from ..nn.model import UNet, UNetConfig, init_he
from ..normalization import Normalization
from ..registration import MAX_OFFSET, MIN_OFFSET, estimate_label_offset, parse_label_offset, shift_image
from .augment import Augmentation
from .data import EpochSampler, TileDataset, checksum, label_kind, prepare, read_pairs, split
from .losses import LOSSES, segmentation_loss
from .presets import preset
from .weights import background_skeleton

log = logging.getLogger(__name__)

SELECT_BY = ("score", "loss", "pixel_error", "adapted_rand_error", "rand_error", "v_rand", "dice")
_MAXIMISE = {"v_rand", "dice"}
THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100))


@dataclass
class TrainConfig:
    """Every setting of a run. ``None`` means "from the preset"; see presets.py."""

    out: str = "runs/unet"  # run folder
    data: str | None = None  # folder with images/ and labels/
    images: str | None = None  # or: images (file/stack/folder) ...
    labels: str | None = None  # ... and labels
    val: str | None = None  # a separate validation folder (images/, labels/)
    val_fraction: float = 0.2  # else: the last slices validate
    preset: str = "fast"
    classes: int | None = None  # class count for integer class-id labels (>2); None: a mask or instance ids
    in_channels: int | None = None  # image channels (default: as the data)
    width: int | None = None
    depth: int = 4
    padding: str | None = None  # valid (the paper) or same
    up_mode: str = "transpose"
    dropout: float | None = None
    tile_size: int | None = None  # network input px (a valid size; rounded to one)
    batch_size: int | None = None
    epochs: int | None = None
    samples_per_epoch: int | None = None  # tiles per epoch (0: one per training image)
    centre_crop: bool | None = None  # the seed's fixed centre crops instead of random tiles
    loss: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None  # SGD momentum (paper: 0.99)
    weight_decay: float = 0.0
    ema: float | None = None  # decay of an exponential moving average of the weights (0: off)
    elastic: bool | None = None
    elastic_sigma: float = 10.0  # std of the elastic displacements on the 3 x 3 grid, px (paper: 10)
    flips: str | None = None  # flips/rotations to augment with and average over: dihedral, horizontal, none
    label_offset: str | None = None  # auto | none | "DY,DX" px: resample images onto the labels' grid
    grey: bool | None = None
    soft_labels: bool | None = None  # binary labels: elastic warps give foreground fractions, not a staircase
    weight_map: bool | None = None  # the paper's border weight map in the loss
    w0: float | str | None = None  # the weight map's border weight (paper: 10); "auto": `automatic_weight_map`
    sigma: float | None = None  # and its width, px (paper: 5)
    class_balance: bool | str | None = None  # w_c: classes weighted by inverse frequency; or "auto", as w0
    skeleton_recall: float | None = None  # weight of the skeleton recall term (losses.py; 0: off)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str | None = None
    workers: int | None = None
    seed: int = 0
    time_limit: float | None = None  # seconds for the whole run, calibration included
    # best.pt by the validation loss: smooth, so it follows the schedule to its end. Selecting
    # by pixel + adapted Rand error ("score") picked epochs 17-28 of 29, the Rand error's
    # jumps outweighing the pixel error's drift, and cost up to 0.002 of pixel error on ISBI.
    select_by: str = "loss"
    calibrate_tta: bool = True  # choose the final threshold on TTA predictions, as predict --tta
    skip_nonfinite: bool = False  # skip steps whose loss is NaN/inf instead of stopping
    batch_norm: bool = True  # BatchNorm after each convolution
    dist_timeout: float = 300.0  # seconds a collective call waits for the other processes
    normalization: dict = field(default_factory=lambda: Normalization().to_dict())

    def resolved(self) -> "TrainConfig":
        """Fill ``None`` fields from the preset and check every value."""
        values = preset(self.preset)
        base = dict(momentum=0.9, centre_crop=False, workers=None, ema=0.0, class_balance=True, w0=10.0, sigma=5.0,
                    skeleton_recall=0.0, label_offset="none", soft_labels=False)
        out = dataclasses.replace(self)
        for name, value in {**base, **values}.items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        if out.loss not in LOSSES:
            raise UserInputError(f"--loss {out.loss}: choose one of {', '.join(LOSSES)}")
        if out.optimizer not in ("sgd", "adam", "adamw"):
            raise UserInputError(f"--optimizer {out.optimizer}: choose sgd, adam or adamw")
        if out.select_by not in SELECT_BY:
            raise UserInputError(f"--select-by {out.select_by}: choose one of {', '.join(SELECT_BY)}")
        if out.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserInputError(f"--precision {out.precision}: choose auto, fp32, bf16 or fp16")
        for name in ("batch_size", "epochs", "width"):
            if getattr(out, name) < 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(out, name)}")
        if not 0.0 <= out.ema < 1.0:
            raise UserInputError(f"--ema must be in [0, 1), got {out.ema}")
        symmetries.group(out.flips)
        parse_label_offset(out.label_offset)
        w0_ok = out.w0 == "auto" or (not isinstance(out.w0, str) and 0 <= out.w0 < math.inf)
        if out.weight_map and not (w0_ok and 0 < out.sigma < math.inf):
            raise UserInputError(
                f"the weight map needs --w0 >= 0 (or auto) and --sigma > 0, got {out.w0} and {out.sigma}")
        if out.class_balance not in (True, False, "auto"):
            raise UserInputError(f"class balancing must be on, off or auto, got {out.class_balance!r}")
        if not 0 <= out.skeleton_recall < math.inf:
            raise UserInputError(f"--skeleton-recall must be >= 0, got {out.skeleton_recall}")
        if out.elastic_sigma <= 0:
            raise UserInputError(f"--elastic-sigma must be > 0, got {out.elastic_sigma}")
        if out.classes is not None and out.classes < 2:
            raise UserInputError(f"--classes must be >= 2, got {out.classes}")
        return out


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1.5h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise UserInputError(f"--time-limit {text}: use e.g. 900, 15m or 1.5h") from None


def learning_rate(base: float, progress: float) -> float:
    """Cosine decay from ``base`` to 0 over progress 0 -> 1, after a 2% linear warm-up."""
    progress = min(max(progress, 0.0), 1.0)
    warm = min(1.0, progress / 0.02) if progress < 0.02 else 1.0
    return base * warm * 0.5 * (1 + math.cos(math.pi * progress))


class _StopRequest:
    """SIGINT/SIGTERM set a flag: the current step finishes, last.pt is written, then exit."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (press Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
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


def automatic_weight_map(pairs: list[tuple], n_classes: int | None) -> tuple[float, bool]:
    """``--w0 auto`` and ``--class-balance auto`` (the ``fast`` defaults): (w0, class balancing)
    for these training pairs.

    Instance ids: the paper's w0 = 10 with balanced classes. There the border term keeps
    touching cells apart, as on the paper's cell data (on synthetic touching nuclei, 3
    instead of 10 raised the cells' adapted Rand error from 0.19 to 0.29-0.49,
    benchmarks/touching_cells.py). Masks and membrane maps: w0 = 5 without class balancing.
    Balancing weights every membrane pixel of ISBI 2012 3.5x a cell pixel, thick membranes
    too, and the decision threshold then has to undo that; the border term alone weights
    the thin gaps between cells, which is where balancing kept cells apart. On ISBI 2012
    this lowered the pixel error and the adapted Rand error (README, "Measured here").
    ``pairs``: `read_pairs` tuples.
    """
    kinds = [label_kind(label, n_classes, str(label_path)) for _, _, label, _, label_path in pairs]
    return (10.0, True) if "instances" in kinds else (5.0, False)


def _load_data(cfg: TrainConfig):
    """-> (cfg with ``w0`` decided, train items, val items, channels, data checksum)."""
    norm = Normalization.from_dict(cfg.normalization)
    pairs = read_pairs(cfg.data, cfg.images, cfg.labels)
    train_pairs, val_pairs = (pairs, read_pairs(cfg.val)) if cfg.val else split(pairs, cfg.val_fraction)
    if "auto" in (cfg.w0, cfg.class_balance) and cfg.weight_map:
        w0, balance = automatic_weight_map(train_pairs, cfg.classes)
        cfg = dataclasses.replace(cfg, w0=w0 if cfg.w0 == "auto" else cfg.w0,
                                  class_balance=balance if cfg.class_balance == "auto" else cfg.class_balance)
        log.info("weight map: w0 = %g, class balancing %s (auto: decided by the kind of labels)", cfg.w0,
                 "on" if cfg.class_balance else "off")
    # cfg.classes stays None unless given, so that labels with many values read as instance ids.
    train_items, val_items = (prepare(p, cfg.classes, norm, cfg.weight_map, cfg.w0, cfg.sigma, cfg.class_balance)
                              for p in (train_pairs, val_pairs))
    paths = sorted({p for *_, ip, lp in train_pairs + val_pairs for p in (ip, lp)})
    channels = {it.image.shape[0] for it in train_items + val_items}
    if len(channels) != 1:
        raise UserInputError(f"{cfg.data or cfg.images}: images have different channel counts {sorted(channels)}")
    return cfg, train_items, val_items, channels.pop(), checksum(paths)


@dataclass
class Validation:
    loss: float
    threshold: float
    pixel_error: float
    adapted_rand_error: float
    rand_error: float
    v_rand: float
    dice: float

    @property
    def score(self) -> float:
        return self.pixel_error + self.adapted_rand_error

    def value(self, name: str) -> float:
        return self.score if name == "score" else getattr(self, name)


def _input_shift(cfg: TrainConfig, train_items) -> tuple[float, float]:
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


def validation_maps(model: UNet, items, cfg: TrainConfig, precision: str, tta: bool = False,
                    input_shift: tuple[float, float] = (0.0, 0.0)) -> list[tuple]:
    """Predict whole validation images as `unet predict` does -> [(name, foreground map, truth, loss)]."""
    out = []
    for it in items:
        p = predict_tiled(model, it.image, batch_size=cfg.batch_size, tta=tta, flips=cfg.flips, precision=precision,
                          channels_last=precision != "fp32", input_shift=input_shift)
        if not np.isfinite(p).all():
            raise UserInputError("the predictions became non-finite (the weights diverged); the last good state is "
                                 "last.pt in the run folder: lower --lr")
        prob = torch.from_numpy(p)
        logits = torch.logit(prob.clamp(1e-6, 1 - 1e-6)) if p.shape[0] == 1 else torch.log(prob.clamp_min(1e-8))
        skeleton = torch.from_numpy(background_skeleton(it.classes)[None].astype(np.float32)) \
            if cfg.skeleton_recall > 0 else None  # the training loss, term for term
        loss = float(segmentation_loss(logits[None], torch.from_numpy(it.classes)[None],
                                       torch.from_numpy(it.weight)[None], cfg.loss, skeleton, cfg.skeleton_recall))
        foreground = p[0] if p.shape[0] == 1 else 1.0 - p[0]  # foreground = not class 0
        out.append((it.name, foreground, it.classes > 0, loss))
    return out


def best_threshold(probs: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """The decision threshold (0.01 steps) with the least mean pixel error over the images.

    Chosen by pixel error alone, not pixel + Rand error: the Rand error jumps when one
    pixel opens or closes a gap between two cells, so a threshold chosen on it fits that
    noise. Measured on ISBI 2012 (choose on 4 validation slices, score the 5th, 7 runs):
    choosing by pixel error gave a lower held-out pixel error in every run (by up to 0.004)
    and a lower held-out adapted Rand error in 5 of 7.

    ``probs``: (H, W) foreground probabilities; ``truths``: (H, W) bool, same shapes.
    """
    edges = np.asarray(THRESHOLDS)
    errors = np.zeros(len(edges))
    for p, g in zip(probs, truths):
        # Wrong at t: background pixels with p > t, foreground pixels with p <= t.
        bg, fg = np.sort(p[~g]), np.sort(p[g])
        wrong = bg.size - np.searchsorted(bg, edges, side="right") + np.searchsorted(fg, edges, side="right")
        errors += wrong / p.size
    return THRESHOLDS[int(np.argmin(errors))]


def score_validation(maps: list[tuple]) -> Validation:
    """Choose the decision threshold (`best_threshold`) and score the maps at it."""
    probs, truths = [m[1] for m in maps], [m[2] for m in maps]
    best_t = best_threshold(probs, truths)
    return Validation(
        loss=float(np.mean([m[3] for m in maps])),
        threshold=float(best_t),
        pixel_error=float(np.mean([metrics.pixel_error(p, g, best_t) for p, g in zip(probs, truths)])),
        adapted_rand_error=float(np.mean([metrics.adapted_rand_error(p, g, best_t) for p, g in zip(probs, truths)])),
        rand_error=metrics.rand_error(probs, truths, thresholds=[best_t]).value,
        v_rand=metrics.v_rand(probs, truths, thresholds=[best_t]).value,
        dice=float(np.mean([metrics.dice(p, g, best_t) for p, g in zip(probs, truths)])),
    )


def validate(model: UNet, items, cfg: TrainConfig, precision: str, tta: bool = False,
             ctx: distributed.Context = distributed.Context(),
             input_shift: tuple[float, float] = (0.0, 0.0)) -> Validation:
    """Validation on whole images; with several processes each predicts its share and the
    maps are gathered, so every rank scores the same full set."""
    mine = validation_maps(model, items[ctx.rank :: ctx.world], cfg, precision, tta, input_shift)
    shares = ctx.gather(mine)
    order = {it.name: i for i, it in enumerate(items)}
    maps = sorted((m for share in shares for m in share), key=lambda m: order[m[0]])
    return score_validation(maps)


CURVES_EVERY = 30.0  # seconds between redraws of curves.png while training; always drawn at the end
CSV_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_pixel_error", "val_dice", "val_adapted_rand_error",
              "val_rand_error", "val_v_rand", "val_threshold", "lr", "seconds"]


def resume_config(cfg: TrainConfig, run: Path) -> TrainConfig:
    """The saved run's settings; only epochs, time limit, device and workers may change."""
    try:
        saved = json.loads((run / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError) as e:
        raise UserInputError(f"{run / 'config.json'}: cannot resume from this run folder ({e})") from e
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k in ("epochs", "time_limit", "device", "workers") and v is not None}
    resumed = dataclasses.replace(TrainConfig(**{k: v for k, v in saved.items() if k in known}), **overrides)
    resumed.out = str(run)  # the run stays where it is, whatever its config says
    return resumed


def train(cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False,
          stop_after_steps: int | None = None) -> Path:
    """Train and return the run folder. ``resume``: a run folder to continue exactly.

    Under torchrun (WORLD_SIZE > 1) each process trains its share of every batch with
    DistributedDataParallel. ``stop_after_steps`` stops (as a signal would) after that
    many optimiser steps in this call: for tests of exact resumption.
    """
    t_start = time.monotonic()
    state = None
    if resume is not None:
        run = Path(resume)
        state = load_payload(run / "last.pt")
        cfg = resume_config(cfg, run)
    cfg = cfg.resolved()
    run = Path(cfg.out)
    if state is None and run.exists() and any(run.iterdir()) and not overwrite:
        raise UserInputError(f"{run}: the run folder exists and is not empty (use --resume {run}, or --overwrite)")
    ctx, device = distributed.init(resolve_device(cfg.device), cfg.dist_timeout)
    try:
        return _train(cfg, run, state, ctx, device, t_start, stop_after_steps)
    except RuntimeError as e:
        if ctx.active and ("gloo" in str(e).lower() or "nccl" in str(e).lower() or "connection" in str(e).lower()
                           or isinstance(e, getattr(torch.distributed, "DistError", ()))):
            raise UserInputError(f"a process of the distributed job failed ({str(e).splitlines()[0]}); "
                                 f"resume with --resume {run}") from e
        raise
    finally:
        distributed.finish()


def _train(cfg: TrainConfig, run: Path, state: dict | None, ctx: distributed.Context, device: torch.device,
           t_start: float, stop_after_steps: int | None) -> Path:
    precision = choose_precision(cfg.precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise UserInputError("--precision fp16 needs CUDA; use bf16 or fp32 on a CPU")
    torch.manual_seed(cfg.seed)

    cfg, train_items, val_items, channels, data_sha = _load_data(cfg)
    input_shift = _input_shift(cfg, train_items)
    if input_shift != (0.0, 0.0):
        # Training tiles come from resampled images; validation resamples per tile, as predict does.
        train_items = [dataclasses.replace(it, image=shift_image(it.image, input_shift)) for it in train_items]
    model_cfg = UNetConfig(
        in_channels=channels, out_channels=1 if (cfg.classes or 2) == 2 else cfg.classes, depth=cfg.depth,
        width=cfg.width, padding=cfg.padding, up_mode=cfg.up_mode, dropout=cfg.dropout, batch_norm=cfg.batch_norm,
    )
    raw = init_he(UNet(config=model_cfg))
    tile = raw.valid_input_size(cfg.tile_size)
    out_size = raw.output_size(tile)  # = tile with same padding
    if tile != cfg.tile_size:
        log.info("tile size %d -> %d (nearest size with exact poolings)", cfg.tile_size, tile)
    raw.to(device)
    channels_last = precision in ("bf16", "fp16")
    if channels_last:
        raw.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(cfg, raw)
    ema = weight_average(raw, cfg.ema) if cfg.ema > 0 else None
    averaged = ema.module if ema is not None else raw  # the weights that are validated and saved
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    aug = Augmentation(elastic=cfg.elastic, elastic_sigma=cfg.elastic_sigma, flips=cfg.flips, grey=cfg.grey,
                       soft_labels=cfg.soft_labels and model_cfg.out_channels == 1)
    dataset = TileDataset(train_items, tile, out_size, aug, cfg.seed, centre_crop=cfg.centre_crop,
                          skeleton=cfg.skeleton_recall > 0)
    per_epoch = cfg.samples_per_epoch or len(train_items)
    steps_per_epoch = math.ceil(per_epoch / (cfg.batch_size * ctx.world))
    total_steps = steps_per_epoch * cfg.epochs
    sampler = EpochSampler(per_epoch, ctx.rank, ctx.world)
    cpus = os.cpu_count() or 1
    workers = cfg.workers if cfg.workers is not None else (1 if cpus <= 2 else min(4, cpus // ctx.world - 1))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                        # Its own generator, so that creating an iterator never draws from the
                        # global RNG that dropout uses (exact resume mid-epoch).
                        generator=torch.Generator().manual_seed(cfg.seed))

    epoch, step, elapsed_before, best_value, best_threshold = 0, 0, 0.0, None, 0.5
    if state is not None:
        tr = state["training"]
        raw.load_state_dict(tr.get("weights", state["state_dict"]))
        if ema is not None:
            ema.load_state_dict(tr["ema"])
        optimizer.load_state_dict(tr["optimizer"])
        scaler.load_state_dict(tr["scaler"])
        torch.set_rng_state(tr["torch_rng"])
        epoch, step, elapsed_before, best_value = tr["epoch"], tr["step"], tr["elapsed"], tr["best_value"]
        best_threshold = state["metadata"].get("threshold", 0.5)
        log.info("resuming %s at epoch %d, step %d", run, epoch, step)
    elif ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.csv", "best.pt", "last.pt"):
            (run / stale).unlink(missing_ok=True)
        (run / "config.json").write_text(json.dumps(
            {"train": dataclasses.asdict(cfg), "model": model_cfg.to_dict(), "tile_size": tile, "output_size": out_size,
             "precision": precision, "device": str(device), "processes": ctx.world, "version": __version__,
             "data_sha256": data_sha, "input_shift": list(input_shift), "train_images": [it.name for it in train_items],
             "val_images": [it.name for it in val_items]}, indent=2))
    model = distributed.wrap(raw, ctx, device)

    writer = None
    if ctx.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
    meta = dict(normalization=cfg.normalization, tile_size=tile, preset=cfg.preset, version=__version__,
                flips=cfg.flips,  # predict --tta averages over the flips the net was trained with
                input_shift=list(input_shift))  # and resamples its input as training did
    val_seconds = None
    log.info("training %s: %d train / %d val images, tile %d -> %d, batch %d x %d process(es), %s, %s on %s",
             cfg.preset, len(train_items), len(val_items), tile, out_size, cfg.batch_size, ctx.world, cfg.loss,
             precision, device)

    def time_left() -> float:
        if cfg.time_limit is None:
            return math.inf
        return cfg.time_limit - (elapsed_before + time.monotonic() - t_start)

    def reserve() -> float:
        """Seconds to keep for the last validation and the TTA threshold calibration."""
        if val_seconds is None:
            return 0.0
        return val_seconds * (1 + (8 if cfg.calibrate_tta else 0)) + 5

    def save_last(epoch_: int, step_: int) -> None:
        if not ctx.is_main:
            return
        payload = model_payload(averaged, **meta, threshold=best_threshold)
        payload["training"] = dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                                   torch_rng=torch.get_rng_state(), epoch=epoch_, step=step_,
                                   elapsed=elapsed_before + time.monotonic() - t_start, best_value=best_value)
        if ema is not None:  # last.pt predicts with the average; training continues from both
            payload["training"].update(weights=raw.state_dict(), ema=ema.state_dict())
        save_payload(payload, run / "last.pt")

    stopped = None
    steps_this_call = 0
    last_plot = -math.inf
    with _StopRequest() as stop:
        while epoch < cfg.epochs and stopped is None:
            skip = step - epoch * steps_per_epoch  # steps of this epoch already done (resume mid-epoch)
            sampler.set_epoch(epoch)
            model.train()
            t_epoch, losses, lr = time.monotonic(), [], cfg.lr
            bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       unit="step", disable=None if ctx.is_main else True)
            for i, (x, y, w, *extra) in enumerate(loader):
                if i < skip:
                    continue
                x = x.to(device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y, w = y.to(device, non_blocking=True), w.to(device, non_blocking=True)
                skeleton = extra[0].to(device, non_blocking=True) if extra else None  # with --skeleton-recall
                progress = step / total_steps
                if cfg.time_limit is not None:
                    progress = max(progress, (cfg.time_limit - time_left()) / max(cfg.time_limit - reserve(), 1.0))
                lr = learning_rate(cfg.lr, progress)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                with autocast(device, precision):
                    logits = model(x)
                loss = segmentation_loss(logits, y, w, cfg.loss, skeleton, cfg.skeleton_recall)
                if ctx.any(not bool(torch.isfinite(loss))):
                    if cfg.skip_nonfinite:
                        log.warning("skipping step %d: the loss is not finite", step)
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    raise UserInputError(
                        f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}); the last good state is "
                        f"{run / 'last.pt'}: lower --lr, or skip such steps with --skip-nonfinite")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(raw)
                step += 1
                steps_this_call += 1
                losses.append(ctx.mean(loss.item()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                want_stop = stop.requested or (stop_after_steps is not None and steps_this_call >= stop_after_steps)
                out_of_time = time_left() <= reserve()
                if ctx.any(want_stop):
                    stopped = "signal"
                    break
                if ctx.any(out_of_time):
                    stopped = "time"
                    break
            bar.close()
            if stopped == "signal":
                save_last(epoch, step)
                break
            if stopped is None:
                epoch += 1
            if not all(torch.isfinite(t).all() for t in raw.state_dict().values() if t.is_floating_point()):
                raise UserInputError(f"the weights became non-finite in epoch {epoch}; the last good state is "
                                     f"{run / 'last.pt'}: lower --lr")
            t_val = time.monotonic()
            v = validate(averaged, val_items, cfg, precision, ctx=ctx, input_shift=input_shift)
            val_seconds = time.monotonic() - t_val
            value = v.value(cfg.select_by)
            improved = best_value is None or (value > best_value if cfg.select_by in _MAXIMISE else value < best_value)
            if improved:
                best_value, best_threshold = value, v.threshold
                if ctx.is_main:
                    save_model(averaged, run / "best.pt", **meta, threshold=v.threshold, val=dataclasses.asdict(v),
                               epoch=epoch)
            save_last(epoch, step)
            row = dict(epoch=epoch, step=step, train_loss=float(np.mean(losses)) if losses else math.nan,
                       val_loss=v.loss, val_pixel_error=v.pixel_error, val_dice=v.dice,
                       val_adapted_rand_error=v.adapted_rand_error, val_rand_error=v.rand_error, val_v_rand=v.v_rand,
                       val_threshold=v.threshold, lr=lr, seconds=round(time.monotonic() - t_epoch, 2))
            if ctx.is_main:
                _log_epoch(run, writer, row, improved)
                # A redraw costs ~0.5 s (~2% of a 15-minute ISBI run if drawn every epoch).
                if time.monotonic() - last_plot >= CURVES_EVERY:
                    plot_curves(run / "metrics.csv", run / "curves.png")
                    last_plot = time.monotonic()
    if writer is not None:
        writer.close()
    if ctx.is_main and (run / "metrics.csv").exists():
        plot_curves(run / "metrics.csv", run / "curves.png")
    if stopped == "signal":
        raise Interrupted(f"stopped at step {step}; resume with --resume {run}")
    if cfg.calibrate_tta and ctx.is_main and (run / "best.pt").exists():
        _calibrate_best(run, val_items, cfg, precision, device, input_shift)
    log.info("done in %.0f s: %s", elapsed_before + time.monotonic() - t_start, run / "best.pt")
    return run


def _log_epoch(run: Path, writer, row: dict, improved: bool) -> None:
    """metrics.csv, TensorBoard, one readable line."""
    _append_csv(run / "metrics.csv", row)
    for k, val in row.items():
        if k not in ("epoch", "step"):
            writer.add_scalar(k, val, row["step"])
    log.info("epoch %3d  step %5d  loss %.4f  val loss %.4f  pixel err %.4f  adapted rand %.4f  dice %.4f  "
             "t=%.2f  %.0fs%s", row["epoch"], row["step"], row["train_loss"], row["val_loss"], row["val_pixel_error"],
             row["val_adapted_rand_error"], row["val_dice"], row["val_threshold"], row["seconds"],
             "  *" if improved else "")


def _calibrate_best(run: Path, val_items, cfg: TrainConfig, precision: str, device: torch.device,
                    input_shift: tuple[float, float]) -> None:
    """Choose best.pt's threshold on TTA predictions, as `unet predict --tta` will make them."""
    from ..nn.checkpoint import load_model

    model, meta = load_model(run / "best.pt", device)
    if precision != "fp32":
        model.to(memory_format=torch.channels_last)
    v = validate(model, val_items, cfg, precision, tta=True, input_shift=input_shift)
    meta.update(threshold=v.threshold, val_tta=dataclasses.asdict(v))
    save_model(model, run / "best.pt", **meta)
    log.info("best.pt with TTA: threshold %.2f  pixel err %.4f  adapted rand %.4f  rand %.4f  v_rand %.4f",
             v.threshold, v.pixel_error, v.adapted_rand_error, v.rand_error, v.v_rand)


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Loss and validation metrics per epoch, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    col = {k: [float(r[k]) for r in rows] for k in CSV_FIELDS}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(col["epoch"], col["train_loss"], label="train loss")
    a.plot(col["epoch"], col["val_loss"], label="val loss")
    a.set_xlabel("epoch")
    a.set_yscale("log")
    a.legend()
    a.set_title("loss")
    for k in ("val_pixel_error", "val_adapted_rand_error", "val_rand_error"):
        b.plot(col["epoch"], col[k], label=k[4:])
    b.plot(col["epoch"], [1 - d for d in col["val_dice"]], label="1 - dice")
    b.set_xlabel("epoch")
    b.set_yscale("log")
    b.legend()
    b.set_title("validation errors (at the best threshold)")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
