"""Training throughput (samples/s and output Mpx/s) of the U-Net on this machine.

    .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--device cuda]

One table: width x tile x batch x precision, each row measured in this process on random
data (no augmentation: the model's own cost), after one warm-up step. On CUDA, fp16 rows
use a gradient scaler, as training does, and timings wait for the GPU to finish.
"""

import argparse
import time

import torch

from unetile import UNet, init_he
from unetile.device import autocast
from unetile.training.losses import segmentation_loss


def measure(width: int, tile: int, batch: int, precision: str, steps: int, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    net = init_he(UNet(width=width, dropout=0.1)).to(device)
    cl = precision != "fp32"
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    out = net.output_size(tile)
    x = torch.randn(batch, 1, tile, tile, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, out, out, device=device) > 0.5).long()
    w = torch.ones(batch, out, out, device=device)
    for i in range(steps + 1):
        if i == 1:
            sync(device)
            t = time.perf_counter()
        with autocast(device, precision):
            logits = net(x)
        loss = segmentation_loss(logits, y, w, "bce")
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    sync(device)
    dt = (time.perf_counter() - t) / steps
    return batch / dt, batch * out * out / dt / 1e6


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--configs", default="16:572:2:fp32,16:572:2:bf16,32:572:2:bf16,16:396:4:bf16,16:764:1:bf16,24:572:2:bf16")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    a = p.parse_args()
    device = torch.device(a.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(f"{'width':>5} {'tile':>5} {'batch':>5} {'precision':>9} {'samples/s':>10} {'out Mpx/s':>10}")
    for c in a.configs.split(","):
        w, t, b, prec = c.split(":")
        s, m = measure(int(w), int(t), int(b), prec, a.steps, device)
        print(f"{w:>5} {t:>5} {b:>5} {prec:>9} {s:10.2f} {m:10.3f}", flush=True)


if __name__ == "__main__":
    main()
