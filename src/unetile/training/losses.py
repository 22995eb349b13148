"""Losses for (N, C, H, W) logits against (N, H, W) int64 class ids and (N, H, W) weights
(volumes: (N, C, Z, Y, X) against (N, Z, Y, X)).

Every loss ignores pixels of weight 0 (outside the image, mirrored). The plain ones use the
weight only as that mask; ``weighted-ce`` uses it fully (the paper's border weight map).
Any of them can add the skeleton recall term, which keeps thin gaps between cells open.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.model import FLOW_SCALE, probabilities

LOSSES = ("weighted-ce", "ce", "bce", "dice")


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str,
                      skeleton: torch.Tensor | None = None, skeleton_recall: float = 0.0) -> torch.Tensor:
    """Mean over all output pixels, those of weight 0 contributing nothing. One output
    channel means sigmoid / BCE. With ``skeleton`` (N, H, W) and ``skeleton_recall`` > 0,
    plus that weight times `skeleton_recall_loss`.

    The divisor is the pixel count, not the count of weighted pixels, so that the mean over
    a batch split across processes (DDP averages their gradients) equals the mean over the
    whole batch in one process.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
    logits = logits.float()
    if target.ndim == logits.ndim:  # (N, 3, H, W): a flows net's target (--cell-target flows)
        return flow_loss(logits, target, weight)
    mask = (weight > 0).float()
    if kind == "dice":
        loss = _soft_dice_loss(logits, target, mask)
    else:
        w = weight if kind == "weighted-ce" else mask
        if logits.shape[1] == 1:
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), reduction="none")
        else:
            per_pixel = F.cross_entropy(logits, target, reduction="none")
        loss = (per_pixel * w).sum() / per_pixel.numel()
    if skeleton_recall > 0:
        if skeleton is None:
            raise ValueError("skeleton_recall > 0 needs the label's background skeleton")
        probs = probabilities(logits)
        background = 1 - probs[:, 0] if probs.shape[1] == 1 else probs[:, 0]
        loss = loss + skeleton_recall * skeleton_recall_loss(background, skeleton * mask)
    return loss


def flow_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A flows net (flows.py): logits (N, 3, H, W) (cell logit, flows y and x times `FLOW_SCALE`)
    against the target (N, 3, H, W) (cell 0/1, unit flows): binary cross entropy of the cell
    plus the squared error of the flows summed over y and x and divided by 4 (Cellpose 3's loss:
    the mean over both components, halved), both weighted by ``weight`` (0 where not annotated,
    more on small cells: `weights.small_cell_weights`). Divided by the pixel count, as
    `segmentation_loss`."""
    cell = F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0], reduction="none")
    flow_error = ((logits[:, 1:] - FLOW_SCALE * target[:, 1:]) ** 2).sum(dim=1)
    return ((cell * weight).sum() + (flow_error * weight).sum() / 4) / cell.numel()


def skeleton_recall_loss(background: torch.Tensor, skeleton: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - the share of the true background's skeleton that the net calls background.

    Kirchhoff et al., "Skeleton Recall Loss for connectivity conserving and resource
    efficient segmentation of thin tubular structures", ECCV 2024: a cheap stand-in for
    clDice (the skeleton of the truth is computed once, on the CPU, and the prediction's is
    not needed). A gap closed by a few pixels costs little pixel-wise loss but cuts the
    skeleton, so it costs recall. (N, H, W) probability and 0/1 skeleton; the recall is
    per sample, averaged over the batch, so that processes that each average their share
    (DDP) give the mean over the whole batch.
    """
    spatial = tuple(range(1, skeleton.ndim))
    recall = ((skeleton * background).sum(dim=spatial) + smooth) / (skeleton.sum(dim=spatial) + smooth)
    return 1 - recall.mean()


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of the foreground (binary) or mean over classes (multi-class)."""
    probs = probabilities(logits)
    if logits.shape[1] == 1:
        onehot = target[:, None].float()
    else:
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
    m = mask[:, None]
    summed = (0, *range(2, logits.ndim))  # all but the class axis
    inter = (probs * onehot * m).sum(dim=summed)
    total = ((probs + onehot) * m).sum(dim=summed)
    return 1 - ((2 * inter + 1) / (total + 1)).mean()
