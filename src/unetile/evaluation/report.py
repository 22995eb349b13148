"""A self-contained HTML report of an evaluation: one file, pictures embedded as PNG data URIs.

`write_report` writes ``out_dir/index.html`` holding the metrics table, the metric-vs-
threshold curves and, per image, the input (if given), the prediction, the truth and an
error overlay.  The page loads nothing from anywhere (no scripts, no fonts, no links to
other files), so it can be mailed or archived as it is.

The overlay colours every pixel where ``pred > threshold`` differs from ``truth > 0``.  The
truth is then warped toward the prediction by simple-point flips (`unetile.metrics.warp_truth`,
as in the warping error): pixels that warping can absorb are boundary-position errors that do
not change the topology; the rest are topological errors, classified as splits, merges or
other (objects or holes added or removed) as in Fiji's ``WarpingError``.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from ..errors import UserInputError
from ..io import atomic_path
from . import metrics
from .metrics import objects, warping
from .tables import CELL_COLUMNS, cell_rows, size_table_html

__all__ = ["OVERLAY_COLOURS", "error_classes", "overlay_rgb", "write_report"]

MAX_DISPLAY = 512  # images larger than this (either side) are downscaled for display

# Overlay classes, in increasing priority (a downscaled pixel shows its highest class).
_NONE, _PIXEL, _OTHER, _SPLIT, _MERGE = range(5)
#: Overlay colours (RGB) and their legend text, by class.
OVERLAY_COLOURS: dict[int, tuple[tuple[int, int, int], str]] = {
    _PIXEL: ((255, 200, 0), "pixel disagreement (boundary position; no topology change)"),
    _OTHER: ((0, 200, 80), "object or hole added / removed"),
    _SPLIT: ((230, 30, 200), "split (a true cell cut in two)"),
    _MERGE: ((0, 170, 255), "merge (two true cells joined)"),
}

# Cell overlay classes, in increasing priority; colours and legend text.
_MATCHED, _MISSED, _FALSE = 1, 2, 3
CELL_COLOURS: dict[int, tuple[tuple[int, int, int], str]] = {
    _MATCHED: ((0, 200, 80), "outline of a predicted cell matched to a true cell (IoU >= 0.5)"),
    _MISSED: ((255, 60, 60), "true cell without a match (missed, merged or split)"),
    _FALSE: ((255, 200, 0), "outline of a predicted cell without a match (extra, a merge or a piece of a split)"),
}

_COLUMNS = (
    "pixel_error", "isbi_pixel_error", "rand_error", "adapted_rand_error", "v_rand",
    "v_info", "warping_error", "dice", "iou",
)
_CURVE_STYLE = {
    "isbi_pixel_error": ("tab:orange", "o"),
    "rand_error": ("tab:red", "s"),
    "warping_error": ("tab:purple", "^"),
    "v_rand": ("tab:blue", "o"),
    "v_info": ("tab:green", "s"),
}


# --------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------


def error_classes(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-pixel error class ``(H, W)`` uint8: 0 none, 1 pixel disagreement removed by
    warping, 2 other topological error, 3 split, 4 merge (see the module docstring)."""
    prob = metrics.as_probability(pred)
    fg = prob > threshold
    out = np.where(fg != (np.asarray(truth) > 0), _PIXEL, _NONE).astype(np.uint8)
    warp = metrics.warp_truth(pred, truth, threshold)
    if len(warp.mismatches):
        # metrics' own mismatch classifier (Fiji classifyMismatches2d), so the colours agree
        # with the split / merge counts of the warping error.
        kinds = warping.classify_mismatches(warp.warped, warp.mismatches)
        code = np.full(len(kinds), _OTHER, dtype=np.uint8)
        code[kinds == warping.SPLIT] = _SPLIT
        code[kinds == warping.MERGE] = _MERGE
        ys, xs = warp.mismatches[:, 0], warp.mismatches[:, 1]
        out[ys, xs] = code
    return out


