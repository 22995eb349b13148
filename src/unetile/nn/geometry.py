"""Sizes in the U-Net: output size, valid (exactly poolable) inputs, halo and tile grid.

All sizes are in pixels along one axis; the network treats height and width alike.

A *valid* input is one whose every 2x2 max pooling sees an even size, so no pixel is
dropped by PyTorch's floor pooling. For the paper's net (depth 4, valid convolutions,
transposed-conv up) these are 16k + 188 (188, 204, ..., 508, 572, ...), and the output is
the input less ``2 * halo`` = 184 pixels (572 -> 388).

Why tiles must sit on a ``2**depth`` grid: a valid-convolution U-Net is equivariant to a
shift of its input only when the shift keeps every pooling window aligned, i.e. is a
multiple of ``2**depth`` (16 px for depth 4). Tiles whose origins differ by multiples of 16
therefore compute exactly what one pass over the whole (mirror-extended) image would.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

Padding = Literal["valid", "same"]
UpMode = Literal["transpose", "bilinear"]


@lru_cache(maxsize=4096)  # pure; called thousands of times per image by the tile-size search
def _trace(input_size: int, depth: int, padding: Padding, up_mode: UpMode) -> tuple[int, bool]:
    """Follow one axis through the net: (output size, whether every pooling was exact).

    The output size is <= 0 where the input is too small for the net.
    """
    conv_loss = 4 if padding == "valid" else 0  # two 3x3 convolutions per level
    # Valid-mode bilinear upsampling drops its outermost pixel on each side, the only ones
    # that depend on edge clamping, so that the net stays shift-equivariant (see model.py).
    up_loss = 2 if (padding == "valid" and up_mode == "bilinear") else 0
    n, exact = input_size, True
    for _ in range(depth):
        n -= conv_loss
        if n <= 0:
            return n, False
        exact &= n % 2 == 0
        n //= 2
    n -= conv_loss
    for _ in range(depth):
        if n <= 0:
            return n, False
        n = 2 * n - up_loss - conv_loss
    return n, exact


def output_size(
    input_size: int, depth: int = 4, padding: Padding = "valid", up_mode: UpMode = "transpose"
) -> int:
    """Output size (px) for an input of ``input_size`` px, with PyTorch's floor pooling.

    572 -> 388 and 512 -> 324 for the paper's net (512 drops pixels at odd poolings and so
    gives the same output size as 508). Raises ValueError where the input is too small.
    """
    n, _ = _trace(input_size, depth, padding, up_mode)
    if n <= 0:
        smallest = valid_input_size(1, depth, padding, up_mode, direction="up")
        raise ValueError(
            f"input size {input_size} px is too small for a depth-{depth} U-Net "
            f"({padding} padding); the smallest valid input is {smallest} px"
        )
    return n


def is_valid_input_size(
    input_size: int, depth: int = 4, padding: Padding = "valid", up_mode: UpMode = "transpose"
) -> bool:
    """True where every pooling is exact and the output is at least one pixel."""
    n, exact = _trace(input_size, depth, padding, up_mode)
    return exact and n > 0


@lru_cache(maxsize=4096)
def valid_input_size(
    n: int,
    depth: int = 4,
    padding: Padding = "valid",
    up_mode: UpMode = "transpose",
    direction: Literal["nearest", "up", "down"] = "nearest",
) -> int:
    """The valid input size nearest to ``n`` px (ties go up): 512 -> 508, 570 -> 572.

    ``direction="up"`` gives the smallest valid size >= n, ``"down"`` the largest <= n
    (or the smallest valid size if none is that small).
    """
    step = 2**depth
    up = max(n, 1)
    while not is_valid_input_size(up, depth, padding, up_mode):
        up += 1
    if direction == "up":
        return up
    down = n
    while down > 0 and not is_valid_input_size(down, depth, padding, up_mode):
        down -= 1
        if n - down > step:  # valid sizes repeat every 2**depth px; none below
            down = 0
    if down <= 0:
        return up
    if direction == "down":
        return down
    return down if n - down < up - n else up


def halo(depth: int = 4, padding: Padding = "valid", up_mode: UpMode = "transpose") -> int:
    """Context (px) each side of an output pixel that the net needs: 92 for the paper's net.

    For valid padding this is what the net crops on each side, ``(input - output) / 2``.
    For same padding the output keeps the input size, but a pixel still depends on
    this many pixels around it (the receptive radius of the matching valid net), so a
    tile's outermost ``halo`` px see the zero padding and are not trusted.
    """
    n = valid_input_size(1, depth, "valid", up_mode, direction="up")
    return (n - output_size(n, depth, "valid", up_mode)) // 2
