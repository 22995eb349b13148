"""Training: a plain loop over random tiles, validation on whole images, a run folder.

The run folder holds ``config.json`` (every setting, the package version, the data's
checksum), ``last.pt`` (model + optimiser + RNG + position: ``--resume`` continues
exactly), ``best.pt`` (by ``select_by`` on the validation images), ``metrics.csv``,
``curves.png`` and TensorBoard events (``tb/``).

The loop reads top to bottom in `_train`: `build_run` (setup.py), `start` or `restore`,
then per epoch `train_one_epoch` (each step `train_step`) and `end_epoch` (validate, keep
best.pt, write last.pt, log), and at the end `finish` (the threshold calibrated with TTA).
Validation (validation.py) predicts each whole validation image exactly as ``unetile predict``
does and keeps the best decision threshold with the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..device import autocast, resolve_device
from ..errors import Interrupted, UserInputError
from ..nn.checkpoint import load_payload, model_payload, save_model, save_payload
from .config import MAXIMISE, TrainConfig, resume_config
from .logbook import Logbook
from .losses import segmentation_loss
from .setup import Run, build_run, memory_format
from .validation import calibrate_checkpoint, own_pixels, pixels, refresh_batch_norm, validate

log = logging.getLogger(__name__)


def learning_rate(base: float, progress: float) -> float:
    """Cosine decay from ``base`` to 0 over progress 0 -> 1, after a 2% linear warm-up."""
    progress = min(max(progress, 0.0), 1.0)
    warm = min(1.0, progress / 0.02) if progress < 0.02 else 1.0
    return base * warm * 0.5 * (1 + math.cos(math.pi * progress))


class _StopRequest:
    """SIGINT/SIGTERM (or ``external``, a threading.Event a GUI sets) ask to stop: the current
    step finishes, last.pt is written, then exit."""

    def __init__(self, external: threading.Event | None = None) -> None:
        self._signalled = False
        self._external = external
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self._signalled or (self._external is not None and self._external.is_set())

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self._signalled:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._signalled = True
        log.warning("stopping after this step (press Ctrl-C again to abort)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class Position:
    """Where a run stands; last.pt stores it, so that ``--resume`` continues exactly."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    best_value: float | None = None  # best.pt's value of ``select_by``
    best_threshold: float = 0.5  # best.pt's decision threshold
    steps_this_call: int = 0  # steps since this process started (not stored)


class Clock:
    """The run's time: spent so far (across resumes), left under ``--time-limit``, and kept
    in reserve for the last validation and the TTA threshold calibration."""

    def __init__(self, limit: float | None, started: float, calibrate_tta: bool) -> None:
        self.limit, self.started, self.calibrate_tta = limit, started, calibrate_tta
        self.before = 0.0  # seconds spent by the runs this one resumes
        self.val_seconds: float | None = None  # the last validation's duration (after an epoch)
        self.val_scale = 1.0  # the calibration images' pixels over those validated after each epoch
        self.cells_scale = 1.0  # the same at the images' own sizes, where cells are chosen (`own_pixels`)
        self.tune_cells = False  # whether the end chooses how cells are cut (instance-id labels)

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started

    def left(self) -> float:
        return math.inf if self.limit is None else self.limit - self.elapsed()

    def reserve(self) -> float:
        """Seconds to keep for the last validation and the calibration on its validation images
        (TTA: 8 predictions of each; choosing how cells are cut: about two validations' time, of
        the images at their own sizes)."""
        if self.val_seconds is None:
            return 0.0
        predictions = self.val_scale * (8 if self.calibrate_tta else 0)
        cells = self.cells_scale * (2 if self.tune_cells else 0)
        return self.val_seconds * (1 + predictions + cells) + 5

    def progress(self, step: int, total_steps: int) -> float:
        """How far the schedule is, 0 -> 1: by steps, or by the clock where that is further."""
        progress = step / total_steps
        if self.limit is not None:
            progress = max(progress, (self.limit - self.left()) / max(self.limit - self.reserve(), 1.0))
        return progress


