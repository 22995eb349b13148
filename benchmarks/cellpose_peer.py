"""Cellpose 3 trained from scratch on a folder of nuclei, at a clock: run inside Cellpose's own venv.

    VENV/bin/python benchmarks/cellpose_peer.py --train DIR --val DIR --test DIR --minutes 15 \\
        --seed 0 --threads 2 --out DIR

Imports Cellpose (3.x), PyTorch, tifffile and NumPy only (never unetile): what a Cellpose user
would run, ``python -m cellpose --train --dir TRAIN --test_dir VAL --pretrained_model None``
(the documented from-scratch command), written with its API, the choices stated:

- net: ``models.CellposeModel(pretrained_model=False, model_type=None)``, Cellpose's own CPnet
  (no weights loaded; nothing is downloaded), ``diam_mean`` 30 (the CLI's default for a run from
  scratch), two input channels with ``channels=[0, 0]`` (grey), as the CLI gives it;
- targets: Cellpose's flows (``dynamics.labels_to_flows``), computed once (``train_seg`` skips
  labels that already carry them); each image rescaled in training by the mean cell diameter of
  its own labels, as ``train_seg`` does;
- training: ``train.train_seg`` with the CLI's defaults: SGD, learning rate 0.2, weight decay
  1e-5, batch 8, every image each epoch (``nimg_per_epoch`` None), images with fewer than 5 cells
  dropped (``min_train_masks``), 224-pixel crops; the validation images as its ``test_data``
  (losses logged only: Cellpose keeps the last weights, not the best);
- prediction: the trained model reloaded from its file, ``eval(channels=[0, 0])`` with the
  model's ``diam_labels`` (the mean training cell diameter, saved in the model) as the diameter,
  as the CLI and GUI do for a custom model without a size model; Cellpose's default flow (0.4)
  and cell probability (0.0) thresholds. Labels -> ``OUT/pred/NAME.tif``.

Stopping at the clock: ``train_seg`` has no callback and fixes its learning-rate schedule from
``n_epochs`` (10 warm-up epochs from rate 0, the last 50 or 100 epochs halving it), and it
restarts the optimiser, the schedule and ``np.random.seed(epoch)`` on every call, so chained
1-epoch calls would train at rate 0 forever. Instead a probe (copies of the net, 1 and 5 batches,
at that warm-up rate 0) times a step (``train_seg``'s preparation of the data timed apart); the run
then gets ``n_epochs`` = the epochs that fit in what is left of the clock, and one ``train_seg``
call trains them with Cellpose's own schedule. The probe's time is part of the clock; where not
even one epoch fits (a smoke test), one epoch of the batches that fit is trained, at rate 0. The
real training may end a little before or after the clock (its validation passes are not in the
estimate); ``log.json`` says when it did.

Mind the scale on a CPU: a step (8 crops of 224x224) took about 24 s on one thread here, and an
epoch is about 45 steps, so a 15-minute clock trains a couple of epochs, all inside Cellpose's
10-epoch warm-up (the rate climbs from 0): the recipe is made for a GPU. That is the honest
result of its defaults at this clock; ``log.json`` records the epochs and the step time.

Seeds: ``train_seg`` reseeds NumPy with the epoch number every epoch, so the seed changes the
initial weights (``torch.manual_seed``) and not the order of the images or the crops.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from cellpose import dynamics, io, models, train

from peer_args import peer_arguments

# The CLI's from-scratch defaults (cellpose 3.1 `python -m cellpose --help`).
LEARNING_RATE, WEIGHT_DECAY, BATCH, MIN_MASKS, DIAM_MEAN = 0.2, 1e-5, 8, 5, 30.0
CHANNELS = [0, 0]
PROBE_BATCHES = 4


def read_pairs(folder: Path) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """``images/NAME`` with ``labels/NAME`` -> (names, images, label images), read by Cellpose."""
    paths = sorted((folder / "images").iterdir())
    return ([p.stem for p in paths], [io.imread(str(p)) for p in paths],
            [io.imread(str(folder / "labels" / p.name)) for p in paths])


def fit(net: torch.nn.Module, data: tuple, val: tuple, out: Path, n_epochs: int, **options) -> Path:
    """``train.train_seg`` with the CLI's settings -> the saved model's path."""
    return train.train_seg(net, train_data=data[0], train_labels=data[1], test_data=val[0], test_labels=val[1],
                           channels=CHANNELS, normalize=True, learning_rate=LEARNING_RATE,
                           weight_decay=WEIGHT_DECAY, SGD=True, batch_size=BATCH, min_train_masks=MIN_MASKS,
                           n_epochs=n_epochs, save_path=str(out), **options)[0]


def time_preparation() -> list[float]:
    """Make ``train_seg`` append the seconds of its data preparation (normalising every image, the
    diameters) to the list returned, its behaviour unchanged: the probe's steps are timed without it."""
    seconds, prepare = [], train._process_train_test

    def timed(*args, **kwargs):
        started = time.time()
        try:
            return prepare(*args, **kwargs)
        finally:
            seconds.append(time.time() - started)

    train._process_train_test = timed
    return seconds


