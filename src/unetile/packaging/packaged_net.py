"""The network as a model package runs it: normalised image in, calibrated probability out.

`unetile predict` does three things around the U-Net that a consumer of an exported model
(deepImageJ, ilastik, bioimageio.core) would not know to do: it resamples the input by the
labels' sub-pixel offset (``input_shift``, registration.py), turns logits into
probabilities, and calibrates a one-class map so that 0.5 is the stored decision threshold.
`PackagedNet` puts all three inside the network, so the package's output *is* what
`unetile predict` writes (before 8-bit encoding).

This module is portable: it imports only torch and names from ``nn/model.py`` (itself
importing only from ``nn/geometry.py``), so `package_architecture.py` can join the three
into the one self-contained source file a package carries as its architecture, which runs
where this tool is not installed. Everything that needs more (the shift kernels from SciPy,
the halo from the tiling rules) is computed on export and passed in as plain numbers.

The shift is a fixed separable convolution (``shift_kernels``, from
`package_architecture.shift_kernel`); with same padding the image is mirrored by the
kernels' reach first (torch's "reflect" is SciPy's "mirror"), with valid padding the
consumer's context is used. The
shift is 2D only (3D checkpoints carry none). A valid-padding net's output is padded back to its input's size
with zeros (``halo`` px a side, per axis for a volume: an anisotropic net's z halo differs
from its y/x halo): bioimageio.core tiles a model by cropping a halo from an
output as large as its input, and cannot tile one whose output is smaller (core 0.11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.model import UNet, UNetConfig, output_maps


class PackagedNet(torch.nn.Module):
    """(N, C, H, W) normalised float32 -> (N, C_out, h, w) probabilities, calibrated where
    C_out is 1; a 3D net's (N, C, Z, Y, X) -> (N, C_out, z, y, x).

    ``config``: the U-Net's (`UNetConfig.to_dict`); ``threshold``: the stored decision
    threshold; ``halo``: px of each output side without full context (a valid net's output
    is padded by it): one number for every axis, or one per spatial axis ((z, y, x) for a
    volume); ``shift_kernels``: the (y, x) weights of the input's sub-pixel shift, each of
    odd length, or None for no shift (2D only).
    """

    def __init__(self, config: dict, threshold: float = 0.5, halo: int | list[int] = 0,
                 shift_kernels: list[list[float]] | None = None):
        super().__init__()
        self.net = UNet(config=UNetConfig.from_dict(config))
        self.threshold = min(max(float(threshold), 1e-6), 1 - 1e-6)
        self.valid = self.net.config.padding == "valid"
        dims = self.net.config.spatial_dims
        self.halo = int(halo) if isinstance(halo, int) else [int(h) for h in halo]
        self.axis_halos = [self.halo] * dims if isinstance(self.halo, int) else self.halo
        if len(self.axis_halos) != dims:
            raise ValueError(f"halo: give one number or {dims} (one per spatial axis), got {halo}")
        self.output_padding = tuple(h for h in reversed(self.axis_halos) for _ in range(2))  # F.pad: last axis first
        if shift_kernels is not None and dims != 2:
            raise ValueError("the input's sub-pixel shift (shift_kernels) is for 2D nets only")
        self.shifted = shift_kernels is not None
        self.shift_kernels = [[float(w) for w in kernel] for kernel in shift_kernels or ([1.0], [1.0])]
        self.taps = len(self.shift_kernels[0]) // 2
        channels = self.net.config.in_channels
        ky, kx = (torch.tensor(kernel, dtype=torch.float32) for kernel in self.shift_kernels)
        self.register_buffer("kernel_y", ky.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), persistent=False)
        self.register_buffer("kernel_x", kx.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shifted:
            if not self.valid:
                x = F.pad(x, (self.taps,) * 4, mode="reflect")
            x = F.conv2d(x, self.kernel_y, groups=x.shape[1])
            x = F.conv2d(x, self.kernel_x, groups=x.shape[1])
        prob = output_maps(self.net(x), getattr(self.net.config, "flows", False))
        if prob.shape[1] == 1 and self.threshold != 0.5:
            t = self.threshold
            prob = torch.where(prob <= t, prob * (0.5 / t), 0.5 + (prob - t) * (0.5 / (1 - t)))
        if self.valid:
            prob = F.pad(prob, self.output_padding)
        return prob

    def axis_halo(self, axis: int) -> int:
        """px of each output side without full context along spatial ``axis`` (-1 x, -2 y, -3 z)."""
        return self.axis_halos[axis]
