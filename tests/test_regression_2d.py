"""2D outputs stay bit for bit what they were when they were stored (issue 34: the 3D work
must leave 2D unchanged).

`outputs()` runs the 2D paths end to end on small fixed data: He-initialised nets tiled by
`predict_tiled` (valid and same padding, transposed and bilinear up-sampling, TTA), a short
training run through the CLI (data, label kinds, weight map, elastic augmentation, loss,
calibration), its prediction (calibrated map, TTA, cells) and `unetile evaluate` of it. The
stored copy is tests/data/regression_2d.npz (+ .json for the numbers), made on one thread of
an x86-64 CPU. CPUs whose fp32 kernels round differently (measured: two x86-64 CPUs with
AVX-512 differed by up to 2e-6 in the tiled maps, and the training runs drifted apart) have
their own copy beside it, regression_2d.<machine>.npz; the outputs must equal one copy bit for
bit (a change of the code would have to reproduce another machine's last bits to slip through).

Regenerate only when a change is *meant* to alter 2D outputs, and say so in its commit (this
removes the other machines' copies, now stale):

    .venv/bin/python -m tests.test_regression_2d --write

A machine that rounds differently, on a commit whose outputs equal the stored copy where it
was made: ``--add-machine NAME`` adds its own copy.
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


def stored_copies() -> list[Path]:
    """The stored copies (.npz paths): the reference, then one per machine that rounds differently."""
    return [STORED.with_suffix(".npz")] + sorted(STORED.parent.glob(f"{STORED.name}.*.npz"))


def write(machine: str | None = None) -> None:
    """The reference copy (``machine`` None; the other machines' copies are removed as stale), or
    ``machine``'s own copy beside it."""
    arrays, numbers = outputs()
    STORED.parent.mkdir(exist_ok=True)
    if machine is None:
        for stale in stored_copies()[1:]:
            stale.unlink()
            stale.with_suffix(".json").unlink()
            print(f"removed {stale} (stale)")
    # named in full: with_suffix would take a machine name's own dots for the suffix
    target = STORED.parent / (STORED.name if machine is None else f"{STORED.name}.{machine}")
    np.savez_compressed(f"{target}.npz", **arrays)
    Path(f"{target}.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}.npz ({len(arrays)} arrays) and .json")


@pytest.fixture(scope="module")
def current():
    return outputs()


def changed_outputs(arrays: dict[str, np.ndarray], numbers: dict, copy: Path) -> list[str]:
    """The names of the outputs that differ from the stored ``copy`` ("numbers": the JSON)."""
    stored = np.load(copy)
    assert sorted(stored.files) == sorted(arrays)
    changed = [name for name in stored.files if not (stored[name].dtype == arrays[name].dtype
                                                     and np.array_equal(stored[name], arrays[name]))]
    return changed + ([] if numbers == json.loads(copy.with_suffix(".json").read_text()) else ["numbers"])


def test_2d_outputs_are_bit_for_bit_the_stored_ones(current):
    arrays, numbers = current
    changed = {copy.name: changed_outputs(arrays, numbers, copy) for copy in stored_copies()}
    assert any(not names for names in changed.values()), f"2D outputs changed: {changed}"


def test_the_comparison_sees_a_one_ulp_change(current):
    arrays, numbers = current
    nudged = {**arrays, "tiled/valid-transpose": arrays["tiled/valid-transpose"].copy()}
    nudged["tiled/valid-transpose"].flat[0] = np.nextafter(nudged["tiled/valid-transpose"].flat[0], np.float32(2))
    for copy in stored_copies():
        assert "tiled/valid-transpose" in changed_outputs(nudged, numbers, copy), copy.name


if __name__ == "__main__" and "--write" in sys.argv:
    write()
elif __name__ == "__main__" and "--add-machine" in sys.argv:
    write(sys.argv[sys.argv.index("--add-machine") + 1])
