"""Predicting a chunked image into OME-Zarr, block by block: in this process or on a Dask cluster.

`predict_to_zarr` plans the blocks (blocks.py), opens the output (zarr_output.py), computes
each plane's percentiles from a bounded sample (chunked.py), and predicts the blocks not yet
done: here, one after another, or with ``cluster`` as one Dask task per block. A 3D net reads
the image as volumes (z, y, x; `ChunkedImage.as_volumes`): its blocks are boxes, each volume's
percentiles are sampled over the whole volume, and the output carries the voxel size (the
input's NGFF scale or TIFF metadata, else the model's).

* ``local:N`` starts a ``dask.distributed.LocalCluster`` of N worker processes (one thread
  each) for this run;
* ``tcp://HOST:PORT`` uses a running scheduler (``dask scheduler``; ``dask worker
  tcp://HOST:PORT --nthreads 1`` on each machine; for GPUs one worker per GPU, started with
  ``CUDA_VISIBLE_DEVICES=N`` and ``--resources GPU=1``: where any worker offers a GPU, the
  blocks' predictions ask for one, so they run on the GPU workers only).

Each worker loads the model once (cached per process) and writes its blocks straight into
the output store, which every worker must reach at the same path (a shared file system);
only block names travel back. A worker that dies costs only its blocks: Dask runs them
again elsewhere, and since a block always writes the same values, the result is identical.
A damaged input (a chunk that cannot be decoded) is a worker's answer, not a failed task:
the client stops the run with its one line, and the blocks written stay for ``--resume``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .chunked import ChunkedImage, open_chunked, sample_statistics
from ..errors import UserInputError
from ..io import match_channels_first
from .blocks import DEFAULT_BLOCK_PX, Block, BlockGrid, grid_of, predict_block
from ..inference.predictor import cell_threshold
from .zarr_labels import (CellJob, cell_margin, cells_work, create_labels, finish_labels, label_block, merge_blocks,
                          publish_labels, relabel_block)
from .zarr_output import ZarrOutput, output_layout


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to predict and write any block of one image (small: it travels)."""

    model: Path
    options: object  # PredictOptions (frozen, hashable)
    source: Path
    target: Path
    axes: str  # the output's
    shape: tuple[int, ...]  # the output's
    grid: BlockGrid
    stats: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]  # per plane (volume): (low, high) per channel
    ngff_version: str
    scale: tuple[float, ...] | None
    dtype: str
    device: str | None = None  # None: the worker's CUDA device where it has one, else its CPU
    voxel_size: tuple[float, float, float] | None = None  # volumes: (z, y, x) um, for cutting cells

    def output(self) -> ZarrOutput:
        return ZarrOutput(self.target, self.axes, self.grid, self.ngff_version, self.scale)

    def plane_stats(self, plane: int) -> tuple[np.ndarray, np.ndarray]:
        low, high = self.stats[plane]
        return np.asarray(low, np.float32), np.asarray(high, np.float32)


def predict_to_zarr(predictor, source: Path, target: Path, client=None, block_px: int = DEFAULT_BLOCK_PX,
                    progress: bool = True, worker_device: str | None = None) -> Path:
    """Predict the chunked image ``source`` into the OME-Zarr ``target`` (see the module
    docstring), in blocks (and output chunks) of about ``block_px`` px a side, here or on
    the Dask ``client``'s cluster (`cluster_client`), whose workers run on ``worker_device``
    (None: their CUDA device where they have one, else their CPU)."""
    image = open_chunked(source, _spatial(predictor))
    tile = workers_tile(predictor, image, client, worker_device)
    job = replace(plan(predictor, image, target, block_px, tile), device=worker_device)
    output = job.output()
    fingerprint = {**predictor.resume_fingerprint(), "stats": job.stats}
    output.create(job.shape, np.dtype(job.dtype), fingerprint, predictor.options.resume)
    _predict_blocks(predictor, image, job, output, client, progress)
    if predictor.instance_settings is not None:
        _cut_cells(predictor, job, output, client, progress)
    output.finish()
    return target


def _predict_blocks(predictor, image: ChunkedImage, job: BlockJob, output: ZarrOutput, client,
                    progress: bool) -> None:
    """The blocks not yet done, here or on the cluster. A damaged input (a chunk that cannot
    be read) stops the run with one line; the blocks written stay for ``--resume``."""
    blocks = job.grid.blocks()
    todo = [b for b in blocks if not output.done(b)]
    with tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc=job.target.name, unit="block",
              disable=not progress) as bar:
        try:
            if client is None:
                for block in todo:
                    write_block(predictor, image, job, output, block)
                    bar.update(1)
            else:
                run_blocks(client, run_block, todo, bar=bar, resources=_gpu_if_offered(client), job=job)
        except UserInputError as e:
            bar.leave = False  # one line: the error's
            raise UserInputError(f"{e}; the blocks already written are kept: fix what it names, then run "
                                 "the same command with --resume") from e


