"""A self-contained HTML report of a volume evaluation (``unetile evaluate --report`` on volumes).

One file, ``out_dir/index.html``: the per-volume table of `volumes.format_volume_table` and, per
volume, its middle z plane of the input (if given), the prediction and the truth as embedded PNGs.
The 2D report's error overlays (warping, cell outlines) are planar and are not drawn here.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserInputError
from ..io import atomic_path
from . import metrics
from .report import _CSS, _display_factor, _figure, _grey_image, _png_uri, _readable
from .volumes import volume_headings, volume_rows

__all__ = ["write_volume_report"]


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
    sections = [_volume_section(entry["name"], np.asarray(preds[i]), np.asarray(truths[i]),
                                None if images is None else np.asarray(images[i]))
                for i, entry in enumerate(result["volumes"])]
    target = out_dir / "index.html"
    with atomic_path(target) as tmp:
        tmp.write_text(_page(result, sections, threshold), encoding="utf-8")
        _readable(tmp)
    return target


def _volume_section(name: str, pred: np.ndarray, truth: np.ndarray, image: np.ndarray | None) -> str:
    """One volume's middle z plane: input, prediction, truth."""
    depth, h, w = truth.shape
    z = depth // 2
    factor = _display_factor(h, w)
    figs = []
    if image is not None:
        figs.append(_figure(_png_uri(_grey_image(image[..., z, :, :], factor)), f"input, z = {z}"))
    prob8 = (metrics.as_probability(pred[z]) * 255).round().astype(np.uint8)
    figs.append(_figure(_png_uri(_grey_image(prob8, factor)), f"prediction, z = {z}"))
    figs.append(_figure(_png_uri(_grey_image(truth[z] > 0, factor)), f"truth, z = {z} (white = object)"))
    size = f"{depth}x{h}x{w} voxels (z, y, x)" + (f", shown at 1/{factor}" if factor > 1 else "")
    return (f'<div class="image"><h3>{html.escape(str(name))} <small style="color:#777">({size})</small></h3>'
            f'<div class="row">{"".join(figs)}</div></div>')


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
<h2>Volumes</h2>
<p class="meta">The middle z plane of each volume.</p>
{"".join(sections)}
</body>
</html>
"""
