"""Voxel sizes: how far apart samples lie along each axis, and distances measured in them.

A volume's voxel size is ``(z, y, x)`` in micrometres (`io.voxel_size` reads it from OME/ImageJ
TIFF metadata; ``--voxel-size Z,Y,X`` gives it by hand). Everything that measures a distance in a
volume (the weight map's borders, elastic displacements, the watershed's smoothing) works in units
of the finest axis ("in-plane px"), so a setting such as ``sigma = 5`` px means the same physical
length along every axis: `relative_spacing` gives each axis's voxel in those units.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UserInputError


def parse_voxel_size(text: str, source: str = "--voxel-size") -> tuple[float, float, float]:
    """``"Z,Y,X"`` (micrometres, positive numbers) -> (z, y, x)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 and v < float("inf") for v in values):
        raise UserInputError(f"{source}: expected three positive numbers Z,Y,X in micrometres, got {text!r}")
    return values  # type: ignore[return-value]


def relative_spacing(spacing: Sequence[float] | None, ndim: int = 3) -> tuple[float, ...]:
    """Each axis's voxel size in units of the finest axis: (0.5, 0.125, 0.125) -> (4, 1, 1).

    ``None`` (size unknown) reads as isotropic voxels."""
    if spacing is None:
        return (1.0,) * ndim
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must hold {ndim} positive sizes, got {tuple(spacing)}")
    finest = min(float(s) for s in spacing)
    return tuple(float(s) / finest for s in spacing)


def per_axis(length_px: float, spacing: Sequence[float] | None, ndim: int = 3) -> tuple[float, ...]:
    """A length of ``length_px`` in-plane px, in voxels along each axis (fewer along a coarse one):
    ``per_axis(5, (0.5, 0.125, 0.125)) == (1.25, 5, 5)``."""
    return tuple(length_px / s for s in relative_spacing(spacing, ndim))
