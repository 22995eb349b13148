"""`unetile predict` end to end: names, shapes, stacks, thresholds, and one-line errors."""

import numpy as np
import pytest

from unetile import save_model
from unetile.cli import main
from unetile.inference.predictor import calibrate
from unetile.io import read_image, write_image

from .conftest import tiny_unet


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.pt"
    save_model(tiny_unet(width=4, depth=3), path, threshold=0.5)
    return path


def test_folder_in_folder_out_with_same_names(tmp_path, model_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", (rng.random((37, 53)) * 255).astype(np.uint8))
    write_image(src / "b.tif", (rng.random((20, 9)) * 60000).astype(np.uint16))
    assert main(["predict", "--model", str(model_path), "--input", str(src), "--out", str(tmp_path / "out")]) == 0
    a, b = read_image(tmp_path / "out" / "a.png"), read_image(tmp_path / "out" / "b.tif")
    assert a.shape == (1, 1, 37, 53) and a.dtype == np.uint8
    assert b.shape == (1, 1, 20, 9) and b.dtype == np.float32 and 0 <= b.min() and b.max() <= 1


def test_stack_in_stack_out_and_threshold(tmp_path, model_path, rng):
    stack = (rng.random((3, 40, 30)) * 255).astype(np.uint8)
    write_image(tmp_path / "vol.tif", stack, axes="QYX")
    args = ["predict", "--model", str(model_path), "--input", str(tmp_path / "vol.tif"), "--out", str(tmp_path / "o")]
    assert main(args + ["--threshold", "0.5"]) == 0
    out = read_image(tmp_path / "o" / "vol.tif")
    assert out.shape == (3, 1, 40, 30) and set(np.unique(out)) <= {0, 255}


def test_large_odd_image_keeps_its_size(tmp_path, model_path, rng):
    write_image(tmp_path / "big.png", (rng.random((3000, 2000)) * 255).astype(np.uint8))
    out = tmp_path / "o"
    assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "big.png"), "--out", str(out), "--batch-size", "8"]) == 0
    assert read_image(out / "big.png").shape == (1, 1, 3000, 2000)


def test_isbi_test_slices(tmp_path, model_path, isbi):
    out = tmp_path / "o"
    assert main(["predict", "--model", str(model_path), "--input", str(isbi / "test" / "images"), "--out", str(out)]) == 0
    written = sorted(out.iterdir())
    assert len(written) == 30 and all(read_image(p).shape == (1, 1, 512, 512) for p in written)


def _bad_cases(tmp_path, model_path, rng):
    good = tmp_path / "good.png"
    write_image(good, (rng.random((30, 30)) * 255).astype(np.uint8))
    rgb = tmp_path / "rgb.png"
    write_image(rgb, (rng.random((3, 30, 30)) * 255).astype(np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    not_ckpt = tmp_path / "not.pt"
    not_ckpt.write_text("hello")
    m = str(model_path)
    return {
        "missing input": (["--model", m, "--input", str(tmp_path / "nope.png")], "no such file"),
        "unreadable image": (["--model", m, "--input", str(broken)], "cannot read"),
        "wrong channels": (["--model", m, "--input", str(rgb)], "3 channel"),
        "not a checkpoint": (["--model", str(not_ckpt), "--input", str(good)], "not a checkpoint"),
        "tile too small": (["--model", m, "--input", str(good), "--tile-size", "20"], "tile size"),
        "cuda absent": (["--model", m, "--input", str(good), "--device", "cuda"], "CUDA"),
        "compile on cpu": (["--model", m, "--input", str(good), "--device", "cpu", "--compile"], "--compile needs"),
    }


@pytest.mark.parametrize("case", ["missing input", "unreadable image", "wrong channels", "not a checkpoint",
                                  "tile too small", "cuda absent", "compile on cpu"])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, model_path, rng, capsys, case):
    import torch

    if case == "cuda absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, message = _bad_cases(tmp_path, model_path, rng)[case]
    out = tmp_path / "out"
    assert main(["predict", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_existing_output_needs_overwrite(tmp_path, model_path, rng):
    write_image(tmp_path / "x.png", (rng.random((30, 30)) * 255).astype(np.uint8))
    out = tmp_path / "o"
    out.mkdir()
    write_image(out / "x.png", np.full((2, 2), 9, np.uint8))
    args = ["predict", "--model", str(model_path), "--input", str(tmp_path / "x.png"), "--out", str(out)]
    assert main(args) == 2
    assert read_image(out / "x.png").shape == (1, 1, 2, 2)  # untouched
    assert main(args + ["--overwrite"]) == 0
    assert read_image(out / "x.png").shape == (1, 1, 30, 30)


def test_calibration_moves_the_threshold_to_one_half():
    p = np.array([0.0, 0.1, 0.2, 0.6, 1.0], np.float32)
    c = calibrate(p, 0.2)
    assert np.allclose(c, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert np.all(np.diff(c) > 0)


def test_instances_are_label_images(tmp_path, model_path, rng):
    write_image(tmp_path / "x.png", (rng.random((50, 40)) * 255).astype(np.uint8))
    for method in ("watershed", "components"):
        out = tmp_path / method
        assert main(["predict", "--model", str(model_path), "--input", str(tmp_path / "x.png"), "--out", str(out),
                     "--instances", method]) == 0
        labels = read_image(out / "x.tif")
        assert labels.shape == (1, 1, 50, 40) and labels.dtype in (np.uint16, np.uint32)
        assert labels.max() >= 1


def test_tta_averages_over_the_flips_the_model_was_trained_with(tmp_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.tif", rng.random((40, 48)).astype(np.float32))
    outputs = {}
    for flips, tta in (("none", False), ("none", True), ("horizontal", True), (None, True)):
        path = tmp_path / f"{flips}.pt"
        save_model(tiny_unet(width=4, depth=3), path, **({"flips": flips} if flips else {}))
        out = tmp_path / f"out-{flips}-{tta}"
        assert main(["predict", "--model", str(path), "--input", str(src), "--out", str(out), "--precision", "fp32"]
                    + (["--tta"] if tta else [])) == 0
        outputs[flips, tta] = read_image(out / "a.tif")
    assert np.array_equal(outputs["none", True], outputs["none", False])  # nothing to average over
    assert np.abs(outputs["horizontal", True] - outputs["none", False]).max() > 1e-3
    # a model saved without the setting (before it existed) averages over all 8
    assert np.abs(outputs[None, True] - outputs["horizontal", True]).max() > 1e-3
