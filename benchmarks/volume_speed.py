"""Speed of 3D prediction on this machine: Mvoxel/s of the 3D U-Net against the machine's limit.

    .venv/bin/python benchmarks/volume_speed.py [--quick] [--width 32] [--device cpu] [--json out.json]

Rows, all on one volume (default 96 x 320 x 320 voxels, isotropic) with the paper-sized 3D net
(Cicek et al. 2016: width 32, depth 3, 3x3x3 valid convolutions, He-initialised):

- ``predict_tiled fp32``: the overlap-tile path on the exact net;
- ``predict_tiled bf16``: what `unetile predict` runs on a CPU with bf16 (`inference_model`:
  BatchNorm folded, bf16 weights, channels_last_3d), the default tile shape; only where the CPU
  has bf16 (`device.choose_precision`), since emulated bf16 is far slower than fp32;
- ``MONAI sliding window``: MONAI's ``sliding_window_inference`` (roi 128^3, overlap 0.25,
  gaussian) with the same weights in a same-padding twin, as `unetile benchmark` runs it in 2D:
  not the same function (zero padding at every window's faces, blended), so no difference is
  shown; its speed is what a MONAI user of this net would get;
- ``limit``: the net's FLOPs per output voxel (torch.utils.flop_counter, marginal between two
  large tiles, so no border waste) over the machine's measured matmul peak at the fast path's
  precision: no tiling can beat it on this CPU. The 2D path reaches 91-93% of its own limit
  (docs/results.md).

With ``--device cuda`` the same rows on the GPU (fp32 there is cuDNN's default, TF32 convolutions;
the fast path is bf16 autocast; no MONAI row), against the GPU's measured bf16 matmul peak.

Prints a table (and the machine's load average, which shared cores make worth stating).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time

import numpy as np
import torch

from unetile.device import choose_precision, uses_channels_last
from unetile.inference.benchmark import monai_predict, peak_flops
from unetile.inference.predictor import inference_model
from unetile.inference.tiling import default_batch_size, default_tile, predict_tiled
from unetile.nn.model import UNet, UNetConfig, init_he


def paper_net_3d(width: int) -> UNet:
    torch.manual_seed(0)
    return init_he(UNet(config=UNetConfig(width=width, depth=3, spatial_dims=3))).eval()


def flops_per_output_voxel(model: UNet) -> float:
    """Marginal FLOPs per output voxel between two large valid tiles (no border waste)."""
    from torch.utils.flop_counter import FlopCounterMode

    sizes = [model.valid_input_size(n, "up") for n in (100, 132)]
    flops, outs = [], []
    for s in sizes:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, s, s, s))
        flops.append(counter.get_total_flops())
        outs.append(model.output_size(s) ** 3)
    return (flops[1] - flops[0]) / (outs[1] - outs[0])


def timed_prediction(model: UNet, volume: np.ndarray, precision: str,
                     device: torch.device) -> tuple[float, np.ndarray, tuple]:
    """(seconds, probabilities, tile shape) of predict_tiled at ``precision`` on ``device`` (after a
    warm-up batch)."""
    net = inference_model(copy.deepcopy(model).to(device), precision)
    tile = default_tile(net, volume.shape, precision, device)
    batch = default_batch_size(net, tile, precision, device)
    channels_last = uses_channels_last(precision, device, 3)
    small = volume[: tile[0], : tile[1], : tile[2]]
    predict_tiled(net, small, tile_size=tile, precision=precision, channels_last=channels_last)  # warm-up
    t0 = time.perf_counter()
    prob = predict_tiled(net, volume, tile_size=tile, batch_size=batch, precision=precision,
                         channels_last=channels_last)
    return time.perf_counter() - t0, prob, tile


def timed_monai(model: UNet, volume: np.ndarray, roi: int) -> float | None:
    """Seconds of MONAI's ``sliding_window_inference`` (windows of ``roi``^3, overlap 0.25,
    gaussian blending, one at a time) with the same-padding twin of ``model`` (same weights, fp32,
    channels-last as ours), after a warm-up window; None where MONAI is not installed."""
    try:
        import monai  # noqa: F401
    except ImportError:
        print("monai is not installed: pip install monai (skipping its row)")
        return None
    twin = UNet(config=dataclasses.replace(model.config, padding="same")).eval()
    twin.load_state_dict(model.state_dict())
    twin = inference_model(twin, "fp32")
    monai_predict(twin, volume[:roi, :roi, :roi], roi, batch=1)  # warm-up
    t0 = time.perf_counter()
    monai_predict(twin, volume, roi, batch=1)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 48 x 160 x 160 volume")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--shape", default=None, help="Z,Y,X of the volume (default 96,320,320)")
    parser.add_argument("--monai-roi", type=int, default=128, help="MONAI's window (voxels per axis)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else (
        (48, 160, 160) if args.quick else (96, 320, 320))
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    model = paper_net_3d(args.width)
    mvox = volume.size / 1e6
    rows = []
    reference = None
    fast = choose_precision("auto", device)
    for precision in dict.fromkeys(("fp32", fast)):
        seconds, prob, tile = timed_prediction(model, volume, precision, device)
        diff = None if reference is None else float(np.abs(prob - reference).max())
        reference = prob if reference is None else reference
        rows.append({"method": f"predict_tiled {precision}", "seconds": seconds, "mvox_per_s": mvox / seconds,
                     "tile": list(tile), "max_abs_diff_vs_fp32": diff})
    seconds = timed_monai(model, volume, args.monai_roi) if device.type == "cpu" else None
    if seconds is not None:
        rows.append({"method": f"MONAI sliding window (same-padding twin, fp32, roi {args.monai_roi})",
                     "seconds": seconds, "mvox_per_s": mvox / seconds, "tile": [args.monai_roi] * 3,
                     "max_abs_diff_vs_fp32": None})
    per_voxel = flops_per_output_voxel(model)
    peak = peak_flops({"bf16": torch.bfloat16, "fp16": torch.float16}.get(fast, torch.float32), device=device)
    rows.append({"method": f"limit ({fast} matmul peak)", "seconds": per_voxel * volume.size / peak,
                 "mvox_per_s": peak / per_voxel / 1e6, "tile": None, "max_abs_diff_vs_fp32": None})
    limit = rows[-1]["mvox_per_s"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"3D U-Net width {args.width}, depth 3, volume {shape} ({mvox:.1f} Mvoxel), {where}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{per_voxel / 1e6:.2f} MFLOP per output voxel; {fast} matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print(f"| {'method':26s} | {'seconds':>8s} | {'Mvoxel/s':>8s} | {'of limit':>8s} | tile | max diff vs fp32 |")
    print("|---|---:|---:|---:|---|---:|")
    for r in rows:
        diff = "" if r["max_abs_diff_vs_fp32"] is None else f"{r['max_abs_diff_vs_fp32']:.1e}"
        print(f"| {r['method']:26s} | {r['seconds']:8.1f} | {r['mvox_per_s']:8.3f} | "
              f"{r['mvox_per_s'] / limit:8.0%} | {r['tile'] or ''} | {diff} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": shape, "width": args.width, "device": where, "flops_per_voxel": per_voxel,
                       "peak_flops": peak, "load_average": os.getloadavg()[0], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
