"""`unetile evaluate`: score prediction maps against truth labels read from files.

``pred`` and ``labels`` are each a folder of images, a multi-page TIFF stack or a single
image.  How slices are paired:

* folder vs folder: by file name without its suffix (``pred/00.png`` with ``labels/00.png``
  or ``labels/00.tif``); every file must have a partner, and paired stacks must have the
  same number of pages;
* anything else (stack vs stack, folder vs stack, image vs image): slice by slice in order
  (a folder's files sorted by name, then their pages); the counts must be equal.

Image names are the file stems (``"00"``), with ``[i]`` appended for page ``i`` of a
multi-page file (``"train-volume[3]"``); a folder's names are preferred over a stack's.

Prediction maps are read as `unetile.metrics` reads arrays: ``uint8`` = probability * 255,
float = probability in [0, 1], 0/1 masks, integer label images.  A two-channel map (the
float TIFF that ``unetile predict`` writes for two classes) is scored on its channel 1, the
foreground probability.  Any problem raises `UserInputError` naming the file.

Volumes (label files with a Z axis or a z voxel size, or ``--dims 3``) are scored whole, in 3D,
one volume a file: `unetile.evaluation.volumes`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..io import atomic_path, list_images, read_image
from . import metrics
from .report import _readable
from .tables import CELL_COLUMNS, aligned, cell_rows, format_size_table

__all__ = [
    "TABLE_COLUMNS",
    "Pairs",
    "load_pairs",
    "load_matching_images",
    "evaluate_paths",
    "format_table",
    "format_cells_table",
    "match_stems",
    "check_values",
    "to_plane",
    "write_json",
    "run_evaluate",
]

#: Columns of `format_table`, in order (``isbi_pixel_error`` only has a stack value).
TABLE_COLUMNS: tuple[str, ...] = metrics.METRIC_NAMES
_STACK_ONLY = ("isbi_pixel_error",)


# --------------------------------------------------------------------------------------
# Reading and pairing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slice:
    name: str  # display name: stem, or stem[i] for page i of a multi-page file
    file: Path
    page: int  # page in the file
    npages: int
    pos: int  # position in its side's order (files by name, then pages)
    array: np.ndarray  # (H, W), or (C, H, W) for colour input images

    def where(self) -> str:
        return f"{self.file} (page {self.page})" if self.npages > 1 else str(self.file)


@dataclass(frozen=True)
class _Side:
    path: Path
    is_folder: bool
    files: list[tuple[Path, list[_Slice]]]

    def slices(self) -> list[_Slice]:
        return [s for _, sl in self.files for s in sl]


@dataclass(frozen=True)
class Pairs:
    """Paired slices, in the order of the prediction side: ``names[i]``, ``preds[i]``
    ``(H, W)``, ``truths[i]`` ``(H, W)``, and where each came from (for messages)."""

    names: list[str]
    preds: list[np.ndarray]
    truths: list[np.ndarray]
    pred_sources: list[str]
    truth_sources: list[str]


def to_plane(file: Path, page: np.ndarray, role: str, keep_colour: bool) -> np.ndarray:
    """(C, H, W) page -> the (H, W) plane to score (or (C, H, W) colour for display); the same
    for a (C, Z, Y, X) volume."""
    c = page.shape[0]
    if c == 1:
        return page[0]
    if keep_colour and c in (3, 4):
        return page[:3]
    if role == "prediction" and c == 2:
        return page[1]  # two-class probabilities: channel 1 is the foreground
    if c in (3, 4):
        rgb = page[:3]
        if np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2]):
            return rgb[0]  # grey stored as RGB(A)
    raise UserInputError(
        f"{file}: the {role} has {c} channels; expected a single-channel (grey) image"
        + (" or a two-class probability map" if role == "prediction" else "")
    )


def _load_side(path: str | Path, role: str, keep_colour: bool = False) -> _Side:
    path = Path(path)
    files = list_images(path)  # raises UserInputError for a missing path / empty folder
    out: list[tuple[Path, list[_Slice]]] = []
    pos = 0
    for f in files:
        stack = read_image(f)  # (N, C, H, W)
        n = stack.shape[0]
        slices = []
        for i in range(n):
            plane = to_plane(f, stack[i], role, keep_colour)
            name = f.stem if n == 1 else f"{f.stem}[{i}]"
            slices.append(_Slice(name, f, i, n, pos, plane))
            pos += 1
        out.append((f, slices))
    return _Side(path, path.is_dir(), out)


def _by_stem(files: list[Path], role: str) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for f in files:
        if f.stem in table:
            raise UserInputError(
                f"{f}: two {role} files are named {f.stem!r} ({table[f.stem].name} and "
                f"{f.name}); keep one"
            )
        table[f.stem] = f
    return table


def match_stems(a_files: list[Path], b_files: list[Path], a_path: Path, b_path: Path,
                a_role: str, b_role: str) -> list[tuple[Path, Path]]:
    """Files of two folders paired by name without suffix, in the order of ``a_files``; every
    file must have a partner (`UserInputError` naming the orphans otherwise)."""
    a_map, b_map = _by_stem(a_files, a_role), _by_stem(b_files, b_role)
    missing = [a_map[s] for s in a_map if s not in b_map]
    if missing:
        raise UserInputError(f"{_list_names(missing)}: no {b_role} file of the same name in {b_path}")
    extra = [b_map[s] for s in b_map if s not in a_map]
    if extra:
        raise UserInputError(f"{_list_names(extra)}: no {a_role} file of the same name in {a_path}")
    return [(a_map[s], b_map[s]) for s in a_map]


def _list_names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _pair_sides(
    a: _Side, b: _Side, a_role: str, b_role: str
) -> list[tuple[str, _Slice, _Slice]]:
    """Pair the slices of ``a`` with those of ``b``: ``[(name, a_slice, b_slice)]`` in the
    order of ``a``.  Raises `UserInputError` naming the files on any mismatch."""
    pairs: list[tuple[str, _Slice, _Slice]] = []
    if a.is_folder and b.is_folder:
        a_slices, b_slices = dict(a.files), dict(b.files)
        for fa, fb in match_stems([f for f, _ in a.files], [f for f, _ in b.files], a.path, b.path, a_role, b_role):
            sa, sb = a_slices[fa], b_slices[fb]
            if len(sa) != len(sb):
                raise UserInputError(
                    f"{fa}: {len(sa)} pages but the {b_role} {fb} has {len(sb)}"
                )
            pairs.extend((x.name, x, y) for x, y in zip(sa, sb))
    else:
        sa, sb = a.slices(), b.slices()
        if len(sa) != len(sb):
            raise UserInputError(
                f"{a.path}: {len(sa)} {a_role} slices but the {b_role} {b.path} has "
                f"{len(sb)}; they are paired in order, so the counts must be equal"
            )
        names_from_b = b.is_folder and not a.is_folder
        pairs.extend(((y.name if names_from_b else x.name), x, y) for x, y in zip(sa, sb))
    for _, x, y in pairs:
        if x.array.shape[-2:] != y.array.shape[-2:]:
            raise UserInputError(
                f"{x.where()}: {a_role} is {x.array.shape[-2]}x{x.array.shape[-1]} pixels "
                f"but the {b_role} {y.where()} is {y.array.shape[-2]}x{y.array.shape[-1]}"
            )
    pairs.sort(key=lambda p: p[1].pos)
    return pairs


def check_values(array: np.ndarray, where: str, role: str) -> None:
    """Re-raise metrics' value checks (range, NaN, dtype) with the file name ``where`` in front."""
    try:
        if role == "prediction":
            metrics.as_probability(array)
        else:
            metrics.truth_labels(array)
    except UserInputError as e:
        raise UserInputError(f"{where}: {e}") from e


