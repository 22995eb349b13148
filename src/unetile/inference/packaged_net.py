"""The network as a model package runs it: normalised image in, calibrated probability out.

`unetile predict` does three things around the U-Net that a consumer of an exported model
(deepImageJ, ilastik, bioimageio.core) would not know to do: it resamples the input by the
labels' sub-pixel offset (``input_shift``, registration.py), turns logits into
probabilities, and calibrates a one-class map so that 0.5 is the stored decision threshold.
`PackagedNet` puts all three inside the network, so the package's output *is* what
`unetile predict` writes (before 8-bit encoding).

The shift: ``registration.shift_image`` is a cubic-spline shift with mirror extrapolation.
Its impulse response decays by |sqrt(3) - 2| = 0.27 per px, so `SHIFT_TAPS` = 12 px either
side reproduce it to ~1e-7 as a fixed separable convolution; with same padding the image is
mirrored by 12 px first (torch's "reflect" is SciPy's "mirror"), with valid padding the
consumer's context is used.

A valid-padding net's output is padded back to its input's size with zeros (`halo` px a
side): bioimageio.core tiles a model by cropping a halo from an output as large as its
input, and cannot tile one whose output is smaller (core 0.11). The halo of a same-padding
net is its tiles' context in `unetile predict` (tiling.py), plus the shift's taps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..nn.model import UNet, UNetConfig, probabilities
from .tiling import same_padding_margin

SHIFT_TAPS = 12  # px either side of the spline-shift kernel


def shift_kernel(offset: float, taps: int = SHIFT_TAPS) -> np.ndarray:
    """(2 taps + 1,) weights w with ``shifted[i] = sum_j w[j] x[i + j - taps]``, the cubic-spline
    shift by ``offset`` px (``out[i] = x[i - offset]``), from SciPy's own impulse response."""
    n = 8 * taps + 1
    weights = np.empty(2 * taps + 1)
    for j in range(2 * taps + 1):  # the response at the centre to a unit impulse at centre + j - taps
        impulse = np.zeros(n)
        impulse[n // 2 + j - taps] = 1.0
        weights[j] = ndimage.shift(impulse, offset, order=3, mode="mirror")[n // 2]
    return weights.astype(np.float32)


class PackagedNet(torch.nn.Module):
    """(N, C, H, W) normalised float32 -> (N, C_out, h, w) probabilities, calibrated where
    C_out is 1. ``config``: the U-Net's (`UNetConfig.to_dict`); ``threshold``: the stored
    decision threshold; ``input_shift``: (dy, dx) px."""

    def __init__(self, config: dict, threshold: float = 0.5, input_shift: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.net = UNet(config=UNetConfig.from_dict(config))
        self.threshold = float(np.clip(threshold, 1e-6, 1 - 1e-6))
        self.valid = self.net.config.padding == "valid"
        self.input_shift = tuple(float(s) for s in input_shift)
        self.shifted = any(s != 0.0 for s in self.input_shift)
        channels = self.net.config.in_channels
        ky, kx = (torch.from_numpy(shift_kernel(float(s))) for s in input_shift)
        self.register_buffer("kernel_y", ky.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("kernel_x", kx.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), persistent=False)

    @property
    def halo(self) -> int:
        """px of each side of an output tile that lack context: a consumer overlaps its tiles
        by this much and crops it (for valid padding, the zeros `forward` pads with)."""
        taps = SHIFT_TAPS if self.shifted else 0
        if self.valid:
            return self.net.halo + taps
        return same_padding_margin(self.net.halo + taps, self.net.config.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shifted:
            if not self.valid:
                x = F.pad(x, (SHIFT_TAPS,) * 4, mode="reflect")
            x = F.conv2d(x, self.kernel_y, groups=x.shape[1])
            x = F.conv2d(x, self.kernel_x, groups=x.shape[1])
        prob = probabilities(self.net(x))
        if prob.shape[1] == 1 and self.threshold != 0.5:
            t = self.threshold
            prob = torch.where(prob <= t, prob * (0.5 / t), 0.5 + (prob - t) * (0.5 / (1 - t)))
        if self.valid:
            prob = F.pad(prob, (self.halo,) * 4)
        return prob
