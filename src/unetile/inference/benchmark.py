"""`unetile benchmark`: prediction speed side by side, every row in one process, same weights.

Every row runs on one device (``--device``: CUDA where present, else the CPU). On CUDA the
timings are synchronised, each row is run once untimed first (cuDNN's algorithm search,
compilation) and then timed as the median of runs repeated for about a second, and the
JSON holds each row's peak GPU memory (``torch.cuda.max_memory_allocated``).

Rows (each on the same inputs, with the same He-initialised paper net unless ``--width``):

1. ``reference``: the seed-style loop: fp32, one 572-px mirror-padded tile at a time, no
   batching, output tiles of 388 px laid edge to edge.
2. ``monai``: MONAI's ``sliding_window_inference`` (roi 512, overlap 0.25, gaussian
   blending, sw_batch_size 4, fp32). Valid convolutions make it inapplicable to the
   paper's net as is (its windows must return their own size), so it runs the net's
   *same-padding twin*: the very same weights in a UNet with ``padding="same"``. Its
   ``max_abs_diff`` is therefore against that twin's own whole-image output, not ours.
3. ``predict_tiled``: this tool's defaults on this device: tile size chosen by the tool,
   batched tiles, bf16 autocast + channels_last where the CPU has bf16 (AMP on CUDA, where
   the tiles are also cut on the device and the batch follows free memory).
   ``predict_tiled+compile`` (CUDA only): the same with ``torch.compile(mode="reduce-overhead")``,
   which also replays the net as CUDA graphs.
4. ``onnxruntime``: the exported model (fp32) through the same tiling (on CUDA through
   ONNX Runtime's CUDA provider; the row is skipped, saying why, where it is not installed).
5. ``limit``: the machine's measured peak matmul FLOP/s (at the fast path's precision)
   divided by the net's FLOPs per output pixel (torch.utils.flop_counter, no border
   waste): the best any implementation could do here.

Accuracy of each fast path: ``max_abs_diff`` of the probabilities and the fraction of
pixels whose 0.5 threshold flips, against fp32 ``predict_tiled``.

Workloads: a 2048² image and a stack of 30 slices of 512² (``--quick``: 1024², 6 x 512²); on
CUDA also an 8192² image.
"""

from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import choose_precision, resolve_device, use_fast_kernels, uses_channels_last
from ..nn.model import UNet, init_he, probabilities
from .predictor import compiled as compile_for_cuda
from .predictor import inference_model
from .tile_io import reflect_indices
from .layout import default_tile_size
from .tiling import default_batch_size, predict_tiled


@dataclass
class Row:
    method: str
    workload: str
    seconds: float
    mpix_per_s: float
    peak_rss_mb: float
    max_abs_diff: float | None = None
    flipped_fraction: float | None = None
    peak_gpu_mb: float | None = None  # CUDA: torch.cuda.max_memory_allocated during the row


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_predict(model: UNet, image: np.ndarray, tile: int = 572) -> np.ndarray:
    """The seed-style loop: fp32, one mirror-padded tile at a time, tiles edge to edge, each
    tile copied to the net's device and its output back."""
    h, w = image.shape
    out_tile = model.output_size(tile)
    halo = (tile - out_tile) // 2
    device = next(model.parameters()).device
    out = np.empty((1, h, w), np.float32)
    with torch.inference_mode():
        for y in range(0, h, out_tile):
            for x in range(0, w, out_tile):
                r = reflect_indices(y - halo, tile, h)
                c = reflect_indices(x - halo, tile, w)
                t = torch.from_numpy(np.ascontiguousarray(image[r[:, None], c[None, :]], np.float32))[None, None]
                p = torch.sigmoid(model(t.to(device)))[0].cpu().numpy()
                hh, ww = min(out_tile, h - y), min(out_tile, w - x)
                out[:, y : y + hh, x : x + ww] = p[:, :hh, :ww]
    return out


def monai_predict(twin: UNet, image: np.ndarray, roi: int = 512, batch: int = 4) -> np.ndarray:
    """MONAI's sliding window over an image (H, W) or a volume (Z, Y, X): windows of ``roi`` px
    per axis, ``batch`` at a time -> probabilities (C, ...)."""
    from monai.inferers import sliding_window_inference

    device = next(twin.parameters()).device
    with torch.inference_mode():
        x = torch.from_numpy(image.astype(np.float32))[None, None].to(device)
        y = sliding_window_inference(x, roi_size=roi, sw_batch_size=batch, predictor=lambda t: probabilities(twin(t)),
                                     overlap=0.25, mode="gaussian", padding_mode="reflect")
    return y[0].cpu().numpy()


