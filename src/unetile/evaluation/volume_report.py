"""A self-contained HTML report of a volume evaluation (``unetile evaluate --report`` on volumes).

One file, ``out_dir/index.html``: the per-volume table of `volumes.format_volume_table` and, per
volume, its middle z plane of the input (if given), the prediction and the truth as embedded PNGs,
and the cells overlay of the 2D report on the middle z plane and on the middle y plane (z drawn at
its physical length where the voxel size says): cells are matched in 3D, as the table counts them,
and each plane shows the outcome of the 3D objects it cuts. The warping overlay is planar and is
not drawn here.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UserInputError
from ..io import atomic_path
from . import metrics
from .report import (_CSS, CELL_COLOURS, _display_factor, _figure, _grey_image, _legend_html, _png_uri, _readable,
                     cells_overlay, matched_cells, outline_cells, prob8_of)
from .tables import size_table_html
from .volumes import volume_headings, volume_rows

__all__ = ["cells_on_planes", "write_volume_report"]


def write_volume_report(result: dict, preds: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                        images: Sequence[np.ndarray] | None, out_dir: str | Path, threshold: float = 0.5) -> Path:
    """Write ``out_dir/index.html`` (created if needed, replaced atomically) and return its path.

    ``result``: `volumes.evaluate_volume_pairs`' dict; ``preds``, ``truths``: the (Z, Y, X)
    volumes it was computed from, in its order; ``images``: the input volumes (Z, Y, X) or
    (3, Z, Y, X), or None."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir}: exists and is not a folder; give a folder for the report")
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [_volume_section(entry, result["objects"]["volumes"][i], np.asarray(preds[i]), np.asarray(truths[i]),
                                None if images is None else np.asarray(images[i]), threshold)
                for i, entry in enumerate(result["volumes"])]
    target = out_dir / "index.html"
    with atomic_path(target) as tmp:
        tmp.write_text(_page(result, sections, threshold), encoding="utf-8")
        _readable(tmp)
    return target


def _volume_section(entry: dict, cells: dict, pred: np.ndarray, truth: np.ndarray, image: np.ndarray | None,
                    threshold: float) -> str:
    """One volume: input, prediction and truth on its middle z plane, then its 3D cells (``cells``:
    the volume's `objects.cell_scores` summary) drawn on the middle z and y planes."""
    depth, h, w = truth.shape
    z = depth // 2
    factor = _display_factor(h, w)
    figs = []
    if image is not None:
        figs.append(_figure(_png_uri(_grey_image(image[..., z, :, :], factor)), f"input, z = {z}"))
    figs.append(_figure(_png_uri(_grey_image(prob8_of(pred[z]), factor)), f"prediction, z = {z}"))
    figs.append(_figure(_png_uri(_grey_image(truth[z] > 0, factor)), f"truth, z = {z} (white = object)"))
    at = cells["at"][0]
    counts = (f"{at['tp']} matched, {at['fn']} true cells unmatched, {at['fp']} predicted cells unmatched; "
              f"{cells['merged']} merged, {cells['split']} split")
    overlays = cells_on_planes(truth, pred, image, threshold, at["iou_threshold"], entry.get("voxel_size_um"))
    (z_caption, z_overlay), (y_caption, y_overlay) = overlays
    figs.append(_figure(_png_uri(z_overlay), f"3D cells at IoU {at['iou_threshold']:g} in the volume: {counts}; "
                        f"{z_caption}", big=True))
    figs.append(_figure(_png_uri(y_overlay), f"the same cells on {y_caption}", big=True))
    size = f"{depth}x{h}x{w} voxels (z, y, x)" + (f", shown at 1/{factor}" if factor > 1 else "")
    return (f'<div class="image"><h3>{html.escape(str(entry["name"]))} <small style="color:#777">({size})</small>'
            f'</h3><div class="row">{"".join(figs)}</div></div>')


def cells_on_planes(truth: np.ndarray, pred: np.ndarray, image: np.ndarray | None, threshold: float = 0.5,
                    iou: float = 0.5, voxel: Sequence[float] | None = None) -> list[tuple[str, Image.Image]]:
    """The 2D report's cells overlay of a volume (Z, Y, X), its cells matched in 3D at ``iou``, on the
    middle z plane and the middle y plane (z down, each plane repeated to its physical height where
    ``voxel`` (z, y, x) says) -> [(which plane, RGB picture at 1 px per voxel or less)], drawn on
    ``image`` (Z, Y, X) or (3, Z, Y, X) where given, else on the prediction."""
    true_ids, pred_ids = metrics.truth_labels(truth), metrics.prediction_labels(pred, threshold)
    matched = matched_cells(true_ids, pred_ids, iou)
    depth, h, w = truth.shape
    z, y, stretch = depth // 2, h // 2, _z_stretch(voxel)
    # The y plane: (Z * stretch, X), or (3, Z * stretch, X) colour.
    side = [None if a is None else np.repeat(a[..., y, :], stretch, axis=-2) for a in (true_ids, pred_ids, pred, image)]
    side_true, side_pred, side_map, side_image = side
    image_z = None if image is None else image[..., z, :, :]
    return [(f"plane z = {z}", cells_overlay(outline_cells(true_ids[z], pred_ids[z], *matched), image_z, pred[z],
                                             _display_factor(h, w))),
            (f"plane y = {y} (z down" + (f", each plane drawn {stretch} px high)" if stretch > 1 else ")"),
             cells_overlay(outline_cells(side_true, side_pred, *matched), side_image, side_map,
                           _display_factor(depth * stretch, w)))]


def _z_stretch(voxel: list[float] | None) -> int:
    """Display px per z plane on a y plane: the voxel's z / y size rounded (1 where unknown or finer)."""
    if not voxel or voxel[1] <= 0:
        return 1
    return max(1, round(voxel[0] / voxel[1]))


def _table_html(result: dict) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in volume_headings())
    rows = []
    table = volume_rows(result)
    for i, (name, values) in enumerate(table):
        row_class = ' class="mean"' if i == len(table) - 1 else ""  # the pooled row
        tds = "".join(f"<td>{v}</td>" for v in values)
        rows.append(f'<tr{row_class}><td class="name">{html.escape(name)}</td>{tds}</tr>')
    return (f'<table class="metrics"><thead><tr><th class="name">volume</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _page(result: dict, sections: list[str], threshold: float) -> str:
    n = len(result["volumes"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Volume segmentation evaluation</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Volume segmentation evaluation</h1>
<p class="meta">{n} volume{"s" if n != 1 else ""}; 3D objects matched one to one by IoU (AP = TP / (TP + FP + FN),
mAP over IoU 0.5-0.95, PQ at 0.5); maps thresholded at {threshold:g}. The pooled row sums the object
counts over the volumes and averages VOI, adapted Rand error, Dice and IoU.</p>
<h2>Metrics</h2>
{_table_html(result)}
{size_table_html(result["objects"]["by_size"])}
<h2>Volumes</h2>
<p class="meta">The middle z plane of each volume; cells matched in 3D at IoU 0.5, drawn on the middle z and y
planes (a true cell is unmatched in every plane it crosses).</p>
{_legend_html(CELL_COLOURS)}
{"".join(sections)}
</body>
</html>
"""
