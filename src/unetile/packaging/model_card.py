"""The human side of a model package: its cover picture and its model card (README.md).

The card says what a user needs to trust and run the model: what it segments, the data and
recipe it was trained with (the run's ``config.json`` when it sits beside the checkpoint),
its validation figures (stored in the checkpoint by training), its limitations, and how
to run it in this tool, bioimageio.core, deepImageJ (Fiji) and ilastik.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import write_image
from ..normalization import PREDICTION_NOISE_FLOOR, Normalization

_VALIDATION_NAMES = {"pixel_error": "pixel error", "adapted_rand_error": "adapted Rand error",
                     "rand_error": "Rand error", "v_rand": "V_rand", "dice": "Dice", "loss": "validation loss",
                     "threshold": "decision threshold"}


def training_record(model_path: Path) -> dict:
    """The run's config.json beside the checkpoint ({} when the checkpoint travels alone)."""
    record = Path(model_path).parent / "config.json"
    try:
        return json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def cover_image(image: np.ndarray, probability: np.ndarray, path: Path) -> None:
    """image | probability | overlay (foreground > 0.5 in red over the image), 8-bit RGB PNG.
    ``image`` (C, H, W) raw; ``probability`` (C_out, H, W) in [0, 1]."""
    grey = image.mean(axis=0)
    low, high = np.percentile(grey, [1, 99])
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    fore = probability[0] if probability.shape[0] == 1 else 1.0 - probability[0]
    overlay = np.stack([grey, grey, grey])
    overlay[0] = np.where(fore > 0.5, 0.5 * grey + 0.5, grey)
    overlay[1:] = np.where(fore > 0.5, 0.5 * grey, grey)
    gap = np.ones((3, grey.shape[0], 8))
    panels = [np.stack([grey] * 3), gap, np.stack([fore] * 3), gap, overlay]
    write_image(path, np.rint(np.concatenate(panels, axis=2) * 255).astype(np.uint8))


def model_card(model_path: Path, model, metadata: dict, record: dict, info, sample: Path | None) -> str:
    """The README.md of the package (markdown)."""
    config = model.config
    kind = "cells (instance ids)" if metadata.get("instances") else (
        "a foreground mask" if config.out_channels == 1 else f"{config.out_channels} classes")
    lines = [f"# {info.name or 'U-Net'}", "", info.description or "A U-Net trained with the unetile tool.", "",
             f"Segments {kind}: input {config.in_channels} channel(s), output the "
             + ("calibrated foreground probability (foreground where > 0.5)." if config.out_channels == 1
                else "class probabilities."), "", *_volume_lines(config, metadata), *_size_lines(metadata),
             "## How to run it", "",
             "- this tool: `unetile predict --model model.zip --input IMAGES --out PRED` "
             "(the checkpoint's own tiling, flips and threshold; `--instances` for cells);",
             "- Python: `bioimageio predict model.zip` or `bioimageio.core.predict` (tiles by the package's halo);",
             "- Fiji: deepImageJ > Install model (from this zip), then Run; ilastik: the Neural Network "
             "Classification workflow, loading this zip.", "",
             "## Training", "", *_training_lines(record, metadata), "",
             "## Validation", "", *_validation_lines(metadata), "",
             "## Limitations", "",
             "- Trained on the images described above; other microscopes, stains or scales need checking "
             "(compare with a few hand-labelled images) and usually fine-tuning (`unetile train --init`).",
             _normalization_line(metadata),
             f"- Cells: the package gives {_cells_line(metadata)} is done by `unetile predict --instances`.", "",
             "## Test image", "", f"`{sample}`" if sample else "a fixed random image (no training image was at hand)",
             "", "## Citation", "", f"{info.cite and 'See the citations of this package; ' or ''}"
             "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image "
             "Segmentation. MICCAI 2015. doi:10.1007/978-3-319-24574-4_28", ""]
    return "\n".join(lines)


def _normalization_line(metadata: dict) -> str:
    """How images are normalised, and where that goes wrong (`normalization.Normalization`)."""
    norm = Normalization.from_dict(metadata.get("normalization", {"low": 1.0, "high": 99.0}))
    return (f"- Each image is normalised by its own percentiles {norm.low:g} and {norm.high:g}; `unetile predict` "
            f"holds the upper value to at least half-way to the {norm.peak:g} percentile and "
            f"{PREDICTION_NOISE_FLOOR:g} sd of the pixel "
            "noise above the lower one, so that a nearly empty field's noise is not read as cells "
            "(`--normalization-floor`, `--normalization-noise-floor`). The package's `scale_range` cannot: "
            "on a nearly empty image use `unetile predict`. A saturated image normalises badly.")


