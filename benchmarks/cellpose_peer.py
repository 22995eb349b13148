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
``n_epochs``: 10 warm-up epochs from rate 0, then the full rate, and only where ``n_epochs`` > 100
a halving over the last 50 or 100 epochs. So with ``n_epochs`` = 100 the rate of epoch k is the
same as in a run of any length up to 100 epochs, and a run stopped after epoch k is the run that
``n_epochs`` = k + 1 gives. The run is given 100 epochs and ``save_every`` 1 (the model saved after
every epoch but the first); after each save the average epoch so far (validation passes
included) predicts whether one more ends inside the clock, and where it does not the call is
stopped there (``ClockedSave``), its last saved model kept. The epochs are the real ones, timed,
not a probe's estimate: an earlier probe (copies of the net, 1 and 5 batches) timed a step at
13.1 s where training then took 8.0 s, and gave Cellpose 7 epochs where 12 fitted. A clock
shorter than two epochs (a smoke test) still trains two; ``log.json`` says when training ended.

Mind the scale on a CPU: a step (8 crops of 224x224) took about 24 s on one thread here, and an
epoch is about 45 steps, so a 15-minute clock trains a couple of epochs, all inside Cellpose's
10-epoch warm-up (the rate climbs from 0): the recipe is made for a GPU. That is the honest
result of its defaults at this clock; ``log.json`` records the epochs and the step time.

Seeds: ``train_seg`` reseeds NumPy with the epoch number every epoch, so the seed changes the
initial weights (``torch.manual_seed``) and not the order of the images or the crops.
"""

from __future__ import annotations

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
MAX_EPOCHS = 100  # the longest run whose schedule has no final halving (see above)


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


class ClockStop(Exception):
    """Raised after a saved epoch when the next would end past the clock."""


class ClockedSave:
    """Stands in for ``net.save_model`` during ``train_seg``: saves, counts the epoch, and stops the
    call (``ClockStop``) where one more epoch, at the average epoch so far, would end past ``deadline``
    (a ``time.time()`` value). ``started`` is when the training loop began (after the data preparation)."""

    def __init__(self, net: torch.nn.Module, deadline: float) -> None:
        self.save, self.deadline = net.save_model, deadline
        self.started, self.epochs = time.time(), 0

    def __call__(self, filename: str) -> None:
        self.save(filename)
        self.epochs += 1 if self.epochs else 2  # the first save comes after epochs 0 and 1
        now = time.time()
        if now + (now - self.started) / self.epochs > self.deadline:
            raise ClockStop


def start_clock_after_preparation(clocked: ClockedSave) -> None:
    """Make ``train_seg``'s data preparation (normalising every image, the diameters) restart
    ``clocked``'s epoch timer when it ends, its behaviour unchanged."""
    prepare = train._process_train_test

    def prepare_then_start(*args, **kwargs):
        try:
            return prepare(*args, **kwargs)
        finally:
            clocked.started = time.time()

    train._process_train_test = prepare_then_start


def fit_to_clock(net: torch.nn.Module, data: tuple, val: tuple, out: Path, deadline: float) -> tuple[Path, int, float]:
    """``train_seg`` with Cellpose's schedule of ``MAX_EPOCHS``, stopped after the last epoch that
    ends inside ``deadline`` -> (the saved model's path, epochs trained, seconds of its epochs)."""
    clocked = ClockedSave(net, deadline)
    start_clock_after_preparation(clocked)
    net.save_model = clocked
    try:
        fit(net, data, val, out, MAX_EPOCHS, save_every=1, model_name="cellpose_scratch")
    except ClockStop:
        pass
    finally:
        net.save_model = clocked.save
    # train_seg saves once more after its last epoch: count at most MAX_EPOCHS
    return out / "models" / "cellpose_scratch", min(clocked.epochs, MAX_EPOCHS), time.time() - clocked.started


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
    model_path, n_epochs, epoch_seconds = fit_to_clock(net, data, val, args.out, deadline)
    trained = time.time()
    log = {"epochs": n_epochs, "steps": n_epochs * math.ceil(kept(data[1]) / BATCH),
           "train_seconds": trained - started, "train_cpu_seconds": time.process_time(),
           "train_loop_seconds": epoch_seconds, "seconds_per_epoch": epoch_seconds / n_epochs,
           "diam_labels": float(net.diam_labels.item()), "model": str(model_path)}
    print(f"trained {n_epochs} epochs in {trained - started:.0f} s of a {60 * args.minutes:.0f} s clock", flush=True)
    log["predict_seconds"] = predict(model_path, args.test, args.out / "pred")
    (args.out / "log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
