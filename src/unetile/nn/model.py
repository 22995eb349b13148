"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015), with BatchNorm.

The defaults are the paper's network: 4 poolings, 64 channels at the first level doubling
down to 1024, valid 3x3 convolutions (each followed here by BatchNorm and ReLU), 2x2 max
pooling, dropout at the end of the contracting path, 2x2 transposed convolutions up,
centre-cropped skip connections and a 1x1 convolution head. A 572x572 input gives a
388x388 output; the default net has 31,042,369 parameters.

The model returns logits (N, out_channels, H_out, W_out); `probabilities` turns them into
class probabilities (sigmoid for one output channel, softmax over channels otherwise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

# Names, not the module: this file is also copied into BioImage.IO packages as one
# self-contained module (packaging/package_architecture.py joins geometry.py, this file
# and packaged_net.py), where there is no package to import from.
from .geometry import Padding, UpMode, halo, output_size, valid_input_size


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

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Build from a saved dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop (N, C, H, W) to its central (height, width)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm (optional) and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            # Biases are kept even before BatchNorm, as in the usual PyTorch port (31,042,369 params).
            layers.append(nn.Conv2d(c_in, out_ch, 3, padding=padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample x2 halving the channels, concatenate the centre-cropped skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, config: UNetConfig):
        super().__init__()
        if config.up_mode == "transpose":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_ch, out_ch, kernel_size=1),
            )
        # Bilinear x2 (align_corners=False) clamps at the edges for its outermost output
        # pixels only; with valid convolutions we crop them so that every output pixel is a
        # function of real input and tiles stay exactly seamless (geometry.py counts this).
        self.crop_edges = config.up_mode == "bilinear" and config.padding == "valid"
        self.conv = DoubleConv(2 * out_ch, out_ch, 1 if config.padding == "same" else 0, config.batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.crop_edges:
            x = x[..., 1:-1, 1:-1]
        skip = _center_crop(skip, x.shape[-2], x.shape[-1])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The U-Net. Input (N, in_channels, H, W) float; output logits (N, out_channels, H', W').

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
        pad = 1 if config.padding == "same" else 0
        chans = [config.width * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList()
        c_in = config.in_channels
        for c in chans[:-1]:
            self.down.append(DoubleConv(c_in, c, pad, config.batch_norm))
            c_in = c
        self.pool = nn.MaxPool2d(2)
        # The paper: "Drop-out layers at the end of the contracting path".
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.bottom = DoubleConv(chans[-2], chans[-1], pad, config.batch_norm)
        self.up = nn.ModuleList(Up(chans[i + 1], chans[i], config) for i in reversed(range(config.depth)))
        self.head = nn.Conv2d(chans[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x)

    # Geometry of this net (pixels along one axis).
    def output_size(self, input_size: int) -> int:
        c = self.config
        return output_size(input_size, c.depth, c.padding, c.up_mode)

    def valid_input_size(self, n: int, direction: str = "nearest") -> int:
        c = self.config
        return valid_input_size(n, c.depth, c.padding, c.up_mode, direction)  # type: ignore[arg-type]

    @property
    def halo(self) -> int:
        c = self.config
        return halo(c.depth, c.padding, c.up_mode)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Logits (N, C, H, W) -> probabilities: sigmoid where C == 1, softmax over C otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def init_he(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal initialisation, as the paper recommends: std = sqrt(2 / fan_in).

    PyTorch's default init leaves a deep valid-conv U-Net's output nearly constant, which
    slows training and hides mistakes (e.g. a misaligned tiling) in tests.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if isinstance(m, nn.ConvTranspose2d):
                # fan_in of a stride-2 2x2 transposed conv: each output sees in_ch inputs.
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.weight.shape[0]))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
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
        convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
        for k, i in enumerate(convs):
            conv, bn = layers[i], layers[i + 1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            state[f"{name}.{2 * k}.weight"] = conv.weight * scale[:, None, None, None]
            state[f"{name}.{2 * k}.bias"] = (conv.bias - bn.running_mean) * scale + bn.bias
    folded.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return folded.eval()

