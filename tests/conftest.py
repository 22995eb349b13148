"""Shared fixtures: tiny He-initialised nets and the optional ISBI 2012 data folder."""

import os
from pathlib import Path

if not os.environ.get("DISPLAY"):  # the napari widgets' tests run headless (xvfb-run: with a display)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch

from unetile import UNet, init_he
from unetile.training import TrainConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012"


def tiny_unet(seed: int = 0, **kwargs) -> UNet:
    """A small He-initialised U-Net in eval mode (He init makes a misaligned tiling visible)."""
    torch.manual_seed(seed)
    kwargs.setdefault("width", 4)
    return init_he(UNet(**kwargs)).eval()


def tiny_train_config(data, out, **kw) -> TrainConfig:
    """A training run of a few seconds on the CPU: width-4, depth-2 net, 76-px tiles, 3 epochs of 2 steps."""
    base = dict(out=str(out), data=str(data), width=4, depth=2, tile_size=76, batch_size=2, samples_per_epoch=4,
                epochs=3, precision="fp32", workers=0, calibrate_tta=False, lr=1e-3, dropout=0.2, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def isbi() -> Path:
    if not (ISBI / "train" / "images").is_dir():
        pytest.skip("ISBI 2012 data not present at ../shared/data/isbi2012")
    return ISBI
