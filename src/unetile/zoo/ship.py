"""Put a trained checkpoint into the package as a shipped model (maintainers).

    .venv/bin/python -m unetile.zoo.ship RUN/best.pt NAME --check IMAGE [IMAGE ...]

Writes ``src/unetile/zoo/NAME/model.pt``: the checkpoint with its weights in fp16 (half the
size; loading casts them back to float32) and its metadata (threshold, normalisation,
flips, label offset, the watershed settings) unchanged. Prints the file's size and the
largest change of the written probability on the ``--check`` images (fp32 prediction with
the original weights against the fp16 ones). The card (``NAME/card.md``) is written by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..inference.predictor import PredictOptions, Predictor
from ..io import atomic_path, read_image
from ..nn.checkpoint import load_payload
from . import ZOO


def ship(checkpoint: Path, name: str) -> Path:
    """``checkpoint`` -> ZOO/name/model.pt with fp16 weights; returns its path."""
    payload = load_payload(checkpoint)
    payload.pop("training", None)  # optimiser state: not needed to predict or fine-tune
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    target = ZOO / name / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def largest_change(original: Path, shipped: Path, images: list[Path]) -> float:
    """Max |Δ written probability| over ``images`` between the two checkpoints (fp32 runs)."""
    options = PredictOptions(precision="fp32")
    before, after = (Predictor.load(p, options, "cpu") for p in (original, shipped))
    worst = 0.0
    for path in images:
        image = read_image(path)[0]
        worst = max(worst, float(np.abs(before.predict(image, ".tif") - after.predict(image, ".tif")).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name")
    parser.add_argument("--check", type=Path, nargs="+", required=True, help="images to compare the predictions on")
    args = parser.parse_args()
    target = ship(args.checkpoint, args.name)
    change = largest_change(args.checkpoint, target, args.check)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB); fp16 weights change the probability by at most "
          f"{change:.1e} on {len(args.check)} image(s)")


if __name__ == "__main__":
    main()
