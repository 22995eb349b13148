"""MONAI's 3D recipe, trained from scratch on a folder of volumes: run inside MONAI's own venv.

    VENV/bin/python benchmarks/monai_volume_peer.py --train DIR --val DIR --minutes 15 --seed 0 --out DIR

Imports MONAI, PyTorch, tifffile and NumPy only (never unetile): this is what a MONAI user would
write from its 3D segmentation tutorials (spleen / BraTS), with the choices stated:

- net: ``monai.networks.nets.UNet(spatial_dims=3, channels=(16, 32, 64, 128, 256),
  strides=(2, 2, 2, 2), num_res_units=2, norm=BATCH)`` (the tutorials' net), two classes;
- input: each volume z-scored (``NormalizeIntensity``); the voxels used as they come (MONAI's
  UNet has isotropic kernels; resampling to isotropic voxels would be the user's step);
- training: ``RandCropByPosNegLabeld`` 64^3 patches (pos:neg 1:1, 4 per volume), random flips on
  every axis and 90-degree rotations in-plane, ``DiceCELoss(to_onehot_y, softmax)``, Adam 1e-4
  (the tutorials' rate), batch 2, until ``--minutes`` of wall clock;
- validation every 20 steps with ``sliding_window_inference`` (roi 64^3, overlap 0.25, gaussian),
  keeping the weights with the best foreground Dice (as the tutorials keep ``best_metric_model``);
- output: for each validation volume, ``OUT/maps/NAME.tif`` the best weights' foreground
  probability (float32 Z, Y, X) and ``OUT/log.json`` (steps, best Dice, prediction seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.layers import Norm
from monai.networks.nets import UNet
from monai.transforms import (Compose, EnsureChannelFirstd, NormalizeIntensityd, RandCropByPosNegLabeld,
                              RandFlipd, RandRotate90d)
from monai.utils import set_determinism

PATCH = (64, 64, 64)


def read_pairs(folder: Path) -> list[dict]:
    """``images/NAME.tif`` with ``labels/NAME.tif`` -> [{"image": (Z, Y, X) float32, "label": (Z, Y, X) 0/1}]."""
    pairs = []
    for path in sorted((folder / "images").glob("*.tif")):
        image = tifffile.imread(path).astype(np.float32)
        label = (tifffile.imread(folder / "labels" / path.name) > 0).astype(np.float32)
        pairs.append({"name": path.name, "image": image, "label": label})
    return pairs


def training_transforms() -> Compose:
    return Compose([
        EnsureChannelFirstd(keys=("image", "label"), channel_dim="no_channel"),
        NormalizeIntensityd(keys="image"),
        RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=PATCH, pos=1, neg=1,
                               num_samples=4),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=0),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=2),
        RandRotate90d(keys=("image", "label"), prob=0.5, spatial_axes=(1, 2)),
    ])


def foreground(model: UNet, image: np.ndarray) -> np.ndarray:
    """(Z, Y, X) volume -> (Z, Y, X) foreground probability by MONAI's sliding window."""
    x = torch.from_numpy((image - image.mean()) / max(float(image.std()), 1e-8))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, roi_size=PATCH, sw_batch_size=2, predictor=model, overlap=0.25,
                                          mode="gaussian")
    return torch.softmax(logits, 1)[0, 1].numpy()


def dice(prob: np.ndarray, label: np.ndarray) -> float:
    pred = prob > 0.5
    return float(2 * (pred & (label > 0)).sum() / max(pred.sum() + (label > 0).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--val", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    set_determinism(seed=args.seed)
    train, val = read_pairs(args.train), read_pairs(args.val)
    loader = DataLoader(Dataset([{"image": p["image"], "label": p["label"]} for p in train], training_transforms()),
                        batch_size=2, shuffle=True, num_workers=0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                 strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    deadline = time.time() + 60 * args.minutes
    best_dice, best_state, step, history = -1.0, None, 0, []
    while time.time() < deadline:
        for batch in loader:
            model.train()
            optimizer.zero_grad()
            loss = loss_function(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            step += 1
            if step % 20 == 0 or time.time() >= deadline:
                model.eval()
                score = float(np.mean([dice(foreground(model, p["image"]), p["label"]) for p in val]))
                history.append({"step": step, "loss": loss.item(), "val_dice": score})
                print(f"step {step}  loss {loss.item():.4f}  val dice {score:.4f}", flush=True)
                if score > best_dice:
                    best_dice, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
            if time.time() >= deadline:
                break
    model.load_state_dict(best_state)
    model.eval()
    (args.out / "maps").mkdir(parents=True, exist_ok=True)
    started = time.time()
    for p in val:
        tifffile.imwrite(args.out / "maps" / p["name"], foreground(model, p["image"]).astype(np.float32))
    seconds = time.time() - started
    (args.out / "log.json").write_text(json.dumps({"steps": step, "best_val_dice": best_dice,
                                                   "predict_seconds": seconds, "history": history}, indent=1))


if __name__ == "__main__":
    main()
