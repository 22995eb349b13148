"""Any net's foreground maps of volumes -> 3D cells and 3D scores, the same way for every row.

Used by `volumes_vs_planes.py` and `monai_volumes.py`, so that a 2D model's stacked planes, MONAI's
map and our 3D model's map are cut and scored alike:

- ``components``: connected components of ``map > 0.5`` (what a user without a watershed gets);
- ``tuned 3D cells``: our 3D seeded watershed with the volume's voxel size, its settings chosen on
  the validation volumes (`instances.choose_settings`, `VOLUME_GRID`), as `unetile train` chooses
  them for a 3D model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

UNETILE = [sys.executable, "-m", "unetile", "-q"]


def write_cells(maps: dict[str, np.ndarray], images: Path, labels: Path, out: Path, how: str) -> str:
    """Cut each ``maps[name]`` ((Z, Y, X) foreground probability of ``images/name``) into cells,
    written to ``out/name`` as OME-TIFF volumes -> a line saying which settings were used."""
    from skimage.measure import label

    from unetile.inference.instances import VOLUME_GRID, InstanceSettings, choose_settings
    from unetile.io import label_dtype, read_image, voxel_size, write_volume

    out.mkdir(parents=True, exist_ok=True)
    names = sorted(maps)
    spacings = [voxel_size(images / name) for name in names]
    if how == "components":
        cells = [label(maps[name] > 0.5, connectivity=1) for name in names]
        chosen = "components of map > 0.5"
    else:
        truths = [read_image(labels / name) for name in names]
        settings, score = choose_settings([maps[n][None] for n in names], truths, VOLUME_GRID, InstanceSettings(),
                                          spacings=spacings)
        cells = [settings.labels(maps[n][None], 0.5, s) for n, s in zip(names, spacings)]
        chosen = f"{settings} (validation mean AP {score:.3f})"
    for name, cell, spacing in zip(names, cells, spacings):
        write_volume(out / name, cell.astype(label_dtype(cell)), spacing)
    return chosen


def score(pred: Path, labels: Path, json_path: Path) -> dict:
    """`unetile evaluate --dims 3` of a folder of cell volumes -> the pooled 3D object scores and VOI."""
    subprocess.run([*UNETILE, "evaluate", "--pred", str(pred), "--labels", str(labels), "--dims", "3",
                    "--json", str(json_path)], check=True)
    result = json.loads(json_path.read_text())
    pooled = result["objects"]["pooled"]
    return {"ap_50": pooled["ap_50"], "ap_75": pooled["ap_75"], "mean_ap": pooled["mean_ap"],
            "voi_split": result["mean"]["voi_split"], "voi_merge": result["mean"]["voi_merge"]}


def summary_table(results: list[dict], rows: list[str]) -> str:
    """Markdown table of ``results`` (one per seed, each ``{"scores": {row: {key: value}}}``): mean ± std."""
    keys = ("ap_50", "ap_75", "mean_ap", "voi_split", "voi_merge", "cpu_minutes")
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name in rows:
        cells = []
        for key in keys:
            values = np.array([r["scores"][name][key] for r in results if name in r["scores"]])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values[0]:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
