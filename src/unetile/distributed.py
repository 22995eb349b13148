"""Many processes, one training run: PyTorch's own DistributedDataParallel under torchrun.

``torchrun --nproc-per-node N -m unetile train ...`` (or ``unetile train --devices N``, which runs
exactly that) starts N processes; each calls `init` and gets its rank. NCCL on CUDA, gloo
on the CPU. Rank 0 alone writes checkpoints, logs and pictures. Collective calls carry a
timeout, so a process that dies ends the job with a message instead of a hang.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def init(device: torch.device, timeout_s: float = 300.0) -> tuple[Context, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a no-op otherwise.

    Returns the context and this rank's device (cuda:LOCAL_RANK on GPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)), device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if rank != 0:
        logging.getLogger("unetile").setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s)", world, backend)
    return Context(rank, world, local_rank), device


def check_gpus(processes: int, device: torch.device) -> None:
    """A one-line error where more processes per machine than GPUs are asked for (one GPU each)."""
    if device.type == "cuda" and processes > (n := torch.cuda.device_count()):
        raise UserInputError(f"{processes} processes need one GPU each, but this machine has {n}: "
                             f"use --devices {n} (--nproc-per-node {n} under torchrun) or --device cpu")


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """DDP around the model; SyncBatchNorm where PyTorch supports it (CUDA).

    PyTorch's SyncBatchNorm runs on GPUs only; on the CPU each process normalises with
    its own batch statistics (use batch >= 2 per process, or --no-batch-norm).
    """
    if not ctx.active:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m unetile ARGV`` in ``nproc`` processes through torchrun; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "unetile", *argv]
    log.info("launching: %s", " ".join(cmd))
    return subprocess.call(cmd)
