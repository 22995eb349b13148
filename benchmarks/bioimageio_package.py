"""A trained checkpoint as a BioImage.IO package: export time and size, bioimageio.core's own
test, and core's blockwise prediction of real images against `unetile predict --model best.pt`.

    .venv/bin/python benchmarks/bioimageio_package.py --model RUN/best.pt --images DIR [--out runs/package]
    .venv/bin/python benchmarks/bioimageio_package.py --model em-membranes --images DIR --sample IMAGE

Prints a table: per weight format, the largest |difference| of the probability over the
images (core with blocks of min + 4 steps, against this tool's tiling, both fp32).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

from unetile.packaging.model_package import PackageInfo, export_package, predict_with_core  # noqa: E402
from unetile.packaging.portable_check import check_without_unetile  # noqa: E402
from unetile.inference.predictor import PredictOptions, Predictor  # noqa: E402
from unetile.io import list_images, read_image  # noqa: E402

WEIGHTS = ("pytorch_state_dict", "torchscript", "onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=3, help="the largest this many images")
    parser.add_argument("--out", default="runs/package")
    parser.add_argument("--sample", type=Path, help="the image the test tensors come from (a shipped model has no run)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    export_package(args.model, out / "model.zip", PackageInfo(authors=("benchmark",), sample=args.sample))
    print(f"export: {time.perf_counter() - t0:.1f} s, {(out / 'model.zip').stat().st_size / 1e6:.1f} MB")
    t0 = time.perf_counter()
    status, checks = check_without_unetile(out / "model.zip")
    formats = sorted(name.split("(")[-1].rstrip(")") for name, (result, *_) in checks.items()
                     if name.startswith("Reproduce test outputs") and result == "passed")
    print(f"bioimageio.core test_model where unetile cannot be imported: {status} in "
          f"{time.perf_counter() - t0:.1f} s (test outputs reproduced: {', '.join(formats)})")
    predictor = Predictor.load(args.model, PredictOptions(precision="fp32"), "cpu")
    images = sorted(list_images(args.images), key=lambda p: -read_image(p)[0].size)[: args.count]
    worst = dict.fromkeys(WEIGHTS, 0.0)
    for path in images:
        image = read_image(path)[0].astype(np.float32)
        expected = predictor.predict(image, ".tif")
        for weights in WEIGHTS:
            got = predict_with_core(out / "model.zip", image, weights, blocksize=4)
            worst[weights] = max(worst[weights], float(np.abs(got - expected).max()))
        print(f"{path.name} {image.shape}: " + ", ".join(f"{w} {worst[w]:.1e}" for w in WEIGHTS), flush=True)
    print("| weights | max abs difference to `unetile predict` |\n|---|---|")
    for weights in WEIGHTS:
        print(f"| {weights} | {worst[weights]:.1e} |")


if __name__ == "__main__":
    main()