def train(cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False,
          stop_after_steps: int | None = None, stop: threading.Event | None = None) -> Path:
    """Train and return the run folder. ``resume``: a run folder to continue exactly.

    Under torchrun (WORLD_SIZE > 1) each process trains its share of every batch with
    DistributedDataParallel. ``stop_after_steps`` stops (as a signal would) after that
    many optimiser steps in this call: for tests of exact resumption. ``stop``: setting
    this event (from another thread: the napari widget's Stop) stops as a signal would.
    """
    t_start = time.monotonic()
    state = None
    if resume is not None:
        run = Path(resume)
        state = load_payload(run / "last.pt")
        cfg = resume_config(cfg, run)
    cfg = cfg.resolved()
    run = Path(cfg.out)
    if state is None and run.exists() and any(run.iterdir()) and not overwrite:
        raise UserInputError(f"{run}: the run folder exists and is not empty (use --resume {run}, or --overwrite)")
    clock = Clock(cfg.time_limit, t_start, cfg.calibrate_tta)
    ctx, device = distributed.init(resolve_device(cfg.device), cfg.dist_timeout)
    try:
        return _train(cfg, run, state, ctx, device, clock, stop_after_steps, stop)
    except RuntimeError as e:
        if ctx.active and ("gloo" in str(e).lower() or "nccl" in str(e).lower() or "connection" in str(e).lower()
                           or isinstance(e, getattr(torch.distributed, "DistError", ()))):
            raise UserInputError(f"a process of the distributed job failed ({str(e).splitlines()[0]}); "
                                 f"resume with --resume {run}") from e
        raise
    finally:
        distributed.finish()


def _train(cfg: TrainConfig, folder: Path, state: dict | None, ctx: distributed.Context, device: torch.device,
           clock: Clock, stop_after_steps: int | None, external_stop: threading.Event | None = None) -> Path:
    """The loop: build, then epochs of training steps and validation, then the calibration."""
    run = build_run(cfg, folder, ctx, device)  # the net unwrapped: restore loads into it, then DDP wraps it
    clock.tune_cells = any(it.instances is not None for it in run.calibration_items)
    position = restore(run, state, clock) if state is not None else start(run)
    run.model = distributed.wrap(run.raw, ctx, device)
    logbook = Logbook(folder) if ctx.is_main else None
    stopped = None
    with _StopRequest(external_stop) as stop:
        while position.epoch < run.cfg.epochs and stopped is None:
            t_epoch = time.monotonic()
            stopped, losses, lr = train_one_epoch(run, position, clock, stop, stop_after_steps)
            if stopped == "signal":
                save_last(run, position, clock)
                break
            if stopped is None:
                position.epoch += 1
            end_epoch(run, position, clock, logbook, float(np.mean(losses)) if losses else math.nan, lr, t_epoch)
    finish(run, clock, logbook, stopped, position)
    return folder


def start(run: Run) -> Position:
    """A new run: an empty run folder with config.json (rank 0)."""
    if run.ctx.is_main:
        run.folder.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.csv", "best.pt", "last.pt"):
            (run.folder / stale).unlink(missing_ok=True)
        (run.folder / "config.json").write_text(json.dumps(run.record, indent=2))
    return Position()


def restore(run: Run, state: dict, clock: Clock) -> Position:
    """Weights, average, optimiser, scaler, RNG and position from last.pt's ``state``."""
    tr = state["training"]
    run.raw.load_state_dict(tr.get("weights", state["state_dict"]))
    if run.ema is not None:
        run.ema.load_state_dict(tr["ema"])
    run.optimizer.load_state_dict(tr["optimizer"])
    run.scaler.load_state_dict(tr["scaler"])
    torch.set_rng_state(tr["torch_rng"])
    clock.before = tr["elapsed"]
    if "instances" in state["metadata"]:  # inherited from --init (`setup.inherited_cell_settings`)
        run.metadata["instances"] = state["metadata"]["instances"]
    log.info("resuming %s at epoch %d, step %d", run.folder, tr["epoch"], tr["step"])
    return Position(epoch=tr["epoch"], step=tr["step"], best_value=tr["best_value"],
                    best_threshold=state["metadata"].get("threshold", 0.5))


