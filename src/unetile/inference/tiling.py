"""Overlap-tile prediction with mirror extrapolation (the paper's Fig. 2), seamless by design.

The image is cut into output tiles that cover it exactly; each tile's network input is the
output window plus the net's context (its halo) on every side, read from the image extended
by mirror reflection where the window leaves the image. Tiles are batched through the net.

Why the result is seamless: every tile origin lies on one grid of ``2**depth`` px (16 for the
paper's net), so every max-pooling window in every tile lines up with the pooling windows a
single pass over the whole mirror-extended image would use. A valid-convolution net is then
exactly shift-equivariant between tiles, and each output pixel gets the value the whole pass
would give it (up to float rounding, ~1e-6), whatever the tile size or batch size. Tiles
step by a multiple of the grid and overlap by less than one grid step; where they overlap
they compute the same values.

For ``padding="same"`` the outermost ``margin`` px of each tile output see the zero padding;
they are discarded (margin = halo rounded up to the grid) so the same guarantee holds.

Memory: the input is never copied whole: each tile is gathered from the image by index (the
mirror is an index map), normalised on its own with the whole image's percentiles, and the
only full-size array is the float32 output (which may be a memory map, ``out=``). On CUDA the
tiles are cut on the device from bands of rows instead (tile_io.py): the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import symmetries
from ..device import autocast
from ..errors import UserInputError
from ..nn.model import UNet, output_maps
from ..normalization import Normalization
from .layout import TileLayout, activation_bytes, default_tile_shape, default_tile_size, max_tile_voxels, tile_layout
from .tile_io import Position, TileWriter, tile_positions, tile_reader

def predict_tiled(
    model: UNet,
    image: np.ndarray,
    *,
    tile_size: int | tuple[int, ...] | None = None,
    batch_size: int = 4,
    tta: bool = False,
    flips: str = "dihedral",
    device: str | torch.device | None = None,
    normalization: Normalization | None = None,
    input_shift: tuple[float, float] = (0.0, 0.0),
    precision: str = "fp32",
    channels_last: bool = False,
    out: np.ndarray | None = None,
    progress: bool = False,
    encode: Callable[[np.ndarray], np.ndarray] | None = None,
    skip_batches: int = 0,
    on_batch: Callable[[int], None] | None = None,
    resident: bool | None = None,
) -> np.ndarray:
    """Segment an image of any size seamlessly: (H, W) or (C, H, W) -> (C_out, H, W) float32;
    with a 3D net a volume: (Z, Y, X) or (C, Z, Y, X) -> (C_out, Z, Y, X).

    Args:
        model: a `UNet` (or anything with its ``config`` and per-axis geometry:
            ``output_size``, ``valid_input_size``, ``axis_halo``, ``grid``); run in eval mode,
            its training mode is restored after.
        image: (H, W) or (C, H, W) of any dtype (3D: (Z, Y, X) or (C, Z, Y, X)); C must equal
            the net's ``in_channels``.
        tile_size: network input per tile (px, a valid input size of the net; 3D: one per
            axis, or one for all); default the valid size up to 892 px that computes the
            fewest pixels for this image (3D: `layout.default_tile_shape` under `volume_tile_voxels`).
        batch_size: tiles per forward pass (bounds memory).
        tta: average over the flips / 90-degree rotations of the group ``flips``.
        flips: the group the net was trained with (`symmetries.GROUPS`; the checkpoint's
            ``flips`` metadata): all 8 (the paper's averaging), horizontal or none.
        device: where to run; default the model's device (the model is moved if given).
        normalization: percentile normalisation computed on the whole image and applied per
            tile; None feeds the image as float32 unchanged.
        input_shift: (dy, dx) px, resample the (normalised) image by this sub-pixel shift
            before the net, as training did (the checkpoint's ``input_shift``; see
            registration.py). Done per tile with a halo, so it matches the whole image. 2D only.
        precision: "fp32", "bf16" or "fp16" autocast.
        channels_last: run the net in channels-last memory format (faster on CPUs/GPUs).
        out: optional (C_out, H, W) array to write into: a memory map, or anything with
            ``shape`` and slice assignment (e.g. `streaming.TiffSlice`, a TIFF on disk).
        progress: show a progress bar over the tiles.
        encode: applied to each tile's probabilities (C_out, h, w) before writing (e.g.
            calibration, or a threshold for a uint8 mask).
        skip_batches: batches already written by an interrupted run (resume); batches are
            always formed the same way, so a resumed result is bit-identical.
        on_batch: called with the number of batches done after each one is written.
        resident: cut, mirror and normalise the tiles on the device from bands of rows
            uploaded once (`tile_io.DeviceTileReader`); None: on CUDA. The same numbers.

    Returns:
        probabilities (C_out, H, W) float32: sigmoid for one output channel, softmax otherwise.

    Note:
        The result does not depend on ``tile_size`` or ``batch_size`` (to ~1e-6): see the
        module docstring for why the 2**depth tile grid makes this exact.
    """
    image = _checked_image(model, image, precision, batch_size)
    if image.ndim == 4 and any(input_shift):
        raise UserInputError("a sub-pixel input shift is for 2D images only")
    if device is not None:
        model.to(device)
    layouts = image_layouts(model, image.shape[1:], tile_size, precision, next(model.parameters()).device)
    out_shape = (model.config.out_channels, *image.shape[1:])
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)
    elif tuple(out.shape) != out_shape:
        raise ValueError(f"out must have shape {out_shape}, got {out.shape}")
    net = TileNet(model, layouts, precision, channels_last)
    reader = tile_reader(image, layouts, normalization, input_shift, net.device, resident)
    group = tta_group(flips, tta)
    positions = tile_positions(layouts)
    bar = tqdm(total=len(positions), desc="tiles", unit="tile", disable=not progress, leave=False,
               initial=min(len(positions), skip_batches * batch_size))
    writer = TileWriter(out, layouts, encode, on_batch, bar.update)
    try:
        run_tiles(net, reader, writer, positions, batch_size, group, skip_batches)
    finally:
        bar.close()
    return out


def image_layouts(model: UNet, shape: tuple[int, ...], tile_size: int | tuple[int, ...] | None,
                  precision: str = "fp32", device: torch.device | None = None) -> tuple[TileLayout, ...]:
    """The tile layout of each spatial axis of an image (H, W) or volume (Z, Y, X); a volume's
    default tile is the largest that ``device`` holds at ``precision`` (`volume_tile_voxels`)."""
    tiles = tile_size or default_tile(model, shape, precision, device)
    tiles = (tiles,) * len(shape) if isinstance(tiles, int) else tuple(tiles)
    if len(tiles) != len(shape):
        raise UserInputError(f"tile size {tile_size}: give one size, or one per axis of {len(shape)}")
    return tuple(tile_layout(model, length, tile, axis)
                 for length, tile, axis in zip(shape, tiles, range(-len(shape), 0)))


def tta_group(flips: str, tta: bool) -> tuple[symmetries.Symmetry, ...]:
    """The flips / rotations a prediction averages over: the group ``flips`` with ``tta``
    (checked even without), else the identity alone."""
    group = symmetries.group(flips)
    return group if tta else symmetries.group("none")


def run_tiles(net: TileNet, reader, writer: TileWriter, positions: list[Position], batch_size: int,
              group: tuple[symmetries.Symmetry, ...], skip_batches: int = 0) -> None:
    """Predict the tiles at ``positions`` (in this order, ``batch_size`` at a time) from
    ``reader`` into ``writer``; the first ``skip_batches`` batches are skipped (resume)."""
    model = net.model
    was_training = model.training
    model.eval()
    model.to(memory_format=net.memory_format)
    try:
        with torch.inference_mode():
            for index, chunk in enumerate(_chunks(positions, batch_size)):
                if index >= skip_batches:
                    writer.put(index, chunk, net.predict(reader.batch(chunk), group))
            writer.flush()
    finally:
        model.train(was_training)


def _checked_image(model: UNet, image: np.ndarray, precision: str, batch_size: int) -> np.ndarray:
    """``image`` as (C, H, W) (3D nets: (C, Z, Y, X)), after checking it and the settings
    against the net."""
    dims = model.config.spatial_dims
    if image.ndim == dims:
        image = image[None]
    if image.ndim != dims + 1:
        wanted = "an image (H, W) or (C, H, W)" if dims == 2 else "a volume (Z, Y, X) or (C, Z, Y, X)"
        raise UserInputError(f"expected {wanted}, got shape {tuple(image.shape)}")
    channels = image.shape[0]
    if channels != model.config.in_channels:
        raise UserInputError(f"the image has {channels} channel(s) but the model expects {model.config.in_channels}")
    if min(image.shape[1:]) < 1:
        raise UserInputError(f"the image is empty (shape {tuple(image.shape)})")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    return image


class TileNet:
    """The net applied to a batch of tiles -> the kept part of their probabilities
    (N, C_out, *kept), averaged over a group of flips / rotations (of y and x)."""

    def __init__(self, model: UNet, layouts: tuple[TileLayout, ...], precision: str, channels_last: bool) -> None:
        self.model, self.layouts = model, layouts
        self.precision, self.channels_last = precision, channels_last
        self.memory_format = ({2: torch.channels_last, 3: torch.channels_last_3d}[len(layouts)] if channels_last
                              else torch.contiguous_format)
        self.device = next(model.parameters()).device

    def predict(self, batch: torch.Tensor, group: tuple[symmetries.Symmetry, ...]) -> torch.Tensor:
        if len(group) == 1:
            return self(batch)
        return sum(self.undo(self(symmetries.apply(batch, s)), s) for s in group) / len(group)

    def undo(self, maps: torch.Tensor, s: symmetries.Symmetry) -> torch.Tensor:
        """``maps`` of a transformed batch back in place; a flows net's vectors turned back too."""
        maps = symmetries.undo(maps, s)
        if not getattr(self.model.config, "flows", False):
            return maps
        return torch.cat([maps[:, :1], symmetries.turn_vectors(maps[:, 1:], s, inverse=True)], dim=1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.precision):
            y = self.model(batch).float()
        # An exported model (export.OnnxModel) already ends in sigmoid/softmax.
        p = y if getattr(self.model, "outputs_probabilities", False) else \
            output_maps(y, getattr(self.model.config, "flows", False))
        if self.model.config.padding == "same":
            p = p[(..., *(slice(layout.context, layout.context + layout.output_size) for layout in self.layouts))]
        return p