def cell_classes(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5, iou: float = 0.5) -> np.ndarray:
    """Per-pixel cell class (H, W) uint8 for the cells overlay: 0 none, 1 the outline of a
    matched predicted cell, 2 an unmatched true cell (filled), 3 the outline of an unmatched
    predicted cell (cells matched one to one at ``iou``, as `metrics.cell_scores` does)."""
    true_ids, pred_ids = metrics.truth_labels(truth), metrics.prediction_labels(pred, threshold)
    return outline_cells(true_ids, pred_ids, *matched_cells(true_ids, pred_ids, iou))


def matched_cells(true_ids: np.ndarray, pred_ids: np.ndarray, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The ids of the true and of the predicted cells that `objects.match` pairs one to one at
    ``iou`` -> (true ids, predicted ids); the labels are (H, W) images or (Z, Y, X) volumes."""
    table = objects.overlaps(true_ids, pred_ids)
    pairs, _ = objects.match(table, iou)
    return table.true_ids[pairs[:, 0]], table.pred_ids[pairs[:, 1]]


def outline_cells(true_ids: np.ndarray, pred_ids: np.ndarray, matched_true: np.ndarray,
                  matched_pred: np.ndarray) -> np.ndarray:
    """`cell_classes` of one plane (H, W) of labels whose matched ids were found elsewhere (a
    volume's cells are matched in 3D and drawn plane by plane)."""
    matched = np.isin(pred_ids, matched_pred) & (pred_ids > 0)
    out = np.zeros(true_ids.shape, np.uint8)
    out[(true_ids > 0) & ~np.isin(true_ids, matched_true)] = _MISSED
    out[find_boundaries(np.where(matched, pred_ids, 0), mode="inner")] = _MATCHED
    # Outlines, so that a true cell missed under an unmatched predicted one stays visible.
    out[find_boundaries(np.where(matched, 0, pred_ids), mode="inner")] = _FALSE
    return out


def overlay_background(image: np.ndarray | None, prob8: np.ndarray) -> np.ndarray:
    """What the overlays are drawn on: the input (H, W) or (3, H, W) as grey uint8, else the
    prediction ``prob8`` (H, W) uint8."""
    if image is None:
        return prob8
    return _to_grey8(image) if image.ndim == 2 else _to_grey8(image[:3].astype(np.float64).mean(axis=0))


def cells_overlay(classes: np.ndarray, image: np.ndarray | None, pred: np.ndarray, factor: int = 1) -> Image.Image:
    """The cells overlay of ``classes`` (`cell_classes` / `outline_cells`, (H, W)) on the input
    (H, W) or (3, H, W), else on the prediction (H, W); downscaled by ``factor``."""
    return overlay_rgb(overlay_background(image, prob8_of(pred)), classes, factor, widen=0, colours=CELL_COLOURS)


def prob8_of(pred: np.ndarray) -> np.ndarray:
    """A prediction (map, mask or labels; (H, W)) as uint8 for display, 255 = certain object."""
    return (metrics.as_probability(pred) * 255).round().astype(np.uint8)


def _display_factor(h: int, w: int) -> int:
    return max(1, int(np.ceil(max(h, w) / MAX_DISPLAY)))


def _to_grey8(array: np.ndarray) -> np.ndarray:
    """Any image -> uint8 for display: uint8 as is, else stretched over its 0.5-99.5 %."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    f = a.astype(np.float64)
    finite = f[np.isfinite(f)]
    if finite.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return (np.clip((np.nan_to_num(f, nan=lo) - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def _display_size(h: int, w: int, factor: int) -> tuple[int, int]:
    return -(-h // factor), -(-w // factor)  # ceil


def _shrink(img: Image.Image, factor: int) -> Image.Image:
    if factor == 1:
        return img
    h, w = _display_size(img.height, img.width, factor)
    return img.resize((w, h), Image.Resampling.BOX)


def _max_pool(classes: np.ndarray, factor: int) -> np.ndarray:
    """Downscale a class map keeping the highest class in each block (errors stay visible)."""
    if factor == 1:
        return classes
    h, w = classes.shape
    hh, ww = _display_size(h, w, factor)
    padded = np.zeros((hh * factor, ww * factor), dtype=classes.dtype)
    padded[:h, :w] = classes
    return padded.reshape(hh, factor, ww, factor).max(axis=(1, 3))


def _png_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grey_image(array: np.ndarray, factor: int) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3:  # (3, H, W) colour input
        rgb = np.stack([_to_grey8(c) for c in a[:3]], axis=-1) if a.dtype != np.uint8 else np.moveaxis(a[:3], 0, -1)
        return _shrink(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), factor)
    return _shrink(Image.fromarray(_to_grey8(a), "L"), factor)


def _widen_topological(cls: np.ndarray, radius: int) -> np.ndarray:
    """Grow the topological classes by ``radius`` pixels so that single-pixel splits and
    merges are visible at page size (pixel disagreements stay one pixel wide)."""
    if radius <= 0:
        return cls
    out = cls.copy()
    square = np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)
    for k in (_OTHER, _SPLIT, _MERGE):  # ascending priority: merges end on top
        mask = cls == k
        if mask.any():
            grown = ndi.binary_dilation(mask, structure=square)
            out[grown & (out <= k)] = k
    return out


def overlay_rgb(
    background: np.ndarray, classes: np.ndarray, factor: int = 1, widen: int = 2,
    colours: dict[int, tuple[tuple[int, int, int], str]] = OVERLAY_COLOURS,
) -> Image.Image:
    """The error overlay: ``background`` (H, W) uint8 dimmed to grey, coloured where
    ``classes`` (from `error_classes`, or `cell_classes` with ``colours=CELL_COLOURS``) is
    non-zero; downscaled by ``factor`` (max-pooled); topological errors drawn ``widen``
    display pixels wider on each side."""
    bg = _shrink(Image.fromarray(background, "L"), factor)
    cls = _widen_topological(_max_pool(classes, factor), widen)
    base = (np.asarray(bg, dtype=np.float64) * 0.45 + 25).astype(np.uint8)
    rgb = np.repeat(base[..., None], 3, axis=-1)
    for k, (colour, _) in colours.items():
        rgb[cls == k] = colour
    return Image.fromarray(rgb, "RGB")


def _curves_png(result: dict) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_err, ax_score = fig.subplots(1, 2)
    curves = result["curves"]
    best = result["best_threshold"]
    for ax, group, title, ylabel in (
        (ax_err, ("isbi_pixel_error", "rand_error", "warping_error"), "errors (lower is better)", "error"),
        (ax_score, ("v_rand", "v_info"), "scores (higher is better)", "score"),
    ):
        for m in group:
            if m not in curves:
                continue
            colour, marker = _CURVE_STYLE.get(m, ("black", "o"))
            t, v = np.asarray(curves[m], dtype=np.float64).T
            ax.plot(t, v, marker=marker, ms=4, color=colour, label=m)
            if m in best:
                bt = best[m]
                bv = v[np.argmin(np.abs(t - bt))]
                ax.plot([bt], [bv], marker="*", ms=14, color=colour, mec="black", mew=0.6,
                        linestyle="none")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("threshold")
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("metric vs threshold (star: best threshold)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
       color: #222; background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 8px 0; font-family: monospace; }
p.meta { color: #555; margin-top: 0; }
table.metrics { border-collapse: collapse; font-size: 13px; }
table.metrics th, table.metrics td { padding: 3px 9px; text-align: right;
       border-bottom: 1px solid #e2e2e2; font-variant-numeric: tabular-nums; }
table.metrics th { background: #eee; font-weight: 600; }
table.metrics td.name, table.metrics th.name { text-align: left; font-family: monospace; }
table.metrics tr.mean td { font-weight: 700; border-top: 2px solid #888; background: #f1f1f1; }
.curves img { max-width: 100%; border: 1px solid #ddd; background: white; }
.legend { display: flex; flex-wrap: wrap; gap: 16px; font-size: 13px; margin: 8px 0 12px 0; }
.legend span.sw { display: inline-block; width: 14px; height: 14px; margin-right: 6px;
       vertical-align: -2px; border: 1px solid #555; }
.image { background: white; border: 1px solid #ddd; padding: 12px; margin-bottom: 18px; }
.row { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; }
figure img { width: 240px; height: auto; display: block; border: 1px solid #ccc;
       background: #000; }
figure.big img { width: 512px; }
figcaption { font-size: 12px; color: #444; margin-top: 3px; max-width: 240px; }
figure.big figcaption { max-width: 512px; }
.scores { font-size: 12px; font-family: monospace; color: #333; margin-top: 8px; }
"""


def _cell(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _table_html(result: dict) -> str:
    topo = result.get("warping_topology") or {}
    splits, mergers = topo.get("splits"), topo.get("mergers")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
    if splits is not None:
        head += "<th>splits</th><th>merges</th>"
    rows = []
    for i, e in enumerate(result["images"]):
        cells = "".join(
            f"<td>{_cell(None if c == 'isbi_pixel_error' else e.get(c))}</td>" for c in _COLUMNS
        )
        if splits is not None:
            cells += f"<td>{splits[i]}</td><td>{mergers[i]}</td>"
        rows.append(f'<tr><td class="name">{html.escape(str(e["name"]))}</td>{cells}</tr>')
    mean = "".join(f"<td>{_cell(result['mean'].get(c))}</td>" for c in _COLUMNS)
    if splits is not None:
        mean += f"<td>{sum(splits)}</td><td>{sum(mergers)}</td>"
    rows.append(f'<tr class="mean"><td class="name">mean</td>{mean}</tr>')
    return (
        '<table class="metrics"><thead><tr><th class="name">image</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _cells_table_html(result: dict) -> str:
    if "cells" not in result:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in CELL_COLUMNS)
    rows = []
    for name, values in cell_rows(result):
        row_class = ' class="mean"' if name == "pooled" else ""
        tds = "".join(f"<td>{v}</td>" for v in values)
        rows.append(f'<tr{row_class}><td class="name">{html.escape(name)}</td>{tds}</tr>')
    return ('<h2>Cells</h2><p class="meta">Cells matched one to one by IoU; AP = TP / (TP + FP + FN), mAP over '
            'IoU 0.5-0.95, PQ at 0.5; the pooled row sums the counts over the images.</p>'
            f'<table class="metrics"><thead><tr><th class="name">image</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{size_table_html(result['cells']['by_size'])}")


def _legend_html(colours: dict[int, tuple[tuple[int, int, int], str]] = OVERLAY_COLOURS) -> str:
    items = []
    for colour, text in colours.values():
        items.append(
            f'<div><span class="sw" style="background: rgb{colour}"></span>{html.escape(text)}</div>'
        )
    return '<div class="legend">' + "".join(items) + "</div>"


def _figure(uri: str, caption: str, big: bool = False) -> str:
    cls = ' class="big"' if big else ""
    return (f'<figure{cls}><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(
    result: dict,
    preds: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    images: Sequence[np.ndarray] | None,
    out_dir: str | Path,
    threshold: float = 0.5,
) -> Path:
    """Write the self-contained HTML report ``out_dir/index.html`` and return its path.

    ``result``: the `unetile.evaluation.evaluate.evaluate_paths` / `metrics.evaluate_stack` dict;
    ``preds``, ``truths``: the ``(H, W)`` maps it was computed from, in its image order;
    ``images``: the input images ``(H, W)`` or ``(3, H, W)`` in the same order, or None;
    ``threshold``: where the overlay binarises the predictions.  ``out_dir`` is created if
    needed; ``index.html`` is replaced atomically.
    """
    out_dir = Path(out_dir)
    entries = result["images"]
    if not (len(preds) == len(truths) == len(entries)):
        raise ValueError(
            f"{len(preds)} predictions, {len(truths)} truths for {len(entries)} results"
        )
    if images is not None and len(images) != len(entries):
        raise ValueError(f"{len(images)} input images for {len(entries)} results")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir}: exists and is not a folder; give a folder for the report")
    out_dir.mkdir(parents=True, exist_ok=True)

    cells = result["cells"]["images"] if "cells" in result else [None] * len(entries)
    sections = [_image_section(entry, np.asarray(preds[i]), np.asarray(truths[i]),
                               None if images is None else np.asarray(images[i]), threshold, cells[i])
                for i, entry in enumerate(entries)]
    target = out_dir / "index.html"
    with atomic_path(target) as tmp:
        tmp.write_text(_page(result, sections, threshold), encoding="utf-8")
        _readable(tmp)
    return target


def _image_section(entry: dict, pred: np.ndarray, truth: np.ndarray, image: np.ndarray | None,
                   threshold: float, cells: dict | None = None) -> str:
    """One image's HTML: input, prediction, truth, the error overlay, the cells overlay
    (with ``cells``, the image's `metrics.cell_scores` summary) and its scores."""
    h, w = truth.shape
    factor = _display_factor(h, w)
    prob8 = prob8_of(pred)
    classes = error_classes(pred, truth, threshold)
    counts = {k: int(np.count_nonzero(classes == k)) for k in OVERLAY_COLOURS}
    figs = []
    if image is not None:
        figs.append(_figure(_png_uri(_grey_image(image, factor)), "input"))
    figs.append(_figure(_png_uri(_grey_image(prob8, factor)), "prediction"))
    figs.append(_figure(_png_uri(_grey_image(truth > 0, factor)), "truth (white = interior)"))
    background = overlay_background(image, prob8)
    figs.append(_figure(
        _png_uri(overlay_rgb(background, classes, factor)),
        f"errors at threshold {threshold:g}: {counts[_PIXEL]} boundary px, "
        f"{counts[_SPLIT]} split px, {counts[_MERGE]} merge px, {counts[_OTHER]} other px "
        "(topological errors drawn enlarged)",
        big=True,
    ))
    if cells is not None:
        at = cells["at"][0]
        figs.append(_figure(
            _png_uri(cells_overlay(cell_classes(pred, truth, threshold, at["iou_threshold"]), image, pred, factor)),
            f"cells at IoU {at['iou_threshold']:g}: {at['tp']} matched, {at['fn']} true cells unmatched, "
            f"{at['fp']} predicted cells unmatched; {cells['merged']} merged, {cells['split']} split",
            big=True,
        ))
    size = f"{w}x{h} px" + (f", shown at 1/{factor}" if factor > 1 else "")
    scores = "  ".join(f"{c} {entry[c]:.4f}" for c in _COLUMNS if c != "isbi_pixel_error" and c in entry)
    return (f'<div class="image"><h3>{html.escape(str(entry["name"]))} '
            f'<small style="color:#777">({size})</small></h3>'
            f'<div class="row">{"".join(figs)}</div><div class="scores">{html.escape(scores)}</div></div>')


def _page(result: dict, sections: list[str], threshold: float) -> str:
    """The whole HTML page: summary, metrics table, threshold curves, then one section per image."""
    entries = result["images"]
    best = ", ".join(f"{html.escape(m)} {t:g}" for m, t in result["best_threshold"].items())
    topo = result.get("warping_topology")
    topo_line = ""
    if topo:
        topo_line = (f"<p class=\"meta\">Splits / merges: counted after warping at threshold "
                     f"{topo['threshold']:g} (the warping error's best).</p>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Segmentation evaluation</title>
<style>{_CSS}</style>
</head>
<body>
<h1>Segmentation evaluation</h1>
<p class="meta">{len(entries)} image{"s" if len(entries) != 1 else ""}; pixel_error,
adapted_rand_error, dice and iou at threshold {threshold:g}; swept metrics at their best
threshold ({best}). isbi_pixel_error is pooled over the stack (mean row only).</p>
<h2>Metrics</h2>
{_table_html(result)}
{topo_line}
{_cells_table_html(result)}
<h2>Metrics vs threshold</h2>
<div class="curves"><img src="{_curves_png(result)}" alt="metric vs threshold curves"></div>
<h2>Images</h2>
<p class="meta">Overlay: the prediction thresholded at {threshold:g} against the truth;
errors that warping the truth cannot remove change the topology.</p>
{_legend_html()}
{_legend_html(CELL_COLOURS) if "cells" in result else ""}
{"".join(sections)}
</body>
</html>
"""


def _readable(path: Path) -> None:
    """Give a file the usual 0666 & ~umask mode (atomic_path's temporary file is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