def train_one_epoch(run: Run, position: Position, clock: Clock, stop: "_StopRequest",
                    stop_after_steps: int | None) -> tuple[str | None, list[float], float]:
    """Optimiser steps to the end of the epoch, or to a stop -> (why it stopped: None, "signal"
    or "time"; the steps' losses; the last learning rate)."""
    cfg = run.cfg
    skip = position.step - position.epoch * run.steps_per_epoch  # steps of this epoch already done (resume)
    run.sampler.set_epoch(position.epoch)
    run.model.train()
    losses, lr, stopped = [], cfg.lr, None
    bar = tqdm(total=run.steps_per_epoch, initial=skip, desc=f"epoch {position.epoch + 1}/{cfg.epochs}", leave=False,
               unit="step", disable=None if run.ctx.is_main else True)
    for i, batch in enumerate(run.loader):
        if i < skip:
            continue
        lr = learning_rate(cfg.lr, clock.progress(position.step, run.total_steps))
        loss = train_step(run, batch, lr, position)
        if loss is None:  # a non-finite loss, skipped (--skip-nonfinite)
            continue
        position.step += 1
        position.steps_this_call += 1
        losses.append(run.ctx.mean(loss))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        stopped = _stop_reason(run, position, clock, stop, stop_after_steps)
        if stopped is not None:
            break
    bar.close()
    return stopped, losses, lr


def train_step(run: Run, batch: list[torch.Tensor], lr: float, position: Position) -> float | None:
    """One optimiser step on a batch (image, label, weight[, skeleton]) -> its loss, or None
    where the loss was not finite and ``--skip-nonfinite`` skipped the step."""
    x, y, w, *extra = batch
    x = x.to(run.device, non_blocking=True)
    if run.channels_last:
        x = x.contiguous(memory_format=memory_format(run.cfg.dims))
    y, w = y.to(run.device, non_blocking=True), w.to(run.device, non_blocking=True)
    skeleton = extra[0].to(run.device, non_blocking=True) if extra else None  # with --skeleton-recall
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    with autocast(run.device, run.precision):
        logits = run.model(x)
    loss = segmentation_loss(logits, y, w, run.cfg.loss, skeleton, run.cfg.skeleton_recall)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    # One wait for the device per step, after the backward pass is queued: the optimiser's
    # step then runs on the GPU while the host prepares the next batch.
    value = loss.item()
    if run.ctx.any(not math.isfinite(value)):
        run.optimizer.zero_grad(set_to_none=True)  # a non-finite loss never reaches the weights
        if run.cfg.skip_nonfinite:
            log.warning("skipping step %d: the loss is not finite", position.step)
            return None
        raise UserInputError(
            f"the loss became {value} at step {position.step} (epoch {position.epoch + 1}); the last good "
            f"state is {run.folder / 'last.pt'}: lower --lr, or skip such steps with --skip-nonfinite")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update_parameters(run.raw)
    return value


def _stop_reason(run: Run, position: Position, clock: Clock, stop: "_StopRequest",
                 stop_after_steps: int | None) -> str | None:
    """"signal" (Ctrl-C, SIGTERM or ``stop_after_steps``), "time" (``--time-limit``) or None;
    decided by all processes together, so that they stop at the same step."""
    want_stop = stop.requested or (stop_after_steps is not None and position.steps_this_call >= stop_after_steps)
    out_of_time = clock.left() <= clock.reserve()
    if run.ctx.any(want_stop):
        return "signal"
    if run.ctx.any(out_of_time):
        return "time"
    return None


