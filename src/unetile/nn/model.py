"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), with BatchNorm, in 2D or 3D.

The defaults are the paper's network: 4 poolings, 64 channels at the first level doubling
down to 1024, valid 3x3 convolutions (each followed here by BatchNorm and ReLU), 2x2 max
pooling, dropout at the end of the contracting path, 2x2 transposed convolutions up,
centre-cropped skip connections and a 1x1 convolution head. A 572x572 input gives a
388x388 output; the default net has 31,042,369 parameters.

``spatial_dims=3`` is the 3D U-Net (Cicek et al., MICCAI 2016): 3x3x3 convolutions, 2x2x2
pooling and up-convolutions, from the same code. Its ``kernels`` and ``pools`` may skip an
axis at some levels (kernel 1, factor 1) for anisotropic voxels (geometry.anisotropic_plan);
``None`` is the paper's plan on every axis, and a 2D net is built exactly as before.

The model returns logits (N, out_channels, *spatial_out); `probabilities` turns them into
class probabilities (sigmoid for one output channel, softmax over channels otherwise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

# Names, not the module: this file is also copied into BioImage.IO packages as one
# self-contained module (packaging/package_architecture.py joins geometry.py, this file
# and packaged_net.py), where there is no package to import from.
from .geometry import Padding, Plan, UpMode, grid, halo, output_size, valid_input_size


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1  # image channels (1 for EM / grey microscopy)
    out_channels: int = 1  # 1: foreground probability (sigmoid); >1: classes (softmax)
    depth: int = 4  # number of 2x2 poolings (the paper: 4)
    width: int = 64  # channels at the first level; doubled at each level down (paper: 64)
    padding: Padding = "valid"  # "valid" as in the paper, or "same" (output = input size)
    batch_norm: bool = True  # BatchNorm after each 3x3 convolution
    up_mode: UpMode = "transpose"  # paper: 2x2 transposed conv; or bilinear + 1x1 conv
    dropout: float = 0.5  # dropout at the end of the contracting path (paper: "drop-out layers")
    spatial_dims: int = 2  # 2: (H, W) images; 3: (Z, Y, X) volumes
    kernels: tuple[Plan, ...] | None = None  # per spatial axis, the kernel size at each level (depth + 1)
    pools: tuple[Plan, ...] | None = None  # per spatial axis, the pooling factor below each level (depth)
    # Cellpose-style cells (flows.py): channel 0 the cell logit, channels 1-2 the flows (y, x)
    # times FLOW_SCALE; `output_maps` turns them into the cell probability and unit-scale flows.
    flows: bool = False

    def __post_init__(self) -> None:
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if self.up_mode not in ("transpose", "bilinear"):
            raise ValueError(f"up_mode must be 'transpose' or 'bilinear', got {self.up_mode!r}")
        for name in ("in_channels", "out_channels", "depth", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.flows and (self.out_channels != 3 or self.spatial_dims != 2):
            raise ValueError(f"a flows net has 3 outputs on images, got {self.out_channels} on {self.spatial_dims}D")
        for name, length, allowed in (("kernels", self.depth + 1, (1, 3)), ("pools", self.depth, (1, 2))):
            plan = getattr(self, name)
            if plan is not None and (len(plan) != self.spatial_dims or any(
                    len(axis) != length or not set(axis) <= set(allowed) for axis in plan)):
                raise ValueError(f"{name} must give each of the {self.spatial_dims} axes {length} values "
                                 f"from {allowed}, got {plan}")

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Build from a saved dict, ignoring keys this version does not know (plans saved
        as lists become tuples again)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for name in ("kernels", "pools"):
            if values.get(name) is not None:
                values[name] = tuple(tuple(int(v) for v in axis) for axis in values[name])
        return cls(**values)

    def axis_plan(self, axis: int = -1) -> tuple[Plan | None, Plan | None]:
        """(kernels, pools) of spatial ``axis`` (-1: x, -2: y, -3: z); None where it is the paper's."""
        return tuple(None if plan is None else plan[axis] for plan in (self.kernels, self.pools))

    def level_shapes(self) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """(the kernel of each level, the pooling of each level), over the spatial axes."""
        kernels = self.kernels or ((3,) * (self.depth + 1),) * self.spatial_dims
        pools = self.pools or ((2,) * self.depth,) * self.spatial_dims
        return list(zip(*kernels)), list(zip(*pools))

    def to_dict(self) -> dict:
        return asdict(self)


CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}


def _center_crop(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Crop (N, C, *spatial) to its central ``shape`` (one size per spatial axis)."""
    window = [slice((have - want) // 2, (have - want) // 2 + want) for have, want in zip(x.shape[2:], shape)]
    return x[(..., *window)]


class DoubleConv(nn.Sequential):
    """Two convolutions (3x3, 3x3x3, or 1 on a skipped axis), each followed by BatchNorm
    (optional) and ReLU. ``same``: zero padding that keeps the size."""

    def __init__(self, in_ch: int, out_ch: int, same: bool, batch_norm: bool, kernel: tuple[int, ...] = (3, 3)):
        layers: list[nn.Module] = []
        padding = tuple(k // 2 if same else 0 for k in kernel)
        for c_in in (in_ch, out_ch):
            # Biases are kept even before BatchNorm, as in the usual PyTorch port (31,042,369 params).
            layers.append(CONV[len(kernel)](c_in, out_ch, kernel, padding=padding))
            if batch_norm:
                layers.append(BATCH_NORM[len(kernel)](out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample by ``pool`` (x2 on each axis it pooled) halving the channels, concatenate the
    centre-cropped skip, DoubleConv with ``kernel``."""

    def __init__(self, in_ch: int, out_ch: int, config: UNetConfig, pool: tuple[int, ...] = (2, 2),
                 kernel: tuple[int, ...] = (3, 3)):
        super().__init__()
        dims = len(pool)
        if config.up_mode == "transpose":
            self.up = CONV_TRANSPOSE[dims](in_ch, out_ch, kernel_size=pool, stride=pool)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=tuple(float(p) for p in pool), mode="bilinear" if dims == 2 else "trilinear",
                            align_corners=False),
                CONV[dims](in_ch, out_ch, kernel_size=1),
            )
        # Bilinear x2 (align_corners=False) clamps at the edges for its outermost output
        # pixels only; with valid convolutions we crop them so that every output pixel is a
        # function of real input and tiles stay exactly seamless (geometry.py counts this).
        crop = config.up_mode == "bilinear" and config.padding == "valid"
        self.edges = tuple(slice(1, -1) if crop and p > 1 else slice(None) for p in pool)
        self.conv = DoubleConv(2 * out_ch, out_ch, config.padding == "same", config.batch_norm, kernel)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)[(..., *self.edges)]
        skip = _center_crop(skip, tuple(x.shape[2:]))
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The U-Net. Input (N, in_channels, H, W) float (3D: (N, C, Z, Y, X)); output logits
    (N, out_channels, H', W').

    With valid padding H' = output_size(H) (e.g. 572 -> 388), else H' = H. Any input size
    that leaves a positive output works (PyTorch's floor pooling drops pixels where a
    pooling sees an odd size); `predict_tiled` and training use exact sizes only.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        width: int = 64,
        padding: Padding = "valid",
        batch_norm: bool = True,
        up_mode: UpMode = "transpose",
        dropout: float = 0.5,
        *,
        config: UNetConfig | None = None,
    ):
        super().__init__()
        if config is None:
            config = UNetConfig(in_channels, out_channels, depth, width, padding, batch_norm, up_mode, dropout)
        self.config = config
        same, dims = config.padding == "same", config.spatial_dims
        kernels, self.pools = config.level_shapes()
        chans = [config.width * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList()
        c_in = config.in_channels
        for level, c in enumerate(chans[:-1]):
            self.down.append(DoubleConv(c_in, c, same, config.batch_norm, kernels[level]))
            c_in = c
        # The paper: "Drop-out layers at the end of the contracting path".
        self.dropout = DROPOUT[dims](config.dropout) if config.dropout > 0 else nn.Identity()
        self.bottom = DoubleConv(chans[-2], chans[-1], same, config.batch_norm, kernels[-1])
        self.up = nn.ModuleList(Up(chans[i + 1], chans[i], config, self.pools[i], kernels[i])
                                for i in reversed(range(config.depth)))
        self.head = CONV[dims](chans[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = MAX_POOL[self.config.spatial_dims](x, pool)
        x = self.dropout(self.bottom(x))
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)

    # Geometry of this net (pixels along one spatial axis: -1 x, -2 y, -3 z; in 2D, and on
    # the paper's plan, every axis alike).
    def output_size(self, input_size: int, axis: int = -1) -> int:
        c = self.config
        return output_size(input_size, c.depth, c.padding, c.up_mode, *c.axis_plan(axis))

    def valid_input_size(self, n: int, direction: str = "nearest", axis: int = -1) -> int:
        c = self.config
        return valid_input_size(n, c.depth, c.padding, c.up_mode, direction, *c.axis_plan(axis))  # type: ignore

    @property
    def halo(self) -> int:
        """Context px each side along x (and y; in 2D every axis)."""
        return self.axis_halo(-1)

    def axis_halo(self, axis: int) -> int:
        c = self.config
        return halo(c.depth, c.padding, c.up_mode, *c.axis_plan(axis))

    def grid(self, axis: int = -1) -> int:
        """px between tile origins along ``axis`` that keep every pooling aligned."""
        return grid(self.config.depth, self.config.axis_plan(axis)[1])


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (N, C, H, W) -> probabilities: sigmoid where C == 1, softmax over C otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


#: A flows net learns the flows times this (Cellpose's 5: unit vectors are small regression targets).
FLOW_SCALE = 5.0


def output_maps(logits: torch.Tensor, flows: bool = False) -> torch.Tensor:
    """The net's output (N, C, H, W) -> its maps: `probabilities`; a flows net's (``flows``,
    `UNetConfig.flows`): the cell probability (sigmoid), then the flows (y, x) at unit scale."""
    if not flows:
        return probabilities(logits)
    return torch.cat([torch.sigmoid(logits[:, :1]), logits[:, 1:] / FLOW_SCALE], dim=1)


def init_he(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal initialisation, as the paper recommends: std = sqrt(2 / fan_in).

    PyTorch's default init leaves a deep valid-conv U-Net's output nearly constant, which
    slows training and hides mistakes (e.g. a misaligned tiling) in tests.
    """
    for m in model.modules():
        if isinstance(m, (*CONV.values(), *CONV_TRANSPOSE.values())):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if isinstance(m, tuple(CONV_TRANSPOSE.values())):
                # fan_in of a transposed conv whose stride is its kernel: each output sees in_ch inputs.
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.weight.shape[0]))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, tuple(BATCH_NORM.values())):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def fold_batch_norm(model: UNet) -> UNet:
    """An inference copy with each BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is an affine map per channel, y = (x - mean) * g / sqrt(var + eps)
    + b, so it can be merged into the preceding convolution's weights and bias: the same
    function (to float rounding), one memory pass fewer per layer. Returns a
    ``batch_norm=False`` UNet in eval mode; ``model`` is unchanged.
    """
    cfg = model.config
    folded = UNet(config=UNetConfig.from_dict({**cfg.to_dict(), "batch_norm": False}))
    if not cfg.batch_norm:
        folded.load_state_dict(model.state_dict())
        return folded.eval()
    # Every other parameter (up-convolutions, head) has the same name in both nets.
    state = {k: v for k, v in model.state_dict().items() if k in folded.state_dict()}
    for name, module in model.named_modules():
        if not isinstance(module, DoubleConv):
            continue
        layers = list(module)  # conv, bn, relu, conv, bn, relu -> folded: conv, relu, conv, relu
        convs = [i for i, m in enumerate(layers) if isinstance(m, tuple(CONV.values()))]
        for k, i in enumerate(convs):
            conv, bn = layers[i], layers[i + 1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            state[f"{name}.{2 * k}.weight"] = conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1))
            state[f"{name}.{2 * k}.bias"] = (conv.bias - bn.running_mean) * scale + bn.bias
    folded.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return folded.eval()

