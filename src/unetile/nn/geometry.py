"""Sizes in the U-Net: output size, valid (exactly poolable) inputs, halo and tile grid.

All sizes are in pixels (voxels) along one axis. In 2D the network treats height and width
alike; a 3D net may treat z differently (`anisotropic_plan`): each axis has its own *plan*,
the convolution kernel size at each level (``kernels``, depth + 1 entries: 3, or 1 where
the axis is skipped) and the pooling factor below each level (``pools``, depth entries: 2,
or 1). ``None`` is the paper's plan: 3 and 2 everywhere.

A *valid* input is one whose every max pooling sees a multiple of its factor, so no pixel
is dropped by PyTorch's floor pooling. For the paper's net (depth 4, valid convolutions,
transposed-conv up) these are 16k + 188 (188, 204, ..., 508, 572, ...), and the output is
the input less ``2 * halo`` = 184 pixels (572 -> 388).

Why tiles must sit on a grid of the product of the poolings (``2**depth`` px, 16 for depth
4): a valid-convolution U-Net is equivariant to a shift of its input only when the shift
keeps every pooling window aligned. Tiles whose origins differ by multiples of the grid
therefore compute exactly what one pass over the whole (mirror-extended) input would.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

Padding = Literal["valid", "same"]
UpMode = Literal["transpose", "bilinear"]


Plan = tuple[int, ...]  # one axis: kernel sizes per level (depth + 1), or pooling factors (depth)


@lru_cache(maxsize=4096)  # pure; called thousands of times per image by the tile-size search
def _trace(input_size: int, depth: int, padding: Padding, up_mode: UpMode, kernels: Plan | None = None,
           pools: Plan | None = None) -> tuple[int, bool]:
    """Follow one axis through the net: (output size, whether every pooling was exact).

    The output size is <= 0 where the input is too small for the net.
    """
    kernels = kernels or (3,) * (depth + 1)
    pools = pools or (2,) * depth
    # two convolutions per level, each losing kernel - 1 px in valid padding
    conv_loss = [2 * (k - 1) if padding == "valid" else 0 for k in kernels]
    n, exact = input_size, True
    for level in range(depth):
        n -= conv_loss[level]
        if n <= 0:
            return n, False
        exact &= n % pools[level] == 0
        n //= pools[level]
    n -= conv_loss[depth]
    for level in reversed(range(depth)):
        if n <= 0:
            return n, False
        # Valid-mode bilinear upsampling drops its outermost pixel on each side of an axis it
        # doubles, the only ones that depend on edge clamping, so that the net stays
        # shift-equivariant (see model.py).
        up_loss = 2 if (padding == "valid" and up_mode == "bilinear" and pools[level] > 1) else 0
        n = pools[level] * n - up_loss - conv_loss[level]
    return n, exact


def grid(depth: int = 4, pools: Plan | None = None) -> int:
    """px between tile origins that keep every pooling aligned: the product of the poolings."""
    product = 1
    for factor in pools or (2,) * depth:
        product *= factor
    return product


def output_size(
    input_size: int, depth: int = 4, padding: Padding = "valid", up_mode: UpMode = "transpose",
    kernels: Plan | None = None, pools: Plan | None = None,
) -> int:
    """Output size (px) for an input of ``input_size`` px, with PyTorch's floor pooling.

    572 -> 388 and 512 -> 324 for the paper's net (512 drops pixels at odd poolings and so
    gives the same output size as 508). Raises ValueError where the input is too small.
    """
    n, _ = _trace(input_size, depth, padding, up_mode, kernels, pools)
    if n <= 0:
        smallest = valid_input_size(1, depth, padding, up_mode, "up", kernels, pools)
        raise ValueError(
            f"input size {input_size} px is too small for a depth-{depth} U-Net "
            f"({padding} padding); the smallest valid input is {smallest} px"
        )
    return n


def is_valid_input_size(
    input_size: int, depth: int = 4, padding: Padding = "valid", up_mode: UpMode = "transpose",
    kernels: Plan | None = None, pools: Plan | None = None,
) -> bool:
    """True where every pooling is exact and the output is at least one pixel."""
    n, exact = _trace(input_size, depth, padding, up_mode, kernels, pools)
    return exact and n > 0


@lru_cache(maxsize=4096)
def valid_input_size(
    n: int,
    depth: int = 4,
    padding: Padding = "valid",
    up_mode: UpMode = "transpose",
    direction: Literal["nearest", "up", "down"] = "nearest",
    kernels: Plan | None = None,
    pools: Plan | None = None,
) -> int:
    """The valid input size nearest to ``n`` px (ties go up): 512 -> 508, 570 -> 572.

    ``direction="up"`` gives the smallest valid size >= n, ``"down"`` the largest <= n
    (or the smallest valid size if none is that small).
    """
    step = grid(depth, pools)
    up = max(n, 1)
    while not is_valid_input_size(up, depth, padding, up_mode, kernels, pools):
        up += 1
    if direction == "up":
        return up
    down = n
    while down > 0 and not is_valid_input_size(down, depth, padding, up_mode, kernels, pools):
        down -= 1
        if n - down > step:  # valid sizes repeat every grid step; none below
            down = 0
    if down <= 0:
        return up
    if direction == "down":
        return down
    return down if n - down < up - n else up


def halo(depth: int = 4, padding: Padding = "valid", up_mode: UpMode = "transpose", kernels: Plan | None = None,
         pools: Plan | None = None) -> int:
    """Context (px) each side of an output pixel that the net needs: 92 for the paper's net.

    For valid padding this is what the net crops on each side, ``(input - output) / 2``.
    For same padding the output keeps the input size, but a pixel still depends on
    this many pixels around it (the receptive radius of the matching valid net), so a
    tile's outermost ``halo`` px see the zero padding and are not trusted.
    """
    n = valid_input_size(1, depth, "valid", up_mode, "up", kernels, pools)
    return (n - output_size(n, depth, "valid", up_mode, kernels, pools)) // 2


def anisotropic_plan(spacing: tuple[float, ...], depth: int = 4) -> tuple[tuple[Plan, ...], tuple[Plan, ...]]:
    """(kernels, pools) per axis for voxels of ``spacing`` (same units, z before y before x),
    as nnU-Net plans them: an axis more than twice as coarse as the finest is neither pooled
    nor convolved across (kernel 1) at a level; pooling the fine axes doubles their spacing
    until the coarse one is within a factor 2 and takes part. Isotropic voxels: the paper's plan.
    """
    current = [float(s) for s in spacing]
    kernels, pools = [[] for _ in current], [[] for _ in current]
    for level in range(depth + 1):
        joins = [size <= 2 * min(current) for size in current]
        for axis, taking_part in enumerate(joins):
            kernels[axis].append(3 if taking_part else 1)
            if level < depth:
                pools[axis].append(2 if taking_part else 1)
        current = [size * 2 if taking_part else size for size, taking_part in zip(current, joins)]
    return tuple(tuple(k) for k in kernels), tuple(tuple(p) for p in pools)
