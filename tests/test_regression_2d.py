"""2D outputs stay bit for bit what they were when they were stored (issue 34: the 3D work
must leave 2D unchanged).

`outputs()` runs the 2D paths end to end on small fixed data: He-initialised nets tiled by
`predict_tiled` (valid and same padding, transposed and bilinear up-sampling, TTA), a short
training run through the CLI (data, label kinds, weight map, elastic augmentation, loss,
calibration), its prediction (calibrated map, TTA, cells) and `unetile evaluate` of it. The
stored copy is tests/data/regression_2d.npz (+ .json for the numbers), made on one thread of
an x86-64 CPU with AVX-512 (the project's machines; another instruction set may round
differently, and then needs its own copy).

Regenerate only when a change is *meant* to alter 2D outputs, and say so in its commit:

    .venv/bin/python -m tests.test_regression_2d --write
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unetile import predict_tiled
from unetile.cli import main
from unetile.io import read_image
from unetile.synthetic import write_dataset

from .conftest import tiny_unet

STORED = Path(__file__).resolve().parent / "data" / "regression_2d"
NETS = {  # name -> tiny_unet arguments
    "valid-transpose": dict(width=4, depth=3),
    "same-transpose": dict(width=4, depth=2, padding="same"),
    "valid-bilinear": dict(width=4, depth=2, up_mode="bilinear", out_channels=2),
}
TRAIN = ["--width", "4", "--depth", "2", "--tile-size", "76", "--batch-size", "2", "--samples-per-epoch", "8",
         "--epochs", "4", "--precision", "fp32", "--workers", "0", "--device", "cpu", "--seed", "3", "--no-calibrate-tta"]


def tiled_outputs() -> dict[str, np.ndarray]:
    """He-initialised nets tiled over a fixed 150 x 130 image, fp32, without and with TTA."""
    image = np.random.default_rng(7).normal(size=(150, 130)).astype(np.float32)
    out = {}
    for name, kwargs in NETS.items():
        net = tiny_unet(seed=1, **kwargs)
        out[f"tiled/{name}"] = predict_tiled(net, image, precision="fp32")
        out[f"tiled/{name}/tta"] = predict_tiled(net, image, precision="fp32", tta=True)
    return out


def run_outputs(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A short training run and what it predicts and scores, through the CLI."""
    data = write_dataset(folder / "data", 4, 96, seed=0)
    test = write_dataset(folder / "test", 1, 120, seed=1)
    assert main(["-q", "train", "--data", str(data), "--out", str(folder / "run"), *TRAIN]) == 0
    model = str(folder / "run" / "best.pt")
    images = str(test / "images")
    for out, extra in (("map", []), ("tta", ["--tta"]), ("cells", ["--instances"])):
        assert main(["-q", "predict", "--model", model, "--input", images, "--out", str(folder / out),
                     "--format", "tif", "--precision", "fp32", *extra]) == 0
    assert main(["-q", "evaluate", "--pred", str(folder / "map"), "--labels", str(test / "labels"), "--json",
                 str(folder / "scores.json")]) == 0
    arrays = {f"run/{out}": read_image(next((folder / out).iterdir()))[0, 0] for out in ("map", "tta", "cells")}
    state = torch.load(model, weights_only=True)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state["state_dict"].values())).hexdigest()
    numbers = {"weights_sha256": digest, "threshold": state["metadata"].get("threshold"),
               "scores": _rounded(json.loads((folder / "scores.json").read_text()))}
    return arrays, numbers


def outputs() -> tuple[dict[str, np.ndarray], dict]:
    """Everything, on one thread: oneDNN's sums (and so the last bits) depend on the thread
    count, which other tests change and machines differ in."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            arrays, numbers = run_outputs(Path(tmp))
        return {**tiled_outputs(), **arrays}, numbers
    finally:
        torch.set_num_threads(threads)


def _rounded(value):
    """JSON numbers to 12 significant digits (printing floats is not part of the contract)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def write() -> None:
    arrays, numbers = outputs()
    STORED.parent.mkdir(exist_ok=True)
    np.savez_compressed(STORED.with_suffix(".npz"), **arrays)
    STORED.with_suffix(".json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    print(f"wrote {STORED}.npz ({len(arrays)} arrays) and .json")


@pytest.fixture(scope="module")
def current():
    return outputs()


def test_2d_outputs_are_bit_for_bit_the_stored_ones(current):
    arrays, numbers = current
    stored = np.load(STORED.with_suffix(".npz"))
    assert sorted(stored.files) == sorted(arrays)
    changed = [name for name in stored.files if not (stored[name].dtype == arrays[name].dtype
                                                     and np.array_equal(stored[name], arrays[name]))]
    assert not changed, f"2D outputs changed: {changed}"
    assert numbers == json.loads(STORED.with_suffix(".json").read_text())


def test_the_comparison_sees_a_one_ulp_change(current):
    arrays, _ = current
    stored = np.load(STORED.with_suffix(".npz"))["tiled/valid-transpose"]
    nudged = arrays["tiled/valid-transpose"].copy()
    nudged.flat[0] = np.nextafter(nudged.flat[0], np.float32(2))
    assert not np.array_equal(stored, nudged)


if __name__ == "__main__" and "--write" in sys.argv:
    write()