def _cut_cells(predictor, job: BlockJob, output: ZarrOutput, client, progress: bool) -> None:
    """``--instances``: the cells of the map just written, as an NGFF labels image in the
    output (or, with ``--into-input``, in the input image's own labels/), zarr_labels.py."""
    options = predictor.options
    image = job.source if options.into_input else output.part
    labels = (output.progress / "labels" if options.into_input else output.part / "labels") / options.label_name
    axes, shape, scale = _labels_layout(job, image if options.into_input else None)
    cells = CellJob(output.part / "0", labels, cells_work(output.progress), job.axes, axes, job.grid,
                    predictor.instance_settings, cell_threshold(options.threshold),
                    cell_margin(len(job.grid.axes), job.voxel_size), job.voxel_size)
    if options.resume and cells.published.exists():
        return  # an earlier run got as far as listing the labels
    create_labels(cells, shape, job.ngff_version, options.resume)
    blocks = job.grid.blocks()
    with tqdm(total=len(blocks), desc="cells", unit="block", disable=not progress) as bar:
        run_blocks(client, label_block, blocks, bar=bar, job=cells)
    luts, count = merge_blocks(cells)
    with tqdm(total=len(blocks), desc="cell ids", unit="block", disable=not progress) as bar:
        run_blocks(client, relabel_block, blocks, luts, bar=bar, job=cells)
    finish_labels(cells, job.ngff_version, scale)
    publish_labels(cells, image, options.label_name, count, job.ngff_version)


def _labels_layout(job: BlockJob, image: Path | None) -> tuple[str, tuple[int, ...], tuple[float, ...] | None]:
    """(axes, shape, scale) of the labels image: those of the OME-Zarr ``image`` it goes into
    (one channel where it has c), else of the output's map (one channel)."""
    if image is None:
        return job.axes, tuple(1 if a == "c" else n for a, n in zip(job.axes, job.shape)), job.scale
    source = open_chunked(image)
    return source.axes, tuple(1 if a == "c" else n for a, n in zip(source.axes, source.array.shape)), source.scale


def plan(predictor, image: ChunkedImage, target: Path, block_px: int | tuple[int, ...] = DEFAULT_BLOCK_PX,
         tile: int | tuple[int, ...] | None = None) -> BlockJob:
    """The blocks, the output's layout and dtype, and each plane's (volume's) percentiles;
    ``image`` as the net reads it (``open_chunked(path, _spatial(predictor))``); ``tile``: the
    tile of the device that predicts (default: ``predictor``'s own, `workers_tile`)."""
    n, _, *shape = image.shape
    grid = grid_of(predictor.model, n, tuple(shape), tile or predictor.tile_size(tuple(shape)), block_px)
    convert = functools.partial(match_channels_first, channels=predictor.config.in_channels, path=image.path,
                                convert=predictor.options.convert_channels)
    stats = []
    for plane in range(n):
        low, high = sample_statistics(image, plane, predictor.normalization, transform=convert)
        stats.append((tuple(map(float, low)), tuple(map(float, high))))
    axes, shape = output_layout(image, predictor.config.out_channels)
    mask = predictor.options.threshold is not None and not predictor.options.instances
    dtype = "uint8" if mask else "float32"
    # A volume's voxel size: the input's, else the model's (training volumes'); images have none.
    voxel = (image.voxel_size or predictor.voxel_size) if image.spatial == "zyx" else None
    return BlockJob(predictor.source, predictor.options, image.path, target, axes, shape, grid, tuple(stats),
                    image.ngff_version or "0.5", _output_scale(image, axes, voxel), dtype, voxel_size=voxel)


def workers_tile(predictor, image: ChunkedImage, client, worker_device: str | None) -> tuple[int, ...] | None:
    """The tile the cluster's workers pick for ``image`` on their own device, asked of one of
    them (a GPU worker where any offers one); None: ``predictor``'s own choice holds (no
    cluster, an image, or a tile the user gave). Why ask: a volume's tile is sized to the
    memory of the device that runs it (`tiling.volume_tile_voxels`); a client on a CPU would
    plan a GPU worker's tiles with the CPU's cap (9% of each tile's voxels kept by the
    paper-sized net), a client on a GPU a CPU worker's with the GPU's. The workers are taken
    to be alike: the plan is one worker's."""
    if client is None or predictor.spatial_dims == 2 or predictor.options.tile_size:
        return None
    shape = tuple(image.shape[2:])  # (Z, Y, X)
    answer = client.submit(_answer, predictor.source, predictor.options, worker_device, image.path, _spatial(predictor),
                           shape, task=_tile_on_worker, pure=False, resources=_gpu_if_offered(client)).result()
    if isinstance(answer, UserInputError):  # the input, opened there: one line, as for a block
        raise answer
    return tuple(answer)


def _tile_on_worker(model: Path, options, device: str | None, source: Path, spatial: str,
                    shape: tuple[int, ...]) -> tuple[int, ...]:
    predictor, _ = _worker_state(model, options, device, source, spatial)
    return tuple(predictor.tile_size(shape))


