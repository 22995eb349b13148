"""Where and at which precision to run: device names, CUDA checks, bf16 detection."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserInputError


def resolve_device(device: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or None (CUDA where present); a clear error if CUDA is absent."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise UserInputError(f"--device {device}: not a device name ({e})") from e


def use_fast_kernels(device: torch.device) -> None:
    """On CUDA, let cuDNN time its algorithms for each new input shape and keep the fastest.

    Used for prediction, where tiles repeat one shape, so the search is paid once per shape
    (on an H200 the paper net's 8192² ran ~10% faster with it). Training does not use it: the
    model-alone training rate measured 15% lower with it (docs/results.md, "GPU"). The
    algorithms chosen may differ between processes, so CUDA results can differ in the last
    bits between runs (as they may anyway across GPUs); CPU results are unaffected.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on CPUs with bf16 instructions, bf16/fp16 AMP on CUDA, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def uses_channels_last(precision: str, device: torch.device, spatial_dims: int = 2) -> bool:
    """Whether a net runs in channels-last memory: at reduced precision, and volumes on a CPU in
    fp32 too (oneDNN's Conv3d is ~1.4x faster channels-last there: a width-16 3D net's training
    step on 2 x 48^3 tiles took 1.47 s instead of 2.07 s on one core; images keep the plain layout
    in fp32, where it was not faster)."""
    return precision in ("bf16", "fp16") or (spatial_dims == 3 and device.type == "cpu")


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` ("fp32" disables autocast)."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)
