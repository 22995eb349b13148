"""Every setting of a training run (`TrainConfig`), checked and filled from a preset, and the
settings a resumed run keeps."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import symmetries
from ..errors import UserInputError
from ..io import list_images, voxel_size
from ..nn.checkpoint import load_payload
from ..normalization import Normalization
from ..registration import parse_label_offset
from ..spacing import parse_voxel_size
from .data import CELL_TARGETS
from .losses import LOSSES
from .presets import preset

log = logging.getLogger(__name__)

SELECT_BY = ("score", "loss", "pixel_error", "adapted_rand_error", "rand_error", "v_rand", "dice")
MAXIMISE = {"v_rand", "dice"}
#: Flows: the most a small cell weighs (`weights.small_cell_weights`). 4 lifts a nucleus of half the
#: median's diameter to the median's weight; on the DSB split at 15 minutes it raised AP@0.5 by about
#: 0.01 (0.778, 0.777 -> 0.784, 0.793, 0.788 without one nearly empty test image; mean AP unchanged:
#: docs/results.md, sixteenth session).
SMALL_CELL_WEIGHT = 4.0


@dataclass
class TrainConfig:
    """Every setting of a run. ``None`` means "from the preset"; see presets.py."""

    out: str = "runs/unetile"  # run folder
    data: str | None = None  # folder with images/ and labels/
    images: str | None = None  # or: images (file/stack/folder) ...
    labels: str | None = None  # ... and labels
    val: str | None = None  # a separate validation folder (images/, labels/)
    val_fraction: float = 0.2  # else: the last slices validate
    preset: str = "fast"
    init: str | None = None  # a checkpoint to start from (fine-tuning): its architecture, its weights
    classes: int | None = None  # class count for integer class-id labels (>2); None: a mask or instance ids
    dims: int | None = None  # spatial axes: 2 (images) or 3 (volumes); None: inferred (`spatial_settings`)
    voxel_size: str | list[float] | None = None  # volumes: "Z,Y,X" um, overriding the files'; resolved: a list
    ignore_label: int | None = None  # the label value of not-annotated pixels (sparse labels): weight 0
    in_channels: int | None = None  # image channels (default: as the data)
    width: int | None = None
    depth: int | None = None  # poolings (default 4)
    padding: str | None = None  # valid (the paper) or same
    up_mode: str | None = None  # "transpose" (the paper) or "bilinear"
    dropout: float | None = None
    tile_size: int | None = None  # network input px (a valid size; rounded to one)
    batch_size: int | None = None
    epochs: int | None = None
    samples_per_epoch: int | None = None  # tiles per epoch (0: one per training image)
    centre_crop: bool | None = None  # the seed's fixed centre crops instead of random tiles
    loss: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None  # SGD momentum (paper: 0.99)
    weight_decay: float = 0.0
    ema: float | None = None  # decay of an exponential moving average of the weights (0: off)
    elastic: bool | None = None
    elastic_sigma: float | None = None  # std of the elastic displacements on the 3 x 3 grid, px (paper: 10)
    flips: str | None = None  # flips/rotations to augment with and average over: dihedral, horizontal, none
    label_offset: str | None = None  # auto | none | "DY,DX" px: resample images onto the labels' grid
    grey: bool | None = None
    soft_labels: bool | None = None  # binary labels: elastic warps give foreground fractions, not a staircase
    zoom: float = 1.0  # images: each tile zoomed by a factor drawn log-uniform in [1/zoom, zoom] (1: off; augment.py)
    weight_map: bool | None = None  # the paper's border weight map in the loss
    w0: float | str | None = None  # the weight map's border weight (paper: 10); "auto": `automatic_weight_map`
    sigma: float | None = None  # and its width, px (paper: 5)
    class_balance: bool | str | None = None  # w_c: classes weighted by inverse frequency; or "auto", as w0
    skeleton_recall: float | None = None  # weight of the skeleton recall term (losses.py; 0: off)
    cell_target: str | None = None  # instance-id labels: what to learn (data.CELL_TARGETS)
    # Instance-id labels: the diameter (px) each image's median cell is rescaled to before it reaches
    # the net (cell_size.py); "auto": the training labels' median (an --init model's where it has one);
    # "off": images at their own size. Resolved by setup.load_data to a number or "off".
    cell_diameter: float | str | None = None
    # Flows: a cell smaller than its image's median weighs median area / its area in the loss, at
    # most this (default 4; 1: every cell weighs 1; weights.small_cell_weights).
    small_cell_weight: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str | None = None
    workers: int | None = None
    tiles_on: str = "auto"  # where training tiles are made: auto, cpu, device (setup.tiles_on_device)
    seed: int = 0
    time_limit: float | None = None  # seconds for the whole run, calibration included
    # best.pt by the validation loss: smooth, so it follows the schedule to its end. Selecting
    # by pixel + adapted Rand error ("score") picked epochs 17-28 of 29, the Rand error's
    # jumps outweighing the pixel error's drift, and cost up to 0.002 of pixel error on ISBI.
    select_by: str = "loss"
    calibrate_tta: bool = True  # choose the final threshold on TTA predictions, as predict --tta
    skip_nonfinite: bool = False  # skip steps whose loss is NaN/inf instead of stopping
    batch_norm: bool | None = None  # BatchNorm after each convolution (default on)
    dist_timeout: float = 300.0  # seconds a collective call waits for the other processes
    normalization: dict = field(default_factory=lambda: Normalization().to_dict())

    @property
    def net_diameter(self) -> float | None:
        """The px across that cells reach the net (``cell_diameter`` once decided), None when off."""
        return None if isinstance(self.cell_diameter, str) or self.cell_diameter is None else float(self.cell_diameter)

    def resolved(self) -> "TrainConfig":
        """Fill ``None`` fields from the preset and check every value; decide 2D or 3D and the
        voxel size (`spatial_settings`)."""
        start = load_payload(self.init) if self.init is not None else None  # read once here
        dims, voxels = spatial_settings(self, start)
        values = preset(self.preset, dims)
        if start is not None:  # the starting model's architecture wins over the preset's
            values.update(initial_architecture(start))
        base = dict(depth=4, up_mode="transpose", batch_norm=True, momentum=0.9, centre_crop=False, workers=None,
                    ema=0.0, class_balance=True, w0=10.0, sigma=5.0, skeleton_recall=0.0, label_offset="none",
                    soft_labels=False, cell_target="auto", elastic_sigma=10.0,
                    cell_diameter="auto", small_cell_weight=SMALL_CELL_WEIGHT)
        out = dataclasses.replace(self, dims=dims, voxel_size=voxels)
        for name, value in {**base, **values}.items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        if out.loss not in LOSSES:
            raise UserInputError(f"--loss {out.loss}: choose one of {', '.join(LOSSES)}")
        if out.optimizer not in ("sgd", "adam", "adamw"):
            raise UserInputError(f"--optimizer {out.optimizer}: choose sgd, adam or adamw")
        if out.select_by not in SELECT_BY:
            raise UserInputError(f"--select-by {out.select_by}: choose one of {', '.join(SELECT_BY)}")
        if out.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserInputError(f"--precision {out.precision}: choose auto, fp32, bf16 or fp16")
        for name in ("batch_size", "epochs", "width"):
            if getattr(out, name) < 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(out, name)}")
        if not 0.0 <= out.ema < 1.0:
            raise UserInputError(f"--ema must be in [0, 1), got {out.ema}")
        symmetries.group(out.flips)
        parse_label_offset(out.label_offset)
        w0_ok = out.w0 == "auto" or (not isinstance(out.w0, str) and 0 <= out.w0 < math.inf)
        if out.weight_map and not (w0_ok and 0 < out.sigma < math.inf):
            raise UserInputError(
                f"the weight map needs --w0 >= 0 (or auto) and --sigma > 0, got {out.w0} and {out.sigma}")
        if out.class_balance not in (True, False, "auto"):
            raise UserInputError(f"class balancing must be on, off or auto, got {out.class_balance!r}")
        if not 0 <= out.skeleton_recall < math.inf:
            raise UserInputError(f"--skeleton-recall must be >= 0, got {out.skeleton_recall}")
        if out.cell_target not in ("auto", *CELL_TARGETS):
            raise UserInputError(f"--cell-target {out.cell_target}: choose auto or one of {', '.join(CELL_TARGETS)}")
        out.cell_diameter = parse_cell_diameter(out.cell_diameter)
        if out.tiles_on not in ("auto", "cpu", "device"):
            raise UserInputError(f"--tiles-on {out.tiles_on}: choose auto, cpu or device")
        if out.tiles_on == "device" and out.skeleton_recall > 0:
            raise UserInputError("--tiles-on device cannot compute --skeleton-recall's skeletons; use --tiles-on cpu")
        if not 1.0 <= out.zoom < math.inf:
            raise UserInputError(f"--zoom must be >= 1 (1: off), got {out.zoom}")
        if out.zoom != 1.0 and out.tiles_on == "device":
            raise UserInputError("--tiles-on device cannot zoom tiles (--zoom); use --tiles-on cpu")
        if not 1.0 <= out.small_cell_weight < math.inf:
            raise UserInputError(f"--small-cell-weight must be >= 1 (1: off), got {out.small_cell_weight}")
        if out.elastic_sigma <= 0:
            raise UserInputError(f"--elastic-sigma must be > 0, got {out.elastic_sigma}")
        if out.classes is not None and out.classes < 2:
            raise UserInputError(f"--classes must be >= 2, got {out.classes}")
        if out.ignore_label is not None and out.ignore_label < 0:
            raise UserInputError(f"--ignore-label must be a label value >= 0, got {out.ignore_label}")
        if dims == 3:
            check_volume_settings(out)
        return out


def spatial_settings(cfg: TrainConfig, start: dict | None = None) -> tuple[int, list[float] | None]:
    """(2 or 3 spatial axes, the volumes' voxel size (z, y, x) um or None) for a run, with one
    logged line saying why: ``--dims`` as given; else that of the ``--init`` model; else 3
    where ``--voxel-size`` is given or an image file carries a z voxel size (ImageJ / OME
    metadata: `io.voxel_size`), 2 otherwise. The voxel size: ``--voxel-size``, else the first
    training volume's, else the ``--init`` model's; unknown: None (isotropic voxels assumed, logged).
    ``start``: the ``--init`` checkpoint's payload where the caller has read it (else read here)."""
    given = cfg.voxel_size
    if isinstance(given, str):
        given = list(parse_voxel_size(given))
    if cfg.dims not in (None, 2, 3):
        raise UserInputError(f"--dims {cfg.dims}: choose 2 (images) or 3 (volumes)")
    files = [] if cfg.dims == 2 or (cfg.dims == 3 and given) else _image_files(cfg)
    sizes = {f: voxel_size(f) for f in files}
    known = [(f, v) for f, v in sizes.items() if v is not None]
    if start is None and cfg.init is not None:
        start = load_payload(cfg.init)
    init = start or {}
    if cfg.dims is not None:
        dims, why = cfg.dims, "--dims"
    elif cfg.init is not None:
        dims = int(init.get("config", {}).get("spatial_dims", 2))
        why = f"--init {cfg.init} is a {dims}D model"
    elif given:
        dims, why = 3, "--voxel-size is given"
    elif known:
        dims, why = 3, f"{known[0][0].name} carries a z voxel size ({known[0][1][0]:.4g} um)"
    else:
        dims, why = 2, "no image file carries a z voxel size; --dims 3 trains on volumes"
    if cfg.dims is None:
        log.info("training in %dD (%s)", dims, why)
    if dims == 2:
        if given:
            raise UserInputError("--voxel-size is for volumes: add --dims 3")
        return 2, None
    if not given and not known:  # the files do not say: the --init model's, where it has one
        given = init.get("metadata", {}).get("voxel_size")
    if given:
        return 3, [float(v) for v in given]
    if not known:
        log.info("voxel size unknown (no ImageJ/OME metadata): isotropic voxels assumed; give --voxel-size Z,Y,X")
        return 3, None
    first = known[0][1]
    odd = [f.name for f, v in known if any(abs(a - b) > 0.1 * b for a, b in zip(v, first))]
    if odd:
        log.warning("voxel sizes differ between volumes (%s); training with %s's: %s um (z, y, x)",
                    ", ".join(odd[:3]), known[0][0].name, ", ".join(f"{v:.4g}" for v in first))
    return 3, [float(v) for v in first]


def _image_files(cfg: TrainConfig) -> list[Path]:
    """The training image files (none where the data's paths do not exist: `read_pairs` says so)."""
    images = Path(cfg.data) / "images" if cfg.data is not None else cfg.images
    if images is None or not Path(images).exists():
        return []
    return list_images(images)


def check_volume_settings(cfg: TrainConfig) -> None:
    """Settings that volumes cannot take: one line each."""
    if cfg.cell_target in ("touching", "flows"):
        raise UserInputError(f"--cell-target {cfg.cell_target} is for 2D images; volumes learn foreground, boundary "
                             "or distance")
    if cfg.tiles_on == "device":
        raise UserInputError("--tiles-on device: volume tiles are cut and augmented on the CPU; use --tiles-on cpu")
    if parse_label_offset(cfg.label_offset) != "none":
        raise UserInputError("--label-offset is for 2D images; volumes train with --label-offset none")
    if cfg.zoom != 1.0:
        raise UserInputError("--zoom is for 2D images; volumes train without it")


def parse_cell_diameter(value: float | str) -> float | str:
    """``--cell-diameter``: "auto", "median", "off" or a diameter in px > 0 (returned as a float)."""
    if value in ("auto", "median", "off"):
        return value
    try:
        diameter = float(value)
    except (TypeError, ValueError):
        diameter = math.nan
    if not 0 < diameter < math.inf:
        raise UserInputError(f"--cell-diameter {value}: give a diameter in px > 0, auto, median or off")
    return diameter


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '1.5h' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise UserInputError(f"--time-limit {text}: use e.g. 900, 15m or 1.5h") from None


def resume_config(cfg: TrainConfig, run: Path) -> TrainConfig:
    """The saved run's settings; only epochs, time limit, device and workers may change."""
    try:
        saved = json.loads((run / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError) as e:
        raise UserInputError(f"{run / 'config.json'}: cannot resume from this run folder ({e})") from e
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved.setdefault("small_cell_weight", 1.0)  # runs from before the setting weighed every cell 1
    overrides = {k: v for k, v in dataclasses.asdict(cfg).items()
                 if k in ("epochs", "time_limit", "device", "workers", "tiles_on") and v is not None}
    resumed = dataclasses.replace(TrainConfig(**{k: v for k, v in saved.items() if k in known}), **overrides)
    resumed.out = str(run)  # the run stays where it is, whatever its config says
    resumed.init = None  # the weights come from last.pt; the saved settings already hold the architecture
    return resumed


def initial_architecture(start: dict) -> dict:
    """The architecture settings (width, depth, padding, up_mode, batch_norm) of the
    checkpoint ``--init`` starts from (its payload, `load_payload`)."""
    config = start.get("config", {})
    return {k: config[k] for k in ("width", "depth", "padding", "up_mode", "batch_norm") if k in config}
