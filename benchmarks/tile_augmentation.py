"""Cost of one augmented training tile (ms, one thread, as in a DataLoader worker).

    .venv/bin/python benchmarks/tile_augmentation.py [--tiles 200] [--tile 256]

On a 2-core machine the worker's time comes out of the training steps: every millisecond
per tile is 4 ms per step of the fast preset (batch 4). Rows, on the same synthetic
EM-like images and the same random draws:

- ``scipy (reference)``: the elastic warp by ``scipy.ndimage.map_coordinates`` (cubic
  B-spline for the image, order 0 / 1 for label and weight), as this project did first;
- ``torch grid_sample``: ``augment.warp``, what training uses now;
- ``no elastic``: flips, rotations and grey values only (the floor).
"""

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from unetile.synthetic import synthetic_em
from unetile.training import augment
from unetile.training.augment import Augmentation
from unetile.training.data import Targets, TileDataset, prepare


def scipy_warp(arrays: np.ndarray, coords: np.ndarray, mode: str) -> np.ndarray:
    order = {"bicubic": 3, "bilinear": 1, "nearest": 0}[mode]
    return np.stack([ndimage.map_coordinates(a, coords, order=order, mode="mirror") for a in arrays])


def per_tile_ms(dataset: TileDataset, tiles: int) -> float:
    dataset[0]
    t = time.perf_counter()
    for i in range(1, tiles + 1):
        dataset[i]
    return (time.perf_counter() - t) / tiles * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiles", type=int, default=200)
    p.add_argument("--tile", type=int, default=256)
    a = p.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(4):
        image, label = synthetic_em(rng, 512)
        pairs.append((str(i), image[None], label, f"{i}.png", f"{i}.png"))
    items = prepare(pairs, Targets(n_classes=2, weight_map=True))
    rows = []
    fast = augment.warp
    for name, warp, aug in (("scipy (reference)", scipy_warp, Augmentation()),
                            ("torch grid_sample", fast, Augmentation()),
                            ("no elastic", fast, Augmentation(elastic=False))):
        augment.warp = warp
        try:
            rows.append((name, per_tile_ms(TileDataset(items, a.tile, a.tile, aug, seed=0), a.tiles)))
        finally:
            augment.warp = fast
    ref = rows[0][1]
    print(f"{'warp':<20} {'ms/tile':>8} {'vs reference':>13}")
    for name, ms in rows:
        print(f"{name:<20} {ms:8.2f} {ref / ms:12.2f}x")


if __name__ == "__main__":
    main()
