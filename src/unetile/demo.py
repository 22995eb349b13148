"""`unetile demo`: the whole tool on synthetic EM-like data, in a few minutes on a laptop CPU.

1. writes a synthetic data set (`synthetic.py`): training/validation pairs and held-apart
   test pairs, all made by this project's own code, nothing downloaded;
2. trains a small U-Net on it for ``minutes`` (the ``fast`` recipe);
3. segments the held-apart images with `unetile predict` (overlap-tile, TTA);
4. prints their pixel error and foreground Dice, and writes overlay pictures.

Everything goes under one folder (default ``demo/``); a folder not made by the demo is
never touched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserInputError
from .evaluation import metrics
from .inference.predict import PredictOptions, predict_files
from .io import atomic_path, list_images, read_image
from .synthetic import write_dataset
from .training import TrainConfig, train

log = logging.getLogger(__name__)
MARKER = ".unetile-demo"


def overlay(image: np.ndarray, prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: the image in grey, membrane found and true in white-ish red,
    missed membrane in blue, false membrane in red (membrane = not foreground)."""
    grey = image.astype(np.float32)
    grey = (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
    rgb = np.repeat(grey[..., None] * 0.8, 3, axis=-1)
    pred_membrane, true_membrane = prob <= threshold, truth == 0
    colours = {
        (True, True): (1.0, 0.85, 0.2),  # found: yellow
        (False, True): (0.1, 0.4, 1.0),  # missed: blue
        (True, False): (1.0, 0.1, 0.1),  # false: red
    }
    for (p, t), colour in colours.items():
        where = (pred_membrane == p) & (true_membrane == t)
        rgb[where] = 0.35 * rgb[where] + 0.65 * np.array(colour)
    return (rgb * 255).astype(np.uint8)


def run_demo(out: str | Path = "demo", minutes: float = 2.0, seed: int = 0) -> dict:
    """Run the demo in ``out``; returns the held-apart images' mean pixel error and Dice."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UserInputError(f"{out}: exists and was not made by `unetile demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `unetile demo`; the next demo replaces this folder\n")

    log.info("1/4 writing synthetic EM-like images to %s", out / "data")
    write_dataset(out / "data" / "train", 16, 256, seed=seed)
    write_dataset(out / "data" / "test", 4, 384, seed=seed + 1000)

    log.info("2/4 training a small U-Net for %.1f minutes", minutes)
    # Synthetic cells have no preferred orientation, so all 8 flips/rotations (and TTA over them).
    cfg = TrainConfig(out=str(out / "run"), data=str(out / "data" / "train"), val_fraction=0.25, width=16,
                      padding="valid", tile_size=380, batch_size=2, samples_per_epoch=16, flips="dihedral", ema=0.0,
                      time_limit=minutes * 60, seed=seed)
    run = train(cfg)

    log.info("3/4 segmenting the held-apart images (overlap-tile + TTA)")
    pred_dir = out / "predictions"
    predict_files(run / "best.pt", out / "data" / "test" / "images", pred_dir, PredictOptions(tta=True))

    log.info("4/4 measuring and drawing overlays in %s", out / "overlays")
    (out / "overlays").mkdir()
    rows = []
    for src in list_images(out / "data" / "test" / "images"):
        image = read_image(src)[0, 0]
        truth = read_image(out / "data" / "test" / "labels" / src.name)[0, 0]
        prob = read_image(pred_dir / src.name)[0, 0].astype(np.float32) / 255
        rows.append((src.stem, metrics.pixel_error(prob, truth), metrics.dice(prob, truth)))
        with atomic_path(out / "overlays" / src.name) as tmp:
            side = np.concatenate([np.repeat(image[..., None], 3, -1), overlay(image, prob, truth)], axis=1)
            Image.fromarray(side).save(tmp, format="PNG")
    print(f"\n{'image':<8}{'pixel error':>12}{'Dice':>8}")
    for name, pe, d in rows:
        print(f"{name:<8}{pe:>12.4f}{d:>8.4f}")
    mean_pe, mean_dice = float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows]))
    print(f"{'mean':<8}{mean_pe:>12.4f}{mean_dice:>8.4f}")
    print(f"\nrun folder: {run} (curves.png, metrics.csv, best.pt)")
    print(f"overlays:   {out / 'overlays'} (yellow: membrane found, blue: missed, red: false)")
    return {"pixel_error": mean_pe, "dice": mean_dice}