def peak_flops(dtype: torch.dtype, seconds: float = 1.5, device: torch.device = torch.device("cpu")) -> float:
    """Measured matmul FLOP/s on this device (square matrices: 2048 on a CPU, 8192 on CUDA)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    _synchronize(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        count += 1
        if count % 16 == 0:
            _synchronize(device)  # CUDA queues work: time what ran, not what was queued
    _synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - t0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_output_pixel(model: UNet) -> float:
    """Marginal FLOPs per output pixel between two large valid tiles (no border waste)."""
    from torch.utils.flop_counter import FlopCounterMode

    sizes = [model.valid_input_size(400), model.valid_input_size(600)]
    flops = []
    for s in sizes:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, s, s))
        flops.append(counter.get_total_flops())
    outs = [model.output_size(s) ** 2 for s in sizes]
    return (flops[1] - flops[0]) / (outs[1] - outs[0])


def _accuracy(p: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(p - ref).max()), float(((p > 0.5) != (ref > 0.5)).mean())


def _timed(device: torch.device, fn, *args):
    """(fn(*args), seconds), synchronised on CUDA."""
    _synchronize(device)
    t0 = time.perf_counter()
    out = fn(*args)
    _synchronize(device)
    return out, time.perf_counter() - t0


@dataclass
class _Contenders:
    """The nets the rows run, all on ``device``: the exact fp32 net, its fast copy (BN folded,
    bf16 weights where bf16 is used), the same-padding twin MONAI runs, the ONNX export
    (None: skipped) and, on CUDA, the fast copy compiled."""

    device: torch.device
    exact: UNet
    fast: UNet
    precision: str  # the fast path's
    twin: UNet | None
    onnx: object | None
    compiled: torch.nn.Module | None = None

    def predict(self, method: str, images: list[np.ndarray]) -> list[np.ndarray]:
        if method == "reference":
            return [reference_predict(self.exact, im) for im in images]
        if method == "monai":
            return [monai_predict(self.twin, im) for im in images]
        if method in ("predict_tiled", "predict_tiled+compile"):
            net = self.compiled if method == "predict_tiled+compile" else self.fast
            channels_last = uses_channels_last(self.precision, self.device)
            return [predict_tiled(net, im, precision=self.precision, channels_last=channels_last,
                                  batch_size=self.batch_size(im)) for im in images]
        if method == "onnxruntime":
            return [predict_tiled(self.onnx, im) for im in images]
        raise ValueError(f"unknown benchmark method {method!r}")

    def batch_size(self, image: np.ndarray) -> int:
        """4 tiles on a CPU (as measured before); on CUDA the tool's choice for free memory."""
        if self.device.type != "cuda":
            return 4
        tile = default_tile_size(self.fast, *image.shape[-2:])
        return default_batch_size(self.fast, tile, self.precision, self.device)


METHODS = ("reference", "monai", "predict_tiled", "predict_tiled+compile", "onnxruntime", "limit")


def run_benchmark(quick: bool = False, width: int = 64, json_path: str | Path | None = None,
                  precision: str = "auto", methods: tuple[str, ...] = METHODS,
                  workloads: dict[str, list[np.ndarray]] | None = None, device: str | None = None,
                  sides: tuple[int, ...] | None = None) -> dict:
    """Measure every row on every workload on one device; print the table; optionally write JSON.

    ``workloads`` (name -> images) replaces the standard ones (used by the tests); ``sides``
    replaces the standard single-image sides; ``device``: "cpu", "cuda[:N]" or None (CUDA where
    present).
    """
    dev = resolve_device(device)
    use_fast_kernels(dev)  # for every row alike
    torch.manual_seed(0)
    model = init_he(UNet(width=width)).eval().to(dev)
    fast = choose_precision(precision, dev)
    workloads = workloads or standard_workloads(quick, dev, sides)
    if dev.type != "cuda":
        methods = tuple(m for m in methods if m != "predict_tiled+compile")
    contenders = _contenders(model, fast, methods, dev)
    rows: list[Row] = []
    for name, images in workloads.items():
        _measure_workload(contenders, methods, name, images, rows)
    if "limit" in methods:
        rows += _limit_rows(model, fast, workloads, dev)
    result = {"rows": [asdict(r) for r in rows], "machine": _machine(fast, width, dev)}
    print()
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result


def standard_workloads(quick: bool, device: torch.device,
                       sides: tuple[int, ...] | None = None) -> dict[str, list[np.ndarray]]:
    """Large images (``sides``) and a stack of 512² slices (see the module docstring)."""
    rng = np.random.default_rng(0)
    side, slices = (1024, 6) if quick else (2048, 30)
    if sides is None:
        sides = (side, 8192) if device.type == "cuda" else (side,)
    out = {f"{s}x{s}": [rng.random((s, s), dtype=np.float32)] for s in sides}
    out[f"{slices}x512x512"] = [rng.random((512, 512), dtype=np.float32) for _ in range(slices)]
    return out


def _contenders(model: UNet, precision: str, methods: tuple[str, ...], device: torch.device) -> _Contenders:
    twin = None
    if "monai" in methods:
        twin = UNet(width=model.config.width, padding="same").eval().to(device)
        twin.load_state_dict(model.state_dict())
    fast = inference_model(model, precision)
    compiled = compile_for_cuda(fast, device) if "predict_tiled+compile" in methods else None
    onnx = _export_onnx(model, device) if "onnxruntime" in methods else None
    return _Contenders(device, model, fast, precision, twin, onnx, compiled)


