"""`unetile calibrate`: choose a trained model's threshold and cell settings again, on labelled
images of the user's own, without training.

Training calibrates best.pt on its validation images (under ``--time-limit`` on a capped subset
of them, `validation.calibration_subset`). A model that meets a new acquisition, or a shipped
model, may want another threshold, another smallest cell or another flow-error cut there: this
runs the same calibration (`validation.calibrate_checkpoint`, TTA predictions as `unetile predict
--tta` makes them) on the images given, with the model's own settings (normalisation, cell
diameter, cell target, flips, the labels' offset; a volume's voxel size from its files, as
predict reads it), and writes a new checkpoint: the same weights, the new threshold and cell
settings, and under ``calibrated_on`` what they were chosen on and how it scored. The model given
is never written to.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..device import choose_precision, resolve_device
from ..errors import UserInputError
from ..inference.instances import INTERIOR_SEEDED
from ..io import match_channels_first
from ..nn.checkpoint import load_payload
from ..nn.model import UNetConfig
from ..zoo import ZOO, resolve_model
from .config import TrainConfig
from .data import LabelledImage, read_pairs
from .setup import instance_labels, prepared, with_weight_map_decided
from .validation import calibrate_checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CalibrationRequest:
    """What `unetile calibrate` is asked to do (its command line)."""

    model: str  # a `unetile train` checkpoint or a shipped model's name
    data: str | None = None  # a folder with images/ and labels/ ...
    images: str | None = None  # ... or images and labels (files, stacks or folders)
    labels: str | None = None
    out: str | None = None  # the checkpoint to write (default `calibrated_path`)
    tta: bool = True  # on TTA predictions, for `unetile predict --tta`
    precision: str = "auto"  # as `unetile predict --precision`
    ignore_label: int | None = None  # the label value of not-annotated pixels
    device: str | None = None
    overwrite: bool = False  # replace ``out`` if it exists


def calibrated_path(path: Path) -> Path:
    """Where `recalibrate` writes by default: ``RUN/best.pt`` -> ``RUN/best-calibrated.pt``; a
    shipped model (``path`` as `zoo.resolve_model` gives it) -> ``NAME-calibrated.pt`` in the
    working folder."""
    if path.resolve().is_relative_to(ZOO):  # never written inside the installation
        return Path(f"{path.parent.name}-calibrated.pt")
    return path.with_name(f"{path.stem}-calibrated{path.suffix}")


def recalibrate(request: CalibrationRequest) -> Path:
    """Calibrate the model of ``request`` on its labelled images -> the checkpoint written."""
    model = resolve_model(request.model)
    if model.suffix in (".onnx", ".zip"):
        raise UserInputError(f"--model {model}: an exported package cannot be calibrated again; calibrate the "
                             "checkpoint it was exported from (RUN/best.pt) and export that")
    out = Path(request.out) if request.out is not None else calibrated_path(model)
    if out.exists() and not request.overwrite:
        raise UserInputError(f"{out}: exists; give another --out, or --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserInputError(f"{out.parent}: no such folder for --out")
    payload = load_payload(model)  # one line naming the file where it is missing or not a checkpoint
    cfg = model_settings(payload, request)
    items = labelled_images(cfg, UNetConfig.from_dict(payload["config"]).in_channels)
    device = resolve_device(request.device)
    log.info("calibrating %s on %d %s (%s)", model, len(items), "volumes" if cfg.dims == 3 else "images",
             "TTA predictions, as predict --tta" if request.tta else "plain predictions, as predict without --tta")
    calibrate_checkpoint(model, items, cfg, choose_precision(request.precision, device), device,
                         tuple(payload.get("metadata", {}).get("input_shift", (0.0, 0.0))), tta=request.tta, out=out,
                         provenance={"data": str(request.data or request.images), "images": len(items),
                                     "tta": request.tta})
    return out


def model_settings(payload: dict, request: CalibrationRequest) -> TrainConfig:
    """The settings a checkpoint (its ``payload``) was trained with, as far as its calibration
    needs them, for the labelled images of ``request``."""
    config, meta = UNetConfig.from_dict(payload["config"]), payload.get("metadata", {})
    cell_target = meta.get("cell_target", "foreground")
    # out_channels counts classes only where the net predicts classes (not cells' interiors or flows)
    per_class = not config.flows and cell_target not in INTERIOR_SEEDED and config.out_channels > 1
    cfg = TrainConfig(data=request.data, images=request.images, labels=request.labels,
                      preset=meta.get("preset") or "fast", dims=config.spatial_dims, ignore_label=request.ignore_label,
                      classes=config.out_channels if per_class else None, cell_target=cell_target,
                      cell_diameter=meta.get("cell_diameter") or "off",
                      flips=meta.get("flips", "dihedral"),  # as `Predictor` reads it
                      normalization=meta.get("normalization", TrainConfig().normalization),
                      label_offset="none").resolved()  # the offset is the checkpoint's input_shift
    if cfg.dims == 3 and cfg.voxel_size is None:  # the files do not say: the model's
        cfg = dataclasses.replace(cfg, voxel_size=meta.get("voxel_size"))
    return cfg


def labelled_images(cfg: TrainConfig, in_channels: int) -> list[LabelledImage]:
    """The images and labels of ``cfg``, prepared as training prepares its validation images
    (normalised as the model was, rescaled to its cell diameter); each image must have the
    model's ``in_channels``."""
    pairs = read_pairs(cfg.data, cfg.images, cfg.labels, cfg.dims)
    for _, image, _, image_path, _ in pairs:
        match_channels_first(image, in_channels, image_path, convert=False)  # one line naming the file
    if cfg.net_diameter and not instance_labels(cfg, pairs):
        raise UserInputError(f"{cfg.data or cfg.labels}: the labels are masks; this model sees cells at "
                             f"{cfg.net_diameter:g} px across, found from instance ids: calibrate it on labels with "
                             "one id per cell")
    return prepared(with_weight_map_decided(cfg, pairs), pairs)
