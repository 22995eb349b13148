"""Shared fixtures: tiny He-initialised nets and the optional ISBI 2012 data folder."""

from pathlib import Path

import numpy as np
import pytest
import torch

from unet import UNet, init_he

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"


def tiny_unet(seed: int = 0, **kwargs) -> UNet:
    """A small He-initialised U-Net in eval mode (He init makes a misaligned tiling visible)."""
    torch.manual_seed(seed)
    kwargs.setdefault("width", 4)
    return init_he(UNet(**kwargs)).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def isbi() -> Path:
    if not (ISBI / "train" / "images").is_dir():
        pytest.skip("ISBI 2012 data not present at ../shared/data/isbi2012")
    return ISBI