def load_pairs(pred: str | Path, labels: str | Path) -> Pairs:
    """Read and pair prediction maps and truth labels (see the module docstring)."""
    a = _load_side(pred, "prediction")
    b = _load_side(labels, "label")
    pairs = _pair_sides(a, b, "prediction", "label")
    for _, x, y in pairs:
        check_values(x.array, x.where(), "prediction")
        check_values(y.array, y.where(), "label")
    return Pairs(
        names=[n for n, _, _ in pairs],
        preds=[x.array for _, x, _ in pairs],
        truths=[y.array for _, _, y in pairs],
        pred_sources=[x.where() for _, x, _ in pairs],
        truth_sources=[y.where() for _, _, y in pairs],
    )


def load_matching_images(images: str | Path, pred: str | Path) -> list[np.ndarray]:
    """Input images paired with the prediction side, in `load_pairs` order: ``(H, W)`` grey
    or ``(3, H, W)`` colour arrays in their stored dtype."""
    a = _load_side(pred, "prediction")
    b = _load_side(images, "input image", keep_colour=True)
    return [y.array for _, _, y in _pair_sides(a, b, "prediction", "input image")]


# --------------------------------------------------------------------------------------
# Evaluation and output
# --------------------------------------------------------------------------------------


def _evaluate(pairs: Pairs, threshold: float) -> dict:
    return metrics.evaluate_stack(pairs.preds, pairs.truths, threshold=threshold, names=pairs.names)


def evaluate_paths(pred: str | Path, labels: str | Path, threshold: float = 0.5) -> dict:
    """Every metric of `unetile.metrics.evaluate_stack` for the maps in ``pred`` against the
    truth in ``labels`` (folders, stacks or single images; see the module docstring).

    Returns the `evaluate_stack` dict with the images' real names.
    """
    return _evaluate(load_pairs(pred, labels), threshold)