def _measure_workload(contenders: _Contenders, methods: tuple[str, ...], name: str, images: list[np.ndarray],
                      rows: list[Row]) -> None:
    """Append one row per method for this workload, each printed as it is measured."""
    mpix = sum(im.size for im in images) / 1e6
    exact = [predict_tiled(contenders.exact, im) for im in images]
    for method in methods:
        if method == "limit" or (method == "onnxruntime" and contenders.onnx is None):
            continue
        try:
            out, t, peak = _measure(contenders, method, images)
        except ImportError:
            if method != "monai":
                raise
            print("monai is not installed: pip install monai (skipping its row)")
            continue
        truth = [predict_tiled(contenders.twin, im) for im in images] if method == "monai" else exact
        diff = [_accuracy(o, e) for o, e in zip(out, truth)]
        rows.append(Row(method, name, t, mpix / t, _rss_mb(), max(d[0] for d in diff),
                        float(np.mean([d[1] for d in diff])), peak))
        print(_format_row(rows[-1], rows), flush=True)


def _measure(contenders: _Contenders, method: str, images: list[np.ndarray]) -> tuple[list, float, float | None]:
    """(outputs, seconds, peak GPU MB or None). On CUDA: after one untimed run, the median of
    timed runs repeated for about a second (at most 5), since one run of a small workload
    there lasts tens of milliseconds and varies by ~20%."""
    device = contenders.device
    if device.type != "cuda":
        out, t = _timed(device, contenders.predict, method, images)
        return out, t, None
    _, warm_up = _timed(device, contenders.predict, method, images[:1])  # cuDNN's choices, compilation
    print(f"{method}: untimed first run {warm_up:.1f} s", flush=True)
    torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    while len(times) < 5 and sum(times) < 1.0:
        out, t = _timed(device, contenders.predict, method, images)
        times.append(t)
    return out, float(np.median(times)), torch.cuda.max_memory_allocated(device) / 2**20


def _limit_rows(model: UNet, precision: str, workloads: dict[str, list[np.ndarray]],
                device: torch.device) -> list[Row]:
    """The device's limit per workload: FLOPs per output pixel over a measured matmul peak."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    per_px = flops_per_output_pixel(model.cpu())
    model.to(device)
    peak = peak_flops(dtype, device=device)
    rows = []
    for name, images in workloads.items():
        mpix = sum(im.size for im in images) / 1e6
        seconds = mpix * 1e6 * per_px / peak
        rows.append(Row("limit", name, seconds, mpix / seconds, _rss_mb()))
    print(f"limit: {per_px / 1e6:.2f} MFLOP per output pixel, peak {peak / 1e9:.0f} GFLOP/s ({dtype}, {device})")
    return rows


def _export_onnx(model: UNet, device: torch.device):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install onnxruntime onnx (skipping its row)")
        return None
    providers = ("CPUExecutionProvider",)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): skipping its row")
            return None
        providers = ("CUDAExecutionProvider",)
    from ..nn.checkpoint import save_model
    from ..packaging.export import OnnxModel, export_model

    folder = Path(tempfile.mkdtemp(prefix="unetile-bench-"))
    save_model(model.cpu(), folder / "m.pt")
    model.to(device)
    export_model(folder / "m.pt", folder / "m.onnx")
    return OnnxModel(folder / "m.onnx", providers=providers)


def _machine(precision: str, width: int, device: torch.device) -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "fast_precision": precision, "width": width, "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def _format_row(r: Row, rows: list[Row]) -> str:
    ref = next((x for x in rows if x.method == "reference" and x.workload == r.workload), None)
    ratio = f"{ref.seconds / r.seconds:7.2f}x" if ref else "       -"
    diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:10.2e} {100 * r.flipped_fraction:8.4f}%"
    gpu = "" if r.peak_gpu_mb is None else f" {r.peak_gpu_mb:9.0f}"
    return (f"{r.method:<21} {r.workload:<11} {r.seconds:9.2f} {r.mpix_per_s:9.3f} {ratio} "
            f"{r.peak_rss_mb:9.0f} {diff}{gpu}")


def format_table(result: dict) -> str:
    rows = [Row(**r) for r in result["rows"]]
    gpu = f" {'GPU MB':>9}" if any(r.peak_gpu_mb is not None for r in rows) else ""
    head = (f"{'method':<21} {'workload':<11} {'seconds':>9} {'Mpx/s':>9} {'vs ref':>8} {'peak MB':>9} "
            f"{'max|dp|':>10} {'flipped':>9}{gpu}")
    return "\n".join([head, "-" * len(head)] + [_format_row(r, rows) for r in rows])


if __name__ == "__main__":
    run_benchmark(quick=True)
