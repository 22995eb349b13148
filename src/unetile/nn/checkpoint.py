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
    if payload.get("version", 0) > VERSION:
        raise UserInputError(f"{path}: checkpoint version {payload['version']} is newer than this tool ({VERSION})")
    return payload


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
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserInputError(f"{mismatch} ({first_line(e)})") from e
    return model


def _unwrap(model: torch.nn.Module) -> UNet:
    """The UNet inside a DistributedDataParallel or torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model  # type: ignore[return-value]