def _spatial(predictor) -> str:
    """The axes the net reads: "yx" (planes) or "zyx" (volumes)."""
    return "zyx" if predictor.spatial_dims == 3 else "yx"


def _output_scale(image: ChunkedImage, axes: str, voxel: tuple[float, float, float] | None
                  ) -> tuple[float, ...] | None:
    """The output's scale per axis: the input's, else (volumes) the voxel size on z, y, x."""
    if image.scale is not None:
        size = dict(zip(image.axes, image.scale))
    elif voxel is not None:
        size = dict(zip("zyx", voxel))
    else:
        return None
    return tuple(size.get(a, 1.0) for a in axes)


# --- tasks, here or on a Dask cluster ------------------------------------------------------

def run_blocks(client, task, blocks: list[Block], *per_block, bar: tqdm, resources: dict | None = None,
               **shared) -> None:
    """``task(block, *per_block values, **shared)`` for each block: here in order without a
    ``client``, else as one Dask task each (any order, any worker that has ``resources``)."""
    if client is None:
        for args in zip(blocks, *per_block):
            task(*args, **shared)
            bar.update(1)
        return
    from distributed import as_completed

    futures = client.map(_answer, blocks, *per_block, pure=False, resources=resources, task=task, **shared)
    for future in as_completed(futures, loop=client.loop):
        answer = future.result()  # a worker's bug is raised here, with its traceback
        if isinstance(answer, UserInputError):
            _silence_everywhere(client)  # what stopping says would surround the one line of the error
            client.cancel(futures)
            raise answer
        bar.update(1)


def _silence() -> None:
    """Dask's loggers at critical messages only, here and (through ``client.run``) on every worker,
    once a damaged input stops the run: a worker that loses the scheduler while the cluster closes
    logs that as an error ("Failed to communicate with scheduler during heartbeat", with its
    traceback: seen once in CI beside the one line of the damaged input)."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _silence_everywhere(client) -> None:
    _silence()
    try:
        client.run(_silence)
    except Exception:  # noqa: BLE001 - a worker already gone: nothing of it to quiet
        pass


def _answer(*args, task, **shared):
    """``task(*args, **shared)`` on a worker; a `UserInputError` (a damaged input) is returned
    as the answer, not raised: the worker would log a failed task with its traceback beside
    the client's one line."""
    try:
        return task(*args, **shared)
    except UserInputError as e:
        return e


def _gpu_if_offered(client) -> dict | None:
    """{"GPU": 1} where a worker of the cluster offers GPUs (``--resources GPU=1``), else None."""
    workers = client.scheduler_info()["workers"].values()
    return {"GPU": 1} if any("GPU" in w.get("resources", {}) for w in workers) else None


@contextlib.contextmanager
def cluster_client(cluster: str | None):
    """A Dask client for ``local:N`` (a cluster made for this run, closed after it) or a
    scheduler address ``tcp://HOST:PORT``; None: no client (predict in this process)."""
    from distributed import Client, LocalCluster

    if cluster is None:
        yield None
        return
    if cluster.startswith("local:"):
        count = cluster.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise UserInputError(f"--cluster {cluster}: give local:N with N >= 1 workers")
        # Dask's warnings (memory, lost workers) are shown, not its chatter of starting and
        # stopping; after a damaged input, nothing but the one line of the error (`run_blocks`).
        with _quiet("distributed", logging.WARNING), LocalCluster(
                n_workers=int(count), threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=logging.WARNING) as local, Client(local, set_as_default=False) as client:
            yield client
        return
    if not cluster.startswith(("tcp://", "tls://")):
        raise UserInputError(f"--cluster {cluster}: give local:N or a scheduler address tcp://HOST:PORT")
    try:
        client = Client(cluster, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise UserInputError(f"--cluster {cluster}: the scheduler does not answer ({e})") from e
    with client:
        yield client


@contextlib.contextmanager
def _quiet(name: str, level: int):
    """The logger ``name`` at ``level`` (or above) inside, as it was after."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


def run_block(block: Block, job: BlockJob) -> str:
    """A Dask task: predict ``block`` of ``job`` and write it; returns its name."""
    output = job.output()
    if not output.done(block):
        predictor, image = _worker_state(job.model, job.options, job.device, job.source, job.grid.axes)
        write_block(predictor, image, job, output, block)
    return block.name


def write_block(predictor, image: ChunkedImage, job: BlockJob, output: ZarrOutput, block: Block) -> None:
    """Predict one block of ``job`` and write it (then it counts as done)."""
    values = predict_block(predictor, image, job.grid, block, job.plane_stats(block.plane), np.dtype(job.dtype))
    output.write(block, values)


@functools.lru_cache(maxsize=2)
def _worker_state(model: Path, options, device: str | None, source: Path, spatial: str):
    """The model, loaded once per worker process, and the input, opened once (as planes or
    volumes: ``spatial``)."""
    import torch

    from ..device import resolve_device
    from ..inference.predictor import Predictor

    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except ValueError:  # not inside a Dask worker
        pass
    return Predictor.load(model, options, resolve_device(device)), open_chunked(source, spatial)
