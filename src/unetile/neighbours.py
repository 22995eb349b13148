"""Every pixel's (or voxel's) neighbour at one offset, as a view of an array padded around its
edges: the idiom behind the touching-cell targets (training/data.py) and the heat diffusion of
the flows (flows.py)."""

from __future__ import annotations

import numpy as np


def shifted(padded: np.ndarray, offset: tuple[int, ...], pad: int = 1) -> np.ndarray:
    """``padded``: an array with ``pad`` elements added around each edge (``np.pad``); ``offset``:
    one step per axis, each within -pad..pad -> the neighbour at ``offset`` of every element of
    the unpadded array (a view, the unpadded shape)."""
    return padded[tuple(slice(pad + d, n - pad + d) for d, n in zip(offset, padded.shape))]
