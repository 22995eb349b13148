"""Validation on whole images, predicted exactly as `unetile predict` does, and the decision
threshold chosen on them (stored in the checkpoint; `unetile predict` calibrates its maps to it).

Volumes are validated whole (3D tiles, `predict_tiled`); their Rand figures are computed on 3D
objects. Sparse labels (``--ignore-label``): the threshold, pixel error and Dice see only the
annotated pixels; the loss gives the others weight 0, and the Rand figures, restricted to the
truth's foreground, never count them (they are background in the truth)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import distributed
from ..cell_size import resize_image
from ..device import uses_channels_last
from ..errors import UserInputError
from ..evaluation import metrics
from ..evaluation.metrics.common import prediction_labels, truth_labels
from ..evaluation.metrics.pixel import fiji_prf
from ..evaluation.metrics.rand import foreground_restricted_rand
from ..inference.instances import DEFAULT_METHOD, VOLUME_GRID, InstanceSettings, choose_settings
from ..inference.predictor import calibrate_map
from ..inference.tiling import predict_tiled
from ..nn.checkpoint import load_model, save_model
from ..nn.model import FLOW_SCALE, UNet
from .config import TrainConfig
from .data import LabelledImage
from .losses import segmentation_loss
from .weights import background_skeleton

log = logging.getLogger(__name__)

THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(1, 100))


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


class ValidationMap(NamedTuple):
    """One validation image (or volume) as predicted (`validation_maps`)."""

    name: str
    foreground: np.ndarray  # (H, W) / (Z, Y, X) float32 foreground probability
    truth: np.ndarray  # bool, the label's foreground (not-annotated pixels: False)
    loss: float  # the training loss on the whole image
    probabilities: np.ndarray | None  # (C_out, H, W) / (C_out, Z, Y, X) as the net gives them
    annotated: np.ndarray | None = None  # bool, the labelled pixels (--ignore-label); None: all


#: Tiles a 3D net's BatchNorm statistics are re-estimated on before each validation, and the
#: first tile index they use: one no epoch draws, so the same tiles every time (exact resume).
REFRESH_TILES = 16
REFRESH_INDEX = 2**40


def refresh_batch_norm(model: torch.nn.Module, dataset, batch_size: int, device: torch.device,
                       tiles: int = REFRESH_TILES) -> None:
    """Re-estimate ``model``'s BatchNorm running statistics on ``tiles`` training tiles for its
    current weights, as `torch.optim.swa_utils.update_bn` does (cumulative averages; dropout off).

    Why, for 3D nets: batches of two small tiles, and the weight average lerping statistics that
    belonged to other weights, left statistics that did not fit a volume. On PlantSeg nuclei
    (docs/results.md) a trained net gave foreground 0.59 vs background 0.41 with its stored
    statistics and 0.78 vs 0.42 with statistics re-estimated on 16 tiles of another volume.
    ``dataset``: the `TileDataset` (item ``i`` -> (image, ...)); ``model``'s mode is restored."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in norms], model.training
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch below
        norm.train()
    with torch.no_grad():
        for start in range(0, tiles, batch_size):
            indices = range(REFRESH_INDEX + start, REFRESH_INDEX + min(start + batch_size, tiles))
            model(torch.stack([dataset[i][0] for i in indices]).to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


def validation_maps(model: UNet, items, cfg: TrainConfig, precision: str, tta: bool = False,
                    input_shift: tuple[float, float] = (0.0, 0.0)) -> list[ValidationMap]:
    """Predict whole validation images as `unetile predict` does -> a `ValidationMap` each."""
    device = next(model.parameters()).device
    out = []
    for it in items:
        p = predict_tiled(model, it.image, batch_size=cfg.batch_size, tta=tta, flips=cfg.flips,
                          precision=precision, input_shift=input_shift,
                          channels_last=uses_channels_last(precision, device, it.classes.ndim))
        if not np.isfinite(p).all():
            raise UserInputError("the predictions became non-finite (the weights diverged); the last good state is "
                                 "last.pt in the run folder: lower --lr")
        skeleton = torch.from_numpy(background_skeleton(it.classes)[None].astype(np.float32)) \
            if cfg.skeleton_recall > 0 else None  # the training loss, term for term
        logits, target = net_outputs(p, it)
        loss = float(segmentation_loss(logits[None], target[None], torch.from_numpy(it.weight)[None], cfg.loss,
                                       skeleton, cfg.skeleton_recall))
        # foreground = not class 0; a flows net's channel 0 is its cell probability
        foreground = p[0] if p.shape[0] == 1 or it.flows is not None else 1.0 - p[0]
        out.append(ValidationMap(it.name, foreground, it.classes > 0, loss, p, it.annotated))
    return out


def net_outputs(p: np.ndarray, item: LabelledImage) -> tuple[torch.Tensor, torch.Tensor]:
    """A validation image's maps (C_out, H, W) as `predict_tiled` gives them -> (the net's outputs
    they come from, the loss's target): logits of probabilities, against class ids; a flows
    net's (`nn.model.output_maps` undone), against the cell and its flows (3, H, W)."""
    prob = torch.from_numpy(p)
    if item.flows is not None:
        logits = torch.cat([torch.logit(prob[:1].clamp(1e-6, 1 - 1e-6)), prob[1:] * FLOW_SCALE])
        return logits, torch.from_numpy(np.concatenate([(item.classes > 0)[None].astype(np.float32), item.flows]))
    logits = torch.logit(prob.clamp(1e-6, 1 - 1e-6)) if p.shape[0] == 1 else torch.log(prob.clamp_min(1e-8))
    return logits, torch.from_numpy(item.classes)


def _labelled(p: np.ndarray, g: np.ndarray, annotated: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(map, truth) at the annotated pixels only, as (1, n) images; as they are without a mask."""
    return (p, g) if annotated is None else (p[annotated][None], g[annotated][None])


def memory_format(dims: int) -> torch.memory_format:
    """Channels-last for images (N, C, H, W) or volumes (N, C, Z, Y, X)."""
    return torch.channels_last_3d if dims == 3 else torch.channels_last


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


def score_validation(maps: list[ValidationMap]) -> Validation:
    """Choose the decision threshold (`best_threshold`) and score the maps at it (pixel error,
    threshold and Dice on the annotated pixels only)."""
    probs, truths = [m.foreground for m in maps], [m.truth for m in maps]
    labelled = [_labelled(m.foreground, m.truth, m.annotated) for m in maps]
    best_t = best_threshold([p for p, _ in labelled], [g for _, g in labelled])
    if probs[0].ndim == 3:  # volumes: 3D objects
        rand_error = volume_rand_error(probs, truths, best_t)
        v_rand = 1.0 - rand_error
    else:
        rand_error = metrics.rand_error(probs, truths, thresholds=[best_t]).value
        v_rand = metrics.v_rand(probs, truths, thresholds=[best_t]).value
    return Validation(
        loss=float(np.mean([m.loss for m in maps])),
        threshold=float(best_t),
        pixel_error=float(np.mean([metrics.pixel_error(p, g, best_t) for p, g in labelled])),
        adapted_rand_error=float(np.mean([metrics.adapted_rand_error(p, g, best_t) for p, g in zip(probs, truths)])),
        rand_error=rand_error,
        v_rand=v_rand,
        dice=float(np.mean([metrics.dice(p, g, best_t) for p, g in labelled])),
    )


def volume_rand_error(probs: list[np.ndarray], truths: list[np.ndarray], threshold: float) -> float:
    """`metrics.rand_error` of volumes (Z, Y, X) at one threshold: 1 - the F-score of the
    foreground-restricted Rand index on face-connected 3D objects, pair counts pooled over the
    volumes (no thinning: ISBI's thinning is of 2D borders; `v_rand` of volumes is 1 - this)."""
    scores = [foreground_restricted_rand(truth_labels(g), prediction_labels(p, threshold))
              for p, g in zip(probs, truths)]
    return 1.0 - fiji_prf(sum(s.tp for s in scores), sum(s.fp for s in scores), sum(s.fn for s in scores))[2]


#: Pixels of validation images scored after each epoch (`epoch_subset`); the final calibration
#: scores them all. ISBI 2012's 5 validation slices (1.3 Mpx) stay whole. The 72 validation
#: images of the DSB 2018 nuclei split (7.4 Mpx) took 17 s after every 33 s of training steps.
EPOCH_VAL_PIXELS = 2_000_000
#: Pixels the final calibration scores under ``--time-limit`` (`calibration_subset`): its 8 TTA
#: predictions of each image and the watershed grid took a quarter of a 15-minute DSB run
#: (7.4 Mpx), minutes the clock gives to training steps instead. Without a limit it scores them all.
#: Volumes count voxels: a timed 3D run with large validation volumes calibrates on fewer of them
#: (at least one), as its per-epoch validation already does.
TIMED_CALIBRATION_PIXELS = 4_000_000


def epoch_subset(items: list, max_pixels: int = EPOCH_VAL_PIXELS, measure: Callable[[list], int] | None = None) -> list:
    """Every k-th item (k as small as keeps the total within ``max_pixels``; all if they fit):
    the images validated after each epoch, spread over the set, the same every epoch.
    ``measure``: items -> their pixels (default `pixels`)."""
    measure = measure or pixels
    stride = 1
    while stride < len(items) and measure(items[::stride]) > max_pixels:
        stride += 1
    return items[::stride]


def calibration_subset(items: list, time_limit: float | None) -> list:
    """The validation images the final calibration scores: all, or under a time limit a spread
    subset of at most `TIMED_CALIBRATION_PIXELS` (`epoch_subset`), each image counted at the net's
    scale or at its own, whichever is larger (its maps are predicted at the one, its cells chosen
    at the other)."""
    return items if time_limit is None else epoch_subset(items, TIMED_CALIBRATION_PIXELS, calibration_pixels)


def calibration_pixels(items: list[LabelledImage]) -> int:
    """Each image's pixels at the net's scale or at its own, whichever is larger, summed."""
    return sum(max(it.classes.size, own_pixels([it])) for it in items)


def pixels(items: list) -> int:
    """The pixels of labelled images (``LabelledImage``)."""
    return sum(it.classes.size for it in items)


def own_pixels(items: list[LabelledImage]) -> int:
    """The pixels of labelled images at their own sizes, where their cells are chosen (`as_predicted`)."""
    return sum(it.classes.size if it.own_instances is None else it.own_instances.size for it in items)


def validate(model: UNet, items, cfg: TrainConfig, precision: str, tta: bool = False,
             ctx: distributed.Context = distributed.Context(),
             input_shift: tuple[float, float] = (0.0, 0.0)) -> Validation:
    """Validation on whole images; with several processes each predicts its share and the
    maps are gathered, so every rank scores the same full set."""
    mine = [m._replace(probabilities=None)  # all the scores need, gathered without the class maps
            for m in validation_maps(model, items[ctx.rank :: ctx.world], cfg, precision, tta, input_shift)]
    shares = ctx.gather(mine)
    order = {it.name: i for i, it in enumerate(items)}
    maps = sorted((m for share in shares for m in share), key=lambda m: order[m.name])
    return score_validation(maps)


def calibrate_checkpoint(checkpoint: Path, val_items: list[LabelledImage], cfg: TrainConfig, precision: str,
                         device: torch.device, input_shift: tuple[float, float], tta: bool,
                         out: Path | None = None, provenance: dict | None = None) -> None:
    """After training: choose the checkpoint's threshold again on ``val_items`` (all validation
    images, or under a time limit `calibration_subset`; with ``tta`` on TTA predictions, as
    `unetile predict --tta` makes them) and, where the labels are instance ids, how `unetile
    predict --instances` cuts cells (`choose_cell_settings`); both are stored in the checkpoint.
    The result is saved to ``out`` (default: over ``checkpoint``). ``provenance``: what the images
    are (`unetile calibrate`): then the scores go under ``calibrated_on`` with it, and the run's own
    validation figures stay as they were."""
    model, meta = load_model(checkpoint, device)
    if uses_channels_last(precision, device, model.config.spatial_dims):
        model.to(memory_format=memory_format(model.config.spatial_dims))
    maps = validation_maps(model, val_items, cfg, precision, tta=tta, input_shift=input_shift)
    v = score_validation(maps)
    # A flows net's maps are written as the net gives them (`predictor.calibrate_map` calibrates
    # one-class maps only): its cells begin at probability 0.5 (Cellpose's cell logit 0).
    meta.update(threshold=0.5 if model.config.flows else v.threshold)
    log.info("%s%s: threshold %.2f  pixel err %.4f  adapted rand %.4f  rand %.4f  v_rand %.4f", out or checkpoint,
             " with TTA" if tta else "", meta["threshold"], v.pixel_error, v.adapted_rand_error, v.rand_error, v.v_rand)
    chosen = choose_cell_settings(model, meta, maps, val_items, v.threshold, cfg.voxel_size)
    if chosen is not None:
        meta.update(instances=chosen[0].to_dict())
    if provenance is not None:
        meta.update(calibrated_on={**provenance, "val_tta" if tta else "val": dataclasses.asdict(v),
                                   "cells_chosen": chosen is not None,
                                   **({"instances_mean_ap": chosen[1]} if chosen else {})})
    else:
        meta.update(**({"val_tta": dataclasses.asdict(v)} if tta else {}),
                    **({"val_instances_mean_ap": chosen[1]} if chosen else {}))
    save_model(model, out or checkpoint, **meta)


def choose_cell_settings(model: UNet, meta: dict, maps: list[ValidationMap], items: list[LabelledImage],
                         threshold: float, voxel_size: list[float] | None) -> tuple[InstanceSettings, float] | None:
    """How `unetile predict --instances` should cut ``model``'s cells, chosen on the validation
    ``maps`` of ``items`` (`instances.choose_settings` over `INSTANCE_GRID`, or `VOLUME_GRID` for
    volumes; a flows net's over min_size and `FLOW_ERROR_GRID`) -> (settings, their mean AP); None
    where there is nothing to choose on: no instance ids, sparse labels only (unlabelled cells would
    count as false ones), or fewer than `MIN_CELLS_TO_CHOOSE` cells where ``meta`` has settings
    already (a model fine-tuned with ``--init`` inherits its start's, `setup.inherited_cell_settings`)."""
    with_ids = [as_predicted(m.probabilities, it, threshold) for m, it in zip(maps, items)
                if it.instances is not None and it.annotated is None
                and (it.net_scale == 1.0 or it.own_instances is not None)]  # sparse labels, rescaled
    if not with_ids:
        return None
    cells = sum(cell_count(ids) for _, ids, _ in with_ids)
    if cells < MIN_CELLS_TO_CHOOSE and "instances" in meta:
        log.warning("cells: %d in these images, fewer than the %d needed to choose how cells are cut; the model "
                    "keeps its settings (%s)", cells, MIN_CELLS_TO_CHOOSE, meta["instances"])
        return None
    predicted, truths, scales = zip(*with_ids)
    base = InstanceSettings.from_metadata(DEFAULT_METHOD, meta)
    # sigma in in-plane px; min_size in px, or voxels for volumes (VOLUME_GRID)
    grid, spacing = (VOLUME_GRID, voxel_size) if model.config.spatial_dims == 3 else (INSTANCE_GRID, None)
    if model.config.flows:  # cells from the flows: the flow-error cut and the smallest cell kept
        grid = {**grid, "sigma": (base.sigma,), "seed_threshold": (base.seed_threshold,),
                "flow_error": FLOW_ERROR_GRID}
    settings, score = choose_settings(predicted, truths, grid, base, spacings=[spacing] * len(predicted),
                                      scales=scales)
    how = f"cells from the flows, flow error up to {settings.flow_error or 'any'}" if model.config.flows else \
        f"cells: seeded watershed with sigma {settings.sigma:g}, seed level {settings.seed_threshold:g}"
    unit = "voxels" if model.config.spatial_dims == 3 else "px" if set(scales) == {1.0} else "px at the net's scale"
    log.info("%s, cells of at least %d %s (mean AP %.4f on %d cells)", how, settings.min_size, unit, score, cells)
    return settings, score


def as_predicted(prob: np.ndarray, item: LabelledImage, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A validation map (C, H, W) as the net gave it -> (the map `unetile predict` cuts cells from,
    the instance ids `unetile evaluate` scores them against, px of that map per net px). An image
    rescaled to the net's cell diameter is brought back to its own size first, as prediction
    brings it back, and scored against its own labels (`LabelledImage.own_instances`). Its scale
    is its label's (`data.at_net_scale`): what `unetile predict --diameter` does with the cells'
    true diameter, where a plain `unetile predict` estimates it."""
    if item.own_instances is None:
        return calibrate_map(prob, threshold), item.instances, 1.0
    own_size = resize_image(prob, item.own_instances.shape)
    return calibrate_map(own_size, threshold), item.own_instances, 1.0 / item.net_scale


#: The seeded watershed's settings tried on the validation images (`instances.choose_settings`).
#: min_size reaches 64 px: on DSB 2018 nuclei the choice sat at the old grid's edge (32) in every run.
INSTANCE_GRID = {"sigma": (0.0, 1.0, 2.0, 3.0), "seed_threshold": (0.6, 0.7, 0.75, 0.8, 0.9),
                 "min_size": (0, 8, 16, 32, 48, 64)}


#: Fewer true cells than this in the calibration images leave a checkpoint's cell settings as they
#: are (where it has some). A judgement, not a measurement: over a few dozen cells each one moves
#: the mean AP by a few hundredths, and the grid offers 120 settings, so the best of them there
#: fits the noise of those few cells.
MIN_CELLS_TO_CHOOSE = 100


def cell_count(ids: np.ndarray) -> int:
    """The cells of an instance-id label (ids > 0)."""
    return int(np.count_nonzero(np.unique(ids)))


#: The flow-error cuts tried for a flows net (Cellpose's fixed ``flow_threshold`` is 0.4). On the
#: DSB split's 72 validation images, a flows net trained 15 minutes found 69% of the cells with 0.4
#: and 82% with 0.8 (mean AP 0.438 -> 0.487; docs/results.md): young flows disagree with their
#: cells' shapes more than Cellpose's trained ones do.
FLOW_ERROR_GRID = (0.4, 0.6, 0.8, 1.0, None)