def _cells_line(metadata: dict) -> str:
    """What the package's map holds and how `unetile predict --instances` cuts it into cells."""
    if metadata.get("cell_target") == "flows":
        return ("the cell probability and the flows; following the flows to their sinks (Cellpose's way; "
                "the flow-error cut and smallest cell in `config.unetile.metadata.instances`)")
    return ("the probability; cutting it into cells (seeded watershed, settings in "
            "`config.unetile.metadata.instances`)")


def _volume_lines(config, metadata: dict) -> list[str]:
    """What a 3D model's card adds: it segments volumes as a whole, at which voxel size."""
    if config.spatial_dims != 3:
        return []
    voxel = metadata.get("voxel_size")
    spacing = f" It was trained on voxels of {' x '.join(f'{v:g}' for v in voxel)} um (z, y, x)." if voxel else ""
    return ["A 3D U-Net: it segments volumes (z, y, x stacks; a TIFF stack's pages are z) as a whole, "
            f"not plane by plane, with 3D context on every axis.{spacing} Each volume is normalised by its own "
            "percentiles; the cover shows the test volume's middle z plane.", ""]


def _size_lines(metadata: dict) -> list[str]:
    """What the card of a model trained with a cell diameter says: the scale it expects."""
    diameter = metadata.get("cell_diameter")
    if not diameter:
        return []
    return [f"Trained on images rescaled so that their cells are {diameter:.0f} px across. `unetile predict` "
            "rescales every image the same way (`--diameter PX`, or estimated per image) and returns the result "
            "at the image's own size; other tools run the package at the image's own size, so rescale the image "
            f"first where its cells are not about {diameter:.0f} px across.", ""]


def _training_lines(record: dict, metadata: dict) -> list[str]:
    if not record:
        return [f"Preset `{metadata.get('preset', '?')}`; the run's config.json was not beside the checkpoint."]
    train = record.get("train", {})
    data = train.get("data") or f"{train.get('images')} / {train.get('labels')}"
    lines = [f"- data: `{data}` ({len(record.get('train_images', []))} training, "
             f"{len(record.get('val_images', []))} validation images; SHA-256 `{record.get('data_sha256', '?')}`)",
             f"- recipe: preset `{train.get('preset')}`, seed {train.get('seed')}, time limit "
             f"{train.get('time_limit')} s, {record.get('precision')} on {record.get('device')}",
             "", "The run's `config.json`:", "", "```json", json.dumps(record.get("train", {}), indent=1), "```"]
    return lines


def _validation_lines(metadata: dict) -> list[str]:
    val = metadata.get("val_tta") or metadata.get("val")
    if not val:
        return ["No validation figures were stored with this model."]
    lines = ["On the run's validation images (with test-time flips where marked `val_tta`), at epoch "
             f"{metadata.get('epoch', '?')}:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_VALIDATION_NAMES.get(k, k)} | {v:.4f} |" for k, v in val.items() if isinstance(v, float)]
    if "val_instances_mean_ap" in metadata:
        lines.append(f"| cells: mean AP (IoU 0.5-0.95) | {metadata['val_instances_mean_ap']:.4f} |")
    return lines + _recalibration_lines(metadata.get("calibrated_on"))


def _recalibration_lines(calibrated_on: dict | None) -> list[str]:
    """What `unetile calibrate` chose the threshold (and cell settings) on, where it did."""
    if not calibrated_on:
        return []
    what = "threshold and cell settings were" if calibrated_on.get("cells_chosen") else "threshold was"
    line = (f"The {what} chosen again afterwards by `unetile calibrate` on {calibrated_on.get('images', '?')} "
            f"labelled images (`{calibrated_on.get('data')}`, {'with' if calibrated_on.get('tta') else 'without'} "
            "test-time flips)")
    if "instances_mean_ap" in calibrated_on:
        line += f"; cells there: mean AP {calibrated_on['instances_mean_ap']:.4f}"
    return ["", line + "."]
