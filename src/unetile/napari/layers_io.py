"""Between napari layers and the arrays this tool reads and writes."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..io import label_dtype, write_image


class LayerSlices:
    """An Image layer's planes as (C, H, W) arrays, read one at a time (a dask-backed layer is
    never loaded whole): 2D grey is one plane, an RGB(A) layer keeps its colours as channels,
    any leading axes (a stack, time) count planes.

    With ``spatial_dims=3`` (a 3D model) the last three non-colour axes are one volume, read as
    (C, Z, Y, X), and the axes before them (time, positions) count volumes."""

    def __init__(self, layer, spatial_dims: int = 2):
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        self.data, self.rgb = data, bool(getattr(layer, "rgb", False))
        spatial = data.ndim - (1 if self.rgb else 0)
        if spatial < spatial_dims:
            raise UserInputError(f"the layer '{layer.name}' is {spatial}D; this model segments volumes (Z, Y, X)")
        self.lead = tuple(data.shape[: spatial - spatial_dims])
        self.count = int(np.prod(self.lead)) if self.lead else 1
        # napari's scale of the spatial axes: a volume's voxel size (None where napari's default 1s)
        scale = tuple(float(s) for s in layer.scale[len(self.lead) : spatial])
        self.voxel_size = scale if spatial_dims == 3 and any(s != 1.0 for s in scale) else None

    def __getitem__(self, index: int) -> np.ndarray:
        where = tuple(int(i) for i in np.unravel_index(index, self.lead)) if self.lead else ()
        plane = np.asarray(self.data[where])
        return np.moveaxis(plane, -1, 0) if self.rgb else plane[None]

    def stacked(self, planes: list[np.ndarray]) -> np.ndarray:
        """Per-plane results (H, W) (volumes: (Z, Y, X)) back in the layer's leading shape."""
        return np.stack(planes).reshape(*self.lead, *planes[0].shape) if self.lead else planes[0]


def layer_choices(viewer, kind: str):
    """A magicgui ``choices`` callable: the viewer's layers of ``kind`` ("Image", "Labels"),
    as (name, layer) pairs, kept current by the widgets' ``reset_choices``."""
    return functools.partial(_layers_of_kind, viewer, kind)


def _layers_of_kind(viewer, kind: str, _widget=None) -> list[tuple[str, object]]:
    return [(layer.name, layer) for layer in viewer.layers if type(layer).__name__ == kind]


def write_labels(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """npe2 writer: a Labels layer as the label image `unetile train` reads (uint16 / uint32 ids,
    0 = background; a stack as a multi-page TIFF)."""
    labels = np.asarray(data)
    write_image(Path(path), labels.astype(label_dtype(labels)), "QYX" if labels.ndim == 3 else None)
    return [path]