def timed_fit(net: torch.nn.Module, data: tuple, out: Path, batches: int, preparation: list[float]) -> float:
    """Seconds of one `train_seg` call of ``batches`` steps on a copy of the net, its data preparation left out."""
    started = time.time()
    fit(copy.deepcopy(net), data, (None, None), out, 1, nimg_per_epoch=batches * BATCH, model_name="probe")
    return time.time() - started - preparation[-1]


def probe(net: torch.nn.Module, data: tuple, out: Path) -> tuple[float, float]:
    """(seconds of one training step of batch 8, seconds of train_seg's preparation of the training
    images), timed on copies of the net at rate 0 (epoch 0 of Cellpose's schedule: it learns nothing).
    A call of 1 step and one of 1 + ``PROBE_BATCHES``: their difference leaves out what a call costs
    besides its steps (the first step's set-up, saving the model), which a single 4-step call counted
    as steps (12.6 s a step against 7.7 in the training that followed: 7 epochs where 12 fitted)."""
    preparation = time_preparation()
    once = timed_fit(net, data, out, 1, preparation)
    more = timed_fit(net, data, out, 1 + PROBE_BATCHES, preparation)
    return max(more - once, 1e-3) / PROBE_BATCHES, preparation[-1]


def epochs_left(seconds: float, step: float, steps_per_epoch: int) -> tuple[int, int | None]:
    """(n_epochs, nimg_per_epoch) that fit in ``seconds``: whole epochs of every image, or where not
    even one fits (a smoke test's clock), one epoch of the batches that fit."""
    steps = int(seconds / step)
    if steps >= steps_per_epoch:
        return steps // steps_per_epoch, None
    return 1, max(1, steps) * BATCH


def kept(labels: list[np.ndarray]) -> int:
    """How many images ``train_seg`` trains on (those with at least ``MIN_MASKS`` cells)."""
    return sum(len(np.unique(lab[0])) - 1 >= MIN_MASKS for lab in labels)


def predict(model_path: Path, test: Path, out: Path) -> float:
    """Cells of every test image -> ``out/NAME.tif``; returns the seconds it took."""
    started = time.time()
    model = models.CellposeModel(pretrained_model=str(model_path))
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(test.iterdir()):
        masks = model.eval(io.imread(str(path)), channels=CHANNELS, diameter=float(model.diam_labels))[0]
        tifffile.imwrite(out / f"{path.stem}.tif", masks.astype(np.uint32 if masks.max() > 65535 else np.uint16))
    return time.time() - started


def main() -> None:
    args = peer_arguments(__doc__.splitlines()[0])
    started = time.time()
    deadline = started + 60 * args.minutes
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    io.logger_setup()  # Cellpose's training log (losses, epochs) into train.log
    args.out.mkdir(parents=True, exist_ok=True)
    _, images, labels = read_pairs(args.train)
    _, val_images, val_labels = read_pairs(args.val)
    cpu = torch.device("cpu")
    data = (images, dynamics.labels_to_flows(labels, device=cpu))
    val = (val_images, dynamics.labels_to_flows(val_labels, device=cpu))
    net = models.CellposeModel(pretrained_model=False, model_type=None, diam_mean=DIAM_MEAN, device=cpu).net
    step, preparation = probe(net, data, args.out)
    steps_per_epoch = math.ceil(kept(data[1]) / BATCH)
    # the real call prepares the validation images too before its first step
    preparation *= (len(images) + len(val_images)) / len(images)
    n_epochs, n_images = epochs_left(deadline - time.time() - preparation, step, steps_per_epoch)
    print(f"probe: {step:.2f} s a step, {steps_per_epoch} steps an epoch -> {n_epochs} epochs", flush=True)
    loop_started = time.time()
    model_path = fit(net, data, val, args.out, n_epochs, nimg_per_epoch=n_images, model_name="cellpose_scratch")
    trained = time.time()
    steps = n_epochs * (steps_per_epoch if n_images is None else math.ceil(n_images / BATCH))
    log = {"epochs": n_epochs, "steps": steps, "probe_step_seconds": step,
           "train_seconds": trained - started, "train_loop_seconds": trained - loop_started,
           "train_cpu_seconds": time.process_time(), "seconds_per_epoch": (trained - loop_started) / n_epochs,
           "diam_labels": float(net.diam_labels.item()), "model": str(model_path)}
    log["predict_seconds"] = predict(model_path, args.test, args.out / "pred")
    (args.out / "log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
