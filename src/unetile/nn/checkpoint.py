"""Checkpoints: a model's config, weights and the facts prediction needs, loaded safely.

A checkpoint is a plain dict of tensors, numbers and strings::

    {"format": "unetile-checkpoint", "version": 1, "config": {...UNetConfig...},
     "state_dict": {...}, "metadata": {"normalization": {...}, "threshold": 0.5, ...}}

It is read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects,
so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import UserInputError, first_line, reading
from ..io import atomic_path
from ..normalization import Normalization
from .model import UNet, UNetConfig

FORMAT = "unetile-checkpoint"
LEGACY_FORMATS = ("unet-checkpoint",)  # written before the package was renamed from `unet`; read as is
VERSION = 1


def save_model(model: UNet, path: str | Path, **metadata: Any) -> None:
    """Save ``model`` with its config; ``metadata`` (plain values) is stored beside it.

    Unless given, ``normalization`` defaults to the standard percentile normalisation.
    The write is atomic: a crash leaves any previous file at ``path`` intact.
    """
    save_payload(model_payload(model, **metadata), path)


def model_payload(model: UNet, **metadata: Any) -> dict:
    """The checkpoint dict for ``model`` (see the module docstring); extra keys may be added."""
    metadata.setdefault("normalization", Normalization().to_dict())
    if isinstance(metadata["normalization"], Normalization):
        metadata["normalization"] = metadata["normalization"].to_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": _unwrap(model).config.to_dict(),
        "state_dict": state,
        "metadata": metadata,
    }


def save_payload(payload: dict, path: str | Path) -> None:
    """``torch.save`` a plain dict atomically (temp file + fsync + rename)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_payload(path: str | Path) -> dict:
    """Read a checkpoint dict with ``weights_only=True``; errors name the file. ``path`` may be
    a shipped model's name (unetile.zoo); a file of that name wins."""
    from ..zoo import resolve_model

    path = resolve_model(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise UserInputError(f"{path}: not a checkpoint (not a PyTorch archive, or truncated)")
    payload = safe_torch_load(path, str(path))
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, *LEGACY_FORMATS):
        raise UserInputError(f"{path}: not a U-Net checkpoint of this tool (no '{FORMAT}' marker)")
    if not isinstance(payload.get("version", 0), int):
        raise UserInputError(f"{path}: checkpoint version {payload['version']!r} is not a whole number")
    if payload.get("version", 0) > VERSION:
        raise UserInputError(f"{path}: checkpoint version {payload['version']} is newer than this tool ({VERSION})")
    check_record(payload, str(path))
    return payload


def check_record(record: dict, name: str) -> None:
    """``record`` (a checkpoint dict, or a package's config + weights) has the shapes this tool
    reads: a config mapping, named tensors, metadata with a threshold in (0, 1), percentiles
    and a shift of numbers; else one `UserInputError` naming ``name`` (files are edited by hand)."""
    problem = _record_problem(record)
    if problem:
        raise UserInputError(f"{name}: {problem}")


def _record_problem(record: dict) -> str | None:
    state, metadata = record.get("state_dict"), record.get("metadata", {})
    if not isinstance(record.get("config"), dict):
        return "its config is not a mapping of settings"
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return "its weights are not a mapping of names to tensors"
    if not isinstance(metadata, dict):
        return "its metadata is not a mapping"
    threshold = metadata.get("threshold", 0.5)
    if not _is_number(threshold) or not 0 < threshold < 1:
        return f"its threshold {threshold!r} is not a number between 0 and 1"
    norm = metadata.get("normalization", {"low": 1.0, "high": 99.0})
    if not isinstance(norm, dict) or not all(_is_number(norm.get(k)) for k in ("low", "high")):
        return f"its normalization {norm!r} is not {{low, high}} percentiles"
    if any(k in norm and not _is_number(norm[k]) for k in ("floor", "peak")):
        return f"its normalization {norm!r} has a floor or peak that is not a number"
    shift = metadata.get("input_shift", (0.0, 0.0))
    if not isinstance(shift, (list, tuple)) or len(shift) != 2 or not all(_is_number(s) for s in shift):
        return f"its input_shift {shift!r} is not two numbers (dy, dx)"
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def safe_torch_load(source: str | Path | IO[bytes], name: str) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU; a file that holds pickled objects
    other than tensors and plain values (which could run code), or that is corrupt, is a
    one-line `UserInputError` naming ``name`` (the file, or ``package.zip:member``)."""
    with reading(name, "not a readable PyTorch file"):
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserInputError(f"{name}: refused: it holds Python objects other than tensors and plain values, "
                                 "which could run code when loaded") from e


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Rebuild the saved model (eval mode) -> (model, metadata)."""
    payload = load_payload(path)
    model = rebuild(payload, f"{path}: checkpoint does not match its architecture")
    model.to(device).eval()
    return model, dict(payload.get("metadata", {}))


def rebuild(record: dict, mismatch: str) -> UNet:
    """The `UNet` of ``record["config"]`` holding ``record["state_dict"]``; a one-line
    `UserInputError` ``mismatch (why)`` when either is missing or they do not fit."""
    try:
        model = UNet(config=UNetConfig.from_dict(record["config"]))
        model.load_state_dict(record["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise UserInputError(f"{mismatch} ({first_line(e)})") from e
    return model


def _unwrap(model: torch.nn.Module) -> UNet:
    """The UNet inside a DistributedDataParallel or torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model  # type: ignore[return-value]
