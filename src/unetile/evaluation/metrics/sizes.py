"""True cells by size: how many of each size are found, merged or missed.

Users of nuclei tools ask whether the small ones are lost: a data set's AP cannot say, since
a few large cells weigh as much as many small ones. `objects.cell_fates` gives each true cell
one fate:

- *found*: matched one to one at IoU 0.5 (`objects.match`, as AP@0.5 counts it);
- *merged*: not found, and joined with another true cell by majority overlap
  (`objects.merged_and_split`, the rule of the ``merged`` count);
- *missed*: neither (no predicted cell, or one too far from its shape).

The three add up to the true cells. A cell's size is the diameter of the disc (2D) or ball (3D)
of its area (volume) in px (voxels). The bins are multiples of the data set's median true
diameter (`SIZE_EDGES`), so that one table reads the same for nuclei 8 px across and 50 px
across (and for volumes of one anisotropic voxel size: their sizes all scale by one factor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...cell_size import disc_diameter

__all__ = ["SIZE_EDGES", "CellFates", "equivalent_diameter", "size_table"]

#: Bin edges of `size_table`, in multiples of the median true diameter.
SIZE_EDGES: tuple[float, ...] = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, np.inf)


@dataclass(frozen=True)
class CellFates:
    """Per true cell (N,) of one image (volume): its diameter (px, `equivalent_diameter`),
    whether it is found, whether it is merged and not found (`objects.cell_fates`)."""

    diameter: np.ndarray
    found: np.ndarray
    merged_not_found: np.ndarray
    ndim: int = 2


def equivalent_diameter(size: np.ndarray, ndim: int = 2) -> np.ndarray:
    """Areas (2D) or volumes (3D) in px -> the diameters of the discs or balls of those sizes."""
    size = np.asarray(size, dtype=np.float64)
    return disc_diameter(size) if ndim == 2 else np.cbrt(6.0 * size / np.pi)


def size_table(fates: Sequence[CellFates], edges: Sequence[float] = SIZE_EDGES, relative: bool = True) -> dict:
    """The true cells of all images pooled and counted per diameter bin, as a JSON-ready dict::

        {"median_diameter": px, "relative": bool, "ndim": 2 or 3,
         "rows": [{"low": x, "high": x, "low_px": px, "high_px": px, "cells": n, "found": n,
                   "merged": n, "missed": n}, ...]}

    ``edges`` are multiples of the median true diameter where ``relative``, else px; a bin holds
    low <= diameter < high. ``high`` and ``high_px`` are None for the open last bin; the median
    and the px edges are None where there is no true cell (relative bins then hold none)."""
    diameter = np.concatenate([f.diameter for f in fates] or [np.zeros(0)])
    found = np.concatenate([f.found for f in fates] or [np.zeros(0, bool)])
    merged = np.concatenate([f.merged_not_found for f in fates] or [np.zeros(0, bool)])
    median = float(np.median(diameter)) if diameter.size else None
    unit = 1.0 if not relative else median
    rows = []
    for low, high in zip(edges, edges[1:]):
        inside = np.zeros(diameter.shape, bool) if unit is None else (diameter >= low * unit) & (diameter < high * unit)
        rows.append({"low": float(low), "high": _finite(high), "low_px": _finite(low, unit),
                     "high_px": _finite(high, unit), "cells": int(inside.sum()), "found": int((inside & found).sum()),
                     "merged": int((inside & merged).sum()), "missed": int((inside & ~found & ~merged).sum())})
    return {"median_diameter": median, "relative": relative, "ndim": fates[0].ndim if fates else 2, "rows": rows}


def _finite(edge: float, unit: float | None = 1.0) -> float | None:
    """``edge`` times ``unit`` as a float; None for the open end or an unknown unit (JSON's null)."""
    return None if unit is None or not np.isfinite(edge) else float(edge * unit)