def _fmt(v: float) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"


def format_table(result: dict, threshold: float | None = None) -> str:
    """A fixed-width text table of an `evaluate_paths` result.

    One row per image and a final ``mean`` row; ``isbi_pixel_error`` is pooled over the
    stack, so only the mean row shows it.  Below: the best threshold of each swept metric
    and the split / merge counts left after warping.  ``threshold``, if given, is named as
    the threshold of the unswept metrics.
    """
    names = [str(e["name"]) for e in result["images"]] + ["mean"]
    name_w = max(len("image"), *(len(n) for n in names))
    widths = [max(len(c), 6) for c in TABLE_COLUMNS]

    def row(first: str, cells: list[str]) -> str:
        parts = [first.ljust(name_w)] + [c.rjust(w) for c, w in zip(cells, widths)]
        return "  ".join(parts).rstrip()

    lines = [row("image", list(TABLE_COLUMNS))]
    lines.append("-" * len(lines[0]))
    for e in result["images"]:
        cells = ["-" if c in _STACK_ONLY else _fmt(e[c]) for c in TABLE_COLUMNS]
        lines.append(row(str(e["name"]), cells))
    lines.append("-" * len(lines[0]))
    lines.append(row("mean", [_fmt(result["mean"][c]) for c in TABLE_COLUMNS]))
    best = ", ".join(f"{m} {t:g}" for m, t in result["best_threshold"].items())
    lines.append("")
    lines.append(f"best thresholds: {best}")
    note = "swept metrics are reported at their best threshold"
    if threshold is not None:
        note += f"; pixel_error, adapted_rand_error, dice, iou at threshold {threshold:g}"
    lines.append(f"({note})")
    topo = result.get("warping_topology")
    if topo:
        lines.append(
            f"warping at threshold {topo['threshold']:g}: {sum(topo['splits'])} split and "
            f"{sum(topo['mergers'])} merge errors in all"
        )
    if "cells" in result:
        lines += ["", format_cells_table(result)]
    return "\n".join(lines)


def format_cells_table(result: dict) -> str:
    """The object metrics of an `evaluate_paths` result: one row per image and the pooled row."""
    text = aligned([("image", [h for _, h in CELL_COLUMNS]), *cell_rows(result)])
    ts = result["cells"]["iou_thresholds"]
    head = (f"cells, matched one to one by IoU (AP = TP / (TP + FP + FN); mAP over IoU {ts[0]:g}-{ts[-1]:g}; "
            "PQ at 0.5; pooled: counts summed over the images)")
    return "\n".join([head, text[0], "-" * len(text[0]), *text[1:-1], "-" * len(text[0]), text[-1], "",
                      format_size_table(result["cells"]["by_size"])])


def write_json(result: dict, path: str | Path) -> Path:
    """Write ``result`` as indented JSON, atomically (a crash leaves no partial file)."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder; give a file name for the JSON output")
    if not path.parent.is_dir():
        raise UserInputError(f"{path}: the folder {path.parent} does not exist")
    text = json.dumps(result, indent=2, allow_nan=True) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        _readable(tmp)
    return path


def run_evaluate(
    pred: str | Path,
    labels: str | Path,
    threshold: float = 0.5,
    json_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    images: str | Path | None = None,
    dims: str = "auto",
) -> dict:
    """The whole ``unetile evaluate`` command: evaluate, print the table, write the JSON and
    the HTML report if asked.  ``images`` (input images, paired with ``pred`` like the
    labels) are shown in the report.  ``dims``: "2" scores planes, "3" volumes (one a file,
    `volumes.run_evaluate_volumes`), "auto" as the label files say (`volumes.resolve_dims`).
    Returns the result dict."""
    if not (0.0 <= float(threshold) <= 1.0):
        raise UserInputError(f"--threshold {threshold}: must be between 0 and 1")
    if images is not None and report_dir is None:
        raise UserInputError("--images is only used by the report; give --report DIR as well")
    from .volumes import resolve_dims, run_evaluate_volumes

    if resolve_dims(labels, dims) == 3:
        return run_evaluate_volumes(pred, labels, threshold, json_path, report_dir, images)
    pairs = load_pairs(pred, labels)
    inputs = load_matching_images(images, pred) if images is not None else None
    result = _evaluate(pairs, threshold)
    print(format_table(result, threshold))
    if json_path is not None:
        print(f"metrics written to {write_json(result, json_path)}")
    if report_dir is not None:
        from .report import write_report

        page = write_report(result, pairs.preds, pairs.truths, inputs, Path(report_dir),
                            threshold=threshold)
        print(f"report written to {page}")
    return result