def end_epoch(run: Run, position: Position, clock: Clock, logbook: Logbook | None, train_loss: float, lr: float,
              t_epoch: float) -> None:
    """Validate the averaged weights, keep best.pt by ``select_by``, write last.pt, log the epoch
    (``train_loss``: the epoch's mean; ``lr``: its last learning rate; ``t_epoch``: when it
    began, by `time.monotonic`)."""
    cfg = run.cfg
    weights = (t for t in run.raw.state_dict().values() if t.is_floating_point())
    if not all(torch.isfinite(t).all() for t in weights):
        raise UserInputError(f"the weights became non-finite in epoch {position.epoch}; the last good state is "
                             f"{run.folder / 'last.pt'}: lower --lr")
    t_val = time.monotonic()
    if run.raw.config.spatial_dims == 3:
        refresh_batch_norm(run.averaged, run.loader.dataset, cfg.batch_size, run.device)
    v = validate(run.averaged, run.epoch_val_items, cfg, run.precision, ctx=run.ctx, input_shift=run.input_shift)
    clock.val_seconds = time.monotonic() - t_val
    clock.val_scale = pixels(run.calibration_items) / pixels(run.epoch_val_items)  # what the calibration sees
    clock.cells_scale = own_pixels(run.calibration_items) / pixels(run.epoch_val_items)
    value = v.value(cfg.select_by)
    best = position.best_value
    improved = best is None or (value > best if cfg.select_by in MAXIMISE else value < best)
    if improved:
        position.best_value, position.best_threshold = value, v.threshold
        if run.ctx.is_main:
            save_model(run.averaged, run.folder / "best.pt", **run.metadata, threshold=v.threshold,
                       val=dataclasses.asdict(v), epoch=position.epoch)
    save_last(run, position, clock)
    if logbook is not None:
        logbook.epoch(dict(epoch=position.epoch, step=position.step, train_loss=train_loss, val_loss=v.loss,
                           val_pixel_error=v.pixel_error, val_dice=v.dice,
                           val_adapted_rand_error=v.adapted_rand_error, val_rand_error=v.rand_error,
                           val_v_rand=v.v_rand, val_threshold=v.threshold, lr=lr,
                           seconds=round(time.monotonic() - t_epoch, 2), val_seconds=round(clock.val_seconds, 2)),
                      improved)


def save_last(run: Run, position: Position, clock: Clock) -> None:
    """last.pt (rank 0): the averaged weights to predict with, and all that ``--resume`` needs."""
    if not run.ctx.is_main:
        return
    payload = model_payload(run.averaged, **run.metadata, threshold=position.best_threshold)
    payload["training"] = dict(optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(),
                               torch_rng=torch.get_rng_state(), epoch=position.epoch, step=position.step,
                               elapsed=clock.elapsed(), best_value=position.best_value)
    if run.ema is not None:  # last.pt predicts with the average; training continues from both
        payload["training"].update(weights=run.raw.state_dict(), ema=run.ema.state_dict())
    save_payload(payload, run.folder / "last.pt")


def finish(run: Run, clock: Clock, logbook: Logbook | None, stopped: str | None, position: Position) -> None:
    """Final curves; then either the stop is reported (resumable) or best.pt is calibrated:
    the threshold chosen again on TTA predictions, as `unetile predict --tta` makes them, and
    for instance-id labels how cells are cut (validation.calibrate_checkpoint)."""
    # Every rank's last collective is done before any leaves: a rank that tore down its process
    # group while another was still in the last epoch's exchange was aborted by gloo (once in CI).
    run.ctx.barrier()
    if logbook is not None:
        logbook.close()
    if stopped == "signal":
        raise Interrupted(f"stopped at step {position.step}; resume with --resume {run.folder}")
    best = run.folder / "best.pt"
    if (run.cfg.calibrate_tta or clock.tune_cells) and run.ctx.is_main and best.exists():
        calibrate_checkpoint(best, run.calibration_items, run.cfg, run.precision, run.device, run.input_shift,
                             tta=run.cfg.calibrate_tta)
    log.info("done in %.0f s: %s", clock.elapsed(), best)
