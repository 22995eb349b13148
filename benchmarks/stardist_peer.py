"""StarDist 2D trained from scratch on a folder of nuclei, at a clock: run inside StarDist's own venv.

    VENV/bin/python benchmarks/stardist_peer.py --train DIR --val DIR --test DIR --minutes 15 \\
        --seed 0 --threads 2 --out DIR

Imports StarDist (with CSBDeep and TensorFlow), scikit-image, tifffile and NumPy only (never
unetile): StarDist's 2D training notebook (``examples/2D/2_training.ipynb``, made on these very
DSB 2018 nuclei), the choices stated:

- input: each image ``csbdeep.utils.normalize(x, 1, 99.8, axis=(0, 1))``, holes in the labels
  filled (``fill_label_holes``), as the notebook does;
- net: ``StarDist2D(Config2D(n_rays=32, grid=(2, 2), n_channel_in=1))``, all else its defaults
  (U-Net of depth 3 with 32 filters, 256x256 patches, batch 4, Adam 3e-4, 100 steps an epoch,
  validation on 72 patches of the validation images each epoch, the weights with the lowest
  validation loss kept, the rate halved after 40 epochs without progress); no weights loaded;
  TensorBoard logging off (``train_tensorboard=False``: the venv has no tensorboard package, and
  the logs change nothing in training);
- augmentation: the notebook's ``augmenter``: random flips and 90-degree rotations, a random
  intensity scale (0.6 to 2) and shift (-0.2 to 0.2), Gaussian noise of sigma up to 0.02;
- clock: training runs the config's 400 epochs unless a Keras callback stops it when the clock
  (``--minutes`` from the start, reading included) has run out, checked after every batch (Keras
  then still validates and keeps the best weights, as at the end of an epoch);
- then, as the notebook, ``optimize_thresholds`` on the validation images (probability and NMS
  thresholds), and ``predict_instances`` of each test image -> ``OUT/pred/NAME.tif``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tifffile
from csbdeep.utils import normalize
from skimage.io import imread
from stardist import fill_label_holes
from stardist.models import Config2D, StarDist2D

from peer_args import peer_arguments


class Deadline(tf.keras.callbacks.Callback):
    """Stops training once the clock reaches ``deadline`` (a ``time.time()``); counts steps and epochs."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline, self.steps, self.epochs = deadline, 0, 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps += 1
        if time.time() >= self.deadline:
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs += 1


def read_pairs(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``images/NAME`` with ``labels/NAME`` -> (normalised images, labels with holes filled)."""
    paths = sorted((folder / "images").iterdir())
    images = [normalize(imread(p), 1, 99.8, axis=(0, 1)) for p in paths]
    return images, [fill_label_holes(imread(folder / "labels" / p.name)) for p in paths]


def random_fliprot(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's: a random transposition and flips of the axes."""
    perm = tuple(np.random.permutation(img.ndim))
    img, mask = img.transpose(perm), mask.transpose(perm)
    for ax in range(img.ndim):
        if np.random.rand() > 0.5:
            img, mask = np.flip(img, axis=ax), np.flip(mask, axis=ax)
    return img, mask


def augmenter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's: flips / rot90, intensity scale and shift, a little Gaussian noise."""
    x, y = random_fliprot(x, y)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    sigma = 0.02 * np.random.uniform(0, 1)
    return x + sigma * np.random.normal(0, 1, x.shape), y


def predict(model: StarDist2D, test: Path, out: Path) -> float:
    """Cells of every test image -> ``out/NAME.tif``; returns the seconds it took."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(test.iterdir()):
        cells = model.predict_instances(normalize(imread(path), 1, 99.8, axis=(0, 1)), show_tile_progress=False)[0]
        tifffile.imwrite(out / f"{path.stem}.tif", cells.astype(np.uint32 if cells.max() > 65535 else np.uint16))
    return time.time() - started


def main() -> None:
    args = peer_arguments(__doc__.splitlines()[0])
    started = time.time()
    # before any TensorFlow op: one pool of --threads for the ops, none running beside it
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(args.seed)
    X, Y = read_pairs(args.train)
    X_val, Y_val = read_pairs(args.val)
    # TensorBoard logging off: it changes no training, costs time, and needs the tensorboard package
    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_tensorboard=False)
    model = StarDist2D(config, name="stardist", basedir=str(args.out))
    model.prepare_for_training()
    deadline = Deadline(started + 60 * args.minutes)
    model.callbacks.append(deadline)
    loop_started = time.time()
    model.train(X, Y, validation_data=(X_val, Y_val), augmenter=augmenter, seed=args.seed)
    trained = time.time()
    log = {"epochs": deadline.epochs, "steps": deadline.steps, "train_seconds": trained - started,
           "train_loop_seconds": trained - loop_started, "train_cpu_seconds": time.process_time(),
           "seconds_per_epoch": (trained - loop_started) / max(deadline.epochs, 1)}
    model.optimize_thresholds(X_val, Y_val)
    log["thresholds"] = {"prob": float(model.thresholds.prob), "nms": float(model.thresholds.nms)}
    log["thresholds_seconds"] = time.time() - trained
    log["predict_seconds"] = predict(model, args.test, args.out / "pred")
    (args.out / "log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
