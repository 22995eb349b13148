"""What a run folder records per epoch: metrics.csv, TensorBoard events, curves.png, one log line."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

from ..io import atomic_path

log = logging.getLogger(__name__)

CURVES_EVERY = 30.0  # seconds between redraws of curves.png while training; always drawn at the end
CSV_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_pixel_error", "val_dice", "val_adapted_rand_error",
              "val_rand_error", "val_v_rand", "val_threshold", "lr", "seconds", "val_seconds"]
# seconds: the epoch's wall time, its validation (val_seconds) included


class Logbook:
    """The run folder's record, kept by rank 0: after each epoch a row in metrics.csv, the same
    scalars in TensorBoard (``tb/``), one readable log line, and curves.png redrawn at most
    every `CURVES_EVERY` seconds (and once at the end, in `close`)."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(str(folder / "tb"))
        self.last_plot = -math.inf

    def epoch(self, row: dict, improved: bool) -> None:
        """Record one epoch's row (the keys of `CSV_FIELDS`); ``improved``: best.pt was written."""
        _append_csv(self.folder / "metrics.csv", row)
        for k, val in row.items():
            if k not in ("epoch", "step"):
                self.writer.add_scalar(k, val, row["step"])
        log.info("epoch %3d  step %5d  loss %.4f  val loss %.4f  pixel err %.4f  adapted rand %.4f  dice %.4f  "
                 "t=%.2f  %.0fs%s", row["epoch"], row["step"], row["train_loss"], row["val_loss"],
                 row["val_pixel_error"], row["val_adapted_rand_error"], row["val_dice"], row["val_threshold"],
                 row["seconds"], "  *" if improved else "")
        # A redraw costs ~0.5 s (~2% of a 15-minute ISBI run if drawn every epoch).
        if time.monotonic() - self.last_plot >= CURVES_EVERY:
            plot_curves(self.folder / "metrics.csv", self.folder / "curves.png")
            self.last_plot = time.monotonic()

    def close(self) -> None:
        """Close TensorBoard's writer and draw the final curves."""
        self.writer.close()
        if (self.folder / "metrics.csv").exists():
            plot_curves(self.folder / "metrics.csv", self.folder / "curves.png")


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Loss and validation metrics per epoch, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    col = {k: [float(r[k]) for r in rows] for k in CSV_FIELDS}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(col["epoch"], col["train_loss"], label="train loss")
    a.plot(col["epoch"], col["val_loss"], label="val loss")
    a.set_xlabel("epoch")
    a.set_yscale("log")
    a.legend()
    a.set_title("loss")
    for k in ("val_pixel_error", "val_adapted_rand_error", "val_rand_error"):
        b.plot(col["epoch"], col[k], label=k[4:])
    b.plot(col["epoch"], [1 - d for d in col["val_dice"]], label="1 - dice")
    b.set_xlabel("epoch")
    b.set_yscale("log")
    b.legend()
    b.set_title("validation errors (at the best threshold)")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
