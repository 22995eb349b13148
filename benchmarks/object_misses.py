"""Which true objects each prediction of volumes misses: per object, its size, whether it touches the
volume's border, and the best IoU any predicted cell reaches with it, several predictions side by side.

    .venv/bin/python benchmarks/object_misses.py --labels runs/split_a/val/labels \
        3d=runs/vvp11/seed0_pred_3d "2d maps=runs/vvp11/seed0_pred_2d_map__tuned_3D_cells"

AP@0.5 on a volume of 32 objects moves by 0.02-0.03 per object, so the question behind a
difference is which objects make it: the table shows whether the misses are the same for every
row (fragments cut by the crop, specks) or objects one model finds and another does not. Volumes
are read and paired by name as `unetile evaluate --dims 3` reads them; IoU and the matching are
`objects.overlaps`'s and `objects.match`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from unetile.evaluation.metrics.objects import Overlaps, match, overlaps
from unetile.evaluation.volumes import load_volume_pairs


def best_iou(table: Overlaps) -> dict[int, float]:
    """{true id: the highest IoU of any predicted cell with it (0 where none overlaps)}."""
    best = np.zeros(len(table.true_ids))
    np.maximum.at(best, table.pairs[:, 0], table.iou)
    return dict(zip(table.true_ids.tolist(), best.tolist()))


def false_cells(table: Overlaps, cells: np.ndarray, threshold: float) -> list[tuple[int, bool]]:
    """(voxels, touches the border) of each predicted cell of ``cells`` that `objects.match` leaves
    unmatched at ``threshold`` (the false positives `unetile evaluate` counts), largest first."""
    matched = set(match(table, threshold)[0][:, 1].tolist())
    on_border = touches_border(cells)
    return sorted(((int(n), int(i) in on_border) for k, (i, n) in enumerate(zip(table.pred_ids, table.pred_sizes))
                   if k not in matched), reverse=True)


def touches_border(labels: np.ndarray) -> set[int]:
    """The ids of the objects of ``labels`` (Z, Y, X) that reach a face of the volume."""
    faces = [np.take(labels, index, axis=axis) for axis in range(labels.ndim) for index in (0, -1)]
    return {int(i) for face in faces for i in np.unique(face) if i}


def object_rows(truth: np.ndarray, tables: dict[str, Overlaps]) -> list[dict]:
    """One row per true object: id, voxels, border, and {prediction name: best IoU}; ``tables``:
    {prediction name: `objects.overlaps` of ``truth`` and that prediction's cells}."""
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    on_border = touches_border(truth)
    ious = {name: best_iou(table) for name, table in tables.items()}
    return [{"id": int(i), "size": int(n), "border": int(i) in on_border,
             "iou": {name: ious[name].get(int(i), 0.0) for name in tables}} for i, n in zip(ids, sizes)]


def print_report(name: str, rows: list[dict], falses: dict[str, list], threshold: float) -> None:
    """The per-object table of one volume, then what every row misses and each row's own misses
    and false cells (``falses``: {prediction name: `false_cells`})."""
    names = list(falses)
    print(f"\n{name}: {len(rows)} true objects; best IoU of a predicted cell per row")
    print(f"{'id':>5} {'size':>8} {'border':>6} " + " ".join(f"{n:>12}" for n in names))
    for row in rows:
        print(f"{row['id']:>5} {row['size']:>8} {'yes' if row['border'] else '':>6} "
              + " ".join(f"{row['iou'][n]:>12.2f}" for n in names))
    missed_by_all = [r for r in rows if all(r["iou"][n] < threshold for n in names)]
    sizes = sorted(r["size"] for r in missed_by_all)
    print(f"missed at IoU {threshold} by every row: {len(missed_by_all)} (sizes {sizes}; "
          f"{sum(r['border'] for r in missed_by_all)} on the border); median object size "
          f"{int(np.median([r['size'] for r in rows]))}")
    for n in names:
        only = [r["id"] for r in rows if r["iou"][n] < threshold and any(r["iou"][m] >= threshold for m in names)]
        print(f"  {n}: misses {sum(r['iou'][n] < threshold for r in rows)}, of which others find {only}; "
              f"false cells (voxels, border) {falses[n]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="+", help="NAME=FOLDER of label images named as the labels")
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--iou", type=float, default=0.5)
    args = parser.parse_args()
    folders = dict(text.split("=", 1) for text in args.predictions)
    pairs = {name: load_volume_pairs(folder, args.labels) for name, folder in folders.items()}
    first = next(iter(pairs.values()))
    for index, volume in enumerate(first.names):
        predictions = {name: pairs[name].preds[pairs[name].names.index(volume)] for name in folders}
        truth = first.truths[index]
        tables = {name: overlaps(truth, cells) for name, cells in predictions.items()}  # once per prediction
        falses = {name: false_cells(tables[name], cells, args.iou) for name, cells in predictions.items()}
        print_report(volume, object_rows(truth, tables), falses, args.iou)


if __name__ == "__main__":
    main()
