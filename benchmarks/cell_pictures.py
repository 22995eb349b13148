"""A picture of several predictions' cells side by side against the truth, as `unetile evaluate
--report` draws them (its colours: green, the outline of a predicted cell matched at IoU 0.5; red,
a true cell left unmatched; yellow, the outline of a predicted cell left unmatched), for the docs.

    .venv/bin/python benchmarks/cell_pictures.py --labels runs/split_b/val/labels \\
        --images runs/split_b/val/images --name 1135 --out docs/img/volume-cells-1135.png \\
        3D=runs/vvp11b/seed0_pred_3d "2D maps=runs/vvp11b/seed0_pred_2d_map__tuned_3D_cells"

One column per prediction (NAME=FOLDER holding a file named as the label file ``--name``), after
the true cells outlined on the input. An image gives one row; a volume (its cells matched in 3D,
as `evaluate --dims 3` scores them) two: its middle z plane and its middle y plane
(`volume_report.cells_on_planes`). Each title gives that image's or volume's AP@0.5, found / true
cells, unmatched predicted cells and merges.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from unetile.evaluation import metrics
from unetile.evaluation.evaluate import to_plane
from unetile.evaluation.metrics.objects import cell_counts, summary
from unetile.evaluation.report import cell_classes, cells_overlay
from unetile.evaluation.volume_report import cells_on_planes
from unetile.evaluation.volumes import is_volume_file, read_volume
from unetile.io import read_image, voxel_size


def read_one(path: Path, role: str, volume: bool, keep_colour: bool = False) -> np.ndarray:
    """One file as `unetile evaluate` reads it: (H, W) / (Z, Y, X), or colour (3, ...) with ``keep_colour``."""
    return read_volume(path, role, keep_colour) if volume else to_plane(path, read_image(path)[0], role, keep_colour)


def named_file(folder: Path, name: str) -> Path:
    """The file of ``folder`` whose stem is ``name``."""
    found = sorted(folder.glob(f"{name}.*"))
    if not found:
        raise SystemExit(f"{folder}: no file named {name}.*")
    return found[0]


def title(name: str, pred: np.ndarray, truth: np.ndarray) -> str:
    """``name`` and the cell scores of one image or volume, in two lines."""
    scores = summary(cell_counts(metrics.truth_labels(truth), metrics.prediction_labels(pred)))
    at = scores["at"][0]
    return (f"{name}: AP@0.5 {scores['ap_50']:.3f}\n{at['tp']}/{at['n_true']} found, {at['fp']} false, "
            f"{scores['merged']} merged")


def panels(pred: np.ndarray, truth: np.ndarray, image: np.ndarray | None, voxel) -> list[Image.Image]:
    """The cells overlay of one prediction: one picture for an image, the z and y planes for a volume."""
    if truth.ndim == 3:
        return [picture for _, picture in cells_on_planes(truth, pred, image, voxel=voxel)]
    return [cells_overlay(cell_classes(pred, truth), image, pred)]


def draw(columns: list[tuple[str, list[Image.Image]]], out: Path, inches: float = 3.2) -> None:
    """Columns of (title, pictures top to bottom) -> one PNG, pixels drawn as blocks."""
    rows = len(columns[0][1])
    heights = [columns[0][1][r].height / columns[0][1][r].width for r in range(rows)]
    fig = Figure(figsize=(inches * len(columns), inches * sum(heights) + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(columns), squeeze=False, gridspec_kw={"height_ratios": heights})
    for c, (name, pictures) in enumerate(columns):
        for r, picture in enumerate(pictures):
            axes[r, c].imshow(np.asarray(picture), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[0, c].set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="+", help="NAME=FOLDER of cells (or maps) named as the labels")
    parser.add_argument("--labels", type=Path, required=True, help="the folder of true instance ids")
    parser.add_argument("--images", type=Path, required=True, help="the folder of the input images")
    parser.add_argument("--name", required=True, help="the file's name without its extension")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    label_file = named_file(args.labels, args.name)
    volume = is_volume_file(label_file)
    truth = read_one(label_file, "label", volume)
    image = read_one(named_file(args.images, args.name), "input image", volume, keep_colour=True)
    voxel = voxel_size(label_file) if volume else None
    # The truth against itself: every true cell outlined (green), on the planes the predictions are drawn on.
    columns = [(f"truth: {len(np.unique(truth[truth > 0]))} cells" + (", middle z and y planes" if volume else ""),
                panels(truth, truth, image, voxel))]
    for text in args.predictions:
        name, folder = text.split("=", 1)
        pred = read_one(named_file(Path(folder), args.name), "prediction", volume)
        columns.append((title(name, pred, truth), panels(pred, truth, image, voxel)))
    draw(columns, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
