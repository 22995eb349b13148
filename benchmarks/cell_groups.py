"""Cell scores per acquisition: an `unetile evaluate --json` file's per-image cell counts pooled
over the test images of each image size (the DSB 2018 proxy for an acquisition: the dense
256 x 256 set apart from the others).

    .venv/bin/python benchmarks/cell_groups.py runs/nuclei/default---seed-0/scores.json \\
        --images runs/nuclei/split/test/images

Prints one row per size: images, AP@0.5, AP@0.75, mean AP, PQ, merged and split cells.

Where the cells are lost, by their size: with ``--pred PRED --labels LABELS`` (what `unetile
evaluate` was given), a second table counts the true cells of each diameter (px, the disc of
their area): found (matched one to one at IoU 0.5), and those not found: merged with another
(by majority overlap, as `unetile evaluate` counts merges) or missed otherwise.

    .venv/bin/python benchmarks/cell_groups.py runs/nuclei/default---seed-0/scores.json \
        --images runs/nuclei/split/test/images --pred runs/nuclei/default---seed-0/pred \
        --labels runs/nuclei/split/test/labels
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from unetile.evaluation.evaluate import load_pairs
from unetile.evaluation.metrics.common import prediction_labels, truth_labels
from unetile.evaluation.metrics.objects import CellCounts, cell_fates, overlaps, pooled, summary
from unetile.evaluation.metrics.sizes import size_table
from unetile.evaluation.tables import bin_span, share
from unetile.io import list_images, read_image

#: Diameter bins (px) of the size table: the DSB 2018 nuclei run from 4 to 100 px, most 8-35.
DIAMETER_EDGES = (0, 8, 10, 12, 14, 17, 20, 25, 35, np.inf)


def image_sizes(folder: Path) -> dict[str, str]:
    """Each image's stem -> its size as "HxW"."""
    return {p.stem: "x".join(str(n) for n in read_image(p).shape[-2:]) for p in list_images(folder)}


def counts_of(image_cells: dict) -> list[CellCounts]:
    """One image's `summary` (as the JSON holds it) -> its counts per IoU threshold."""
    return [CellCounts(a["iou_threshold"], a["n_true"], a["n_pred"], a["tp"], a["mean_matched_iou"] * a["tp"],
                       a["merged"], a["split"]) for a in image_cells["at"]]


def group_rows(scores: dict, sizes: dict[str, str]) -> list[dict]:
    """Pooled cell scores per image size (and all together), largest group first."""
    groups: dict[str, list] = defaultdict(list)
    for image, cells in zip(scores["images"], scores["cells"]["images"]):
        groups[sizes[Path(image["name"]).stem]].append(counts_of(cells))
    rows = []
    for size, members in sorted(groups.items(), key=lambda kv: -len(kv[1])) + [("all", sum(groups.values(), []))]:
        s = summary(pooled(members))
        rows.append({"size": size, "images": len(members), "ap_50": s["ap_50"], "ap_75": s["ap_75"],
                     "mean_ap": s["mean_ap"], "pq": s["pq_50"], "merged": s["merged"], "split": s["split"]})
    return rows


def size_rows(pred: Path, labels: Path) -> list[dict]:
    """True cells pooled over all pairs of ``pred`` and ``labels``, counted per diameter bin (px)."""
    pairs = load_pairs(pred, labels)
    fates = [cell_fates(overlaps(truth_labels(t), prediction_labels(p))) for t, p in zip(pairs.truths, pairs.preds)]
    return size_table(fates, DIAMETER_EDGES, relative=False)["rows"]


def print_size_rows(rows: list[dict]) -> None:
    print("\n| true cells, diameter px | cells | found at IoU 0.5 | not found: merged | not found: missed |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        found, merged, missed = (share(r[k], r["cells"]) for k in ("found", "merged", "missed"))
        print(f"| {bin_span(r['low'], r['high'])} | {r['cells']} | {found} | {merged} | {missed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scores", nargs="+", type=Path, help="unetile evaluate --json files")
    parser.add_argument("--images", type=Path, required=True, help="the test images (their sizes)")
    parser.add_argument("--pred", type=Path, help="the cells scored (a folder of label images): the size table")
    parser.add_argument("--labels", type=Path, help="their true cells (with --pred)")
    args = parser.parse_args()
    sizes = image_sizes(args.images)
    print("| scores | size | images | AP@0.5 | AP@0.75 | mean AP | PQ | merged | split |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in args.scores:
        for r in group_rows(json.loads(path.read_text()), sizes):
            print(f"| {path.parent.name} | {r['size']} | {r['images']} | {r['ap_50']:.3f} | {r['ap_75']:.3f} | "
                  f"{r['mean_ap']:.3f} | {r['pq']:.3f} | {r['merged']} | {r['split']} |")
    if args.pred and args.labels:
        print_size_rows(size_rows(args.pred, args.labels))


if __name__ == "__main__":
    main()