def default_batch_size(model_like, tile_size: int | tuple[int, ...], precision: str,
                       device: torch.device | None = None) -> int:
    """Tiles per forward pass that keep the activations within the device's budget.

    ``tile_size``: a square tile's side (px), or a tile's size per axis (a 3D tile's voxels).
    On a CPU: 1.5 GB (`layout.activation_bytes` per tile), 1-8 tiles (more gains nothing
    there). On CUDA: half the free device memory, 1-32 tiles.
    """
    samples = tile_size**2 if isinstance(tile_size, int) else int(np.prod(tile_size))
    per_tile = activation_bytes(model_like, samples, precision)
    if device is not None and device.type == "cuda":
        budget, most = 0.5 * torch.cuda.mem_get_info(device)[0], 32
    else:
        budget, most = 1.5 * 2**30, 8
    return int(max(1, min(most, budget // per_tile)))


def default_tile(model_like, shape: tuple[int, ...], precision: str = "fp32",
                 device: torch.device | None = None) -> int | tuple[int, ...]:
    """The tool's own tile for an image (H, W): one side (`layout.default_tile_size`); for a volume
    (Z, Y, X): one per axis, the largest ``device`` holds at ``precision`` (`layout.default_tile_shape`
    under `volume_tile_voxels`)."""
    if len(shape) == 2:
        return default_tile_size(model_like, *shape)
    return default_tile_shape(model_like, shape, volume_tile_voxels(model_like, precision, device))


def volume_tile_voxels(model_like, precision: str = "fp32", device: torch.device | None = None) -> int:
    """The voxels of the largest 3D tile the tool picks by itself on ``device``: on a CPU
    `layout.max_tile_voxels` (~4 GB of fp32 activations); on CUDA a quarter of the free memory
    (so that two tiles make a batch), at most 2**29 / width voxels, so that a batch of two tiles'
    widest map (2 x width channels) stays under the 2**31 elements that cuDNN kernels index.
    Why larger tiles on a GPU: a depth-3 net's halo is lost on every face; on an H200 the CPU's cap
    (140 x 172 x 172 for the paper-sized 3D net) kept 9% of each tile's voxels."""
    if device is None or device.type != "cuda":
        return max_tile_voxels(model_like)
    width = getattr(model_like.config, "width", 64)
    free = torch.cuda.mem_get_info(device)[0]
    return int(min(0.25 * free // activation_bytes(model_like, 1, precision), 2**29 // width))


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
