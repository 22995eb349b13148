"""Bad input: one line naming the file and the problem, exit code 2, nothing written.

One row per case; each row builds its inputs in a fresh folder, runs the command line and
checks the message, the exit code, and that no output appeared and no input changed.
"""

import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch

from unetile import UserInputError, save_model
from unetile.cli import main
from unetile.io import read_image, write_image
from unetile.synthetic import write_dataset

from .conftest import tiny_unet


def _png_declaring(path, width, height):
    """A tiny PNG whose header declares width x height (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _setup(tmp_path, case):
    """Build the inputs for ``case``; return (argv without --out, expected message, out folder)."""
    rng = np.random.default_rng(0)
    model = tmp_path / "model.pt"
    save_model(tiny_unet(width=4, depth=2), model)
    good = tmp_path / "good.png"
    write_image(good, (rng.random((30, 30)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    predict = ["predict", "--model", str(model), "--out", str(out), "--input"]
    if case == "missing path":
        return predict + [str(tmp_path / "nope")], "no such file", out
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return predict + [str(tmp_path / "empty")], "holds no image files", out
    if case == "non-image file":
        (tmp_path / "notes.txt").write_text("hello")
        return predict + [str(tmp_path / "notes.txt")], "not an image file", out
    if case == "truncated PNG":
        data = good.read_bytes()
        (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
        return predict + [str(tmp_path / "cut.png")], "cannot read", out
    if case == "truncated TIFF":
        write_image(tmp_path / "cut.tif", rng.random((4, 64, 64)).astype(np.float32), axes="QYX")
        data = (tmp_path / "cut.tif").read_bytes()
        (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
        return predict + [str(tmp_path / "cut.tif")], "cut.tif", out
    if case == "RGB where grey is expected":
        write_image(tmp_path / "rgb.png", (rng.random((3, 30, 30)) * 255).astype(np.uint8))
        return predict + [str(tmp_path / "rgb.png")], "--channels convert", out
    if case == "NaN in a float TIFF":
        a = rng.random((20, 20)).astype(np.float32)
        a[3, 4] = np.nan
        tifffile.imwrite(tmp_path / "nan.tif", a)
        return predict + [str(tmp_path / "nan.tif")], "NaN", out
    if case == "decompression bomb":
        _png_declaring(tmp_path / "bomb.png", 100_000, 100_000)
        return predict + [str(tmp_path / "bomb.png")], "--max-pixels", out
    if case == "checkpoint of another architecture":
        payload = torch.load(model, weights_only=True)
        payload["config"]["depth"] = 3
        torch.save(payload, tmp_path / "other.pt")
        return ["predict", "--model", str(tmp_path / "other.pt"), "--out", str(out), "--input", str(good)], \
            "does not match its architecture", out
    if case == "corrupt checkpoint":
        data = model.read_bytes()
        (tmp_path / "corrupt.pt").write_bytes(data[:100] + b"\x00" * 500 + data[600:])
        return ["predict", "--model", str(tmp_path / "corrupt.pt"), "--out", str(out), "--input", str(good)], \
            "corrupt.pt", out
    if case == "tile smaller than the receptive border":
        return predict + [str(good), "--tile-size", "8"], "tile size", out
    if case == "output inside the input folder":
        (tmp_path / "imgs").mkdir()
        write_image(tmp_path / "imgs" / "a.png", np.zeros((9, 9), np.uint8))
        out = tmp_path / "imgs" / "pred"
        return ["predict", "--model", str(model), "--out", str(out), "--input", str(tmp_path / "imgs")], \
            "inside the input folder", out
    if case == "unwritable output folder":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "pred"
        return ["predict", "--model", str(model), "--out", str(out), "--input", str(good)], "cannot create", out
    if case == "CUDA where none exists":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        return predict + [str(good), "--device", "cuda"], "CUDA is not available", out
    data = write_dataset(tmp_path / "data", 3, 40)
    train = ["train", "--data", str(data), "--out", str(out), "--width", "4", "--depth", "2", "--workers", "0"]
    if case == "image and label of different size":
        write_image(data / "labels" / "01.png", np.zeros((12, 12), np.uint8))
        return train, "differs from the image", out
    if case == "labels with unexpected values":
        return train + ["--classes", "3"], f"{data / 'labels' / '00.png'}: label value 255 but --classes 3", out
    if case == "instance ids with --classes 2":
        write_image(data / "labels" / "01.png", np.arange(1600, dtype=np.uint8).reshape(40, 40) % 5)
        return train + ["--classes", "2"], f"{data / 'labels' / '01.png'}: 5 label values for --classes 2", out
    if case == "image without a label":
        (data / "labels" / "02.png").unlink()
        return train, "no label for image", out
    if case == "out-of-range training options":
        return train + ["--ema", "1.5"], "--ema must be in [0, 1)", out
    if case == "non-positive elastic sigma":
        return train + ["--elastic-sigma", "0"], "--elastic-sigma must be > 0", out
    if case == "non-positive weight-map sigma":
        return train + ["--sigma", "0"], "the weight map needs --w0 >= 0 (or auto) and --sigma > 0", out
    if case == "zoom below 1":
        return train + ["--zoom", "0.5"], "--zoom must be >= 1 (1: off), got 0.5", out
    if case == "zoom on device tiles":
        return train + ["--zoom", "2", "--tiles-on", "device"], "--tiles-on device cannot zoom tiles", out
    if case == "label offset beyond two pixels":
        return train + ["--label-offset", "3,0"], "--label-offset 3,0: each shift must be within", out
    raise AssertionError(case)


CASES = [
    "missing path", "empty folder", "non-image file", "truncated PNG", "truncated TIFF", "RGB where grey is expected",
    "NaN in a float TIFF", "decompression bomb", "checkpoint of another architecture", "corrupt checkpoint",
    "tile smaller than the receptive border", "output inside the input folder", "unwritable output folder",
    "CUDA where none exists", "image and label of different size", "labels with unexpected values",
    "instance ids with --classes 2",
    "image without a label", "out-of-range training options", "non-positive elastic sigma",
    "non-positive weight-map sigma", "label offset beyond two pixels", "zoom below 1", "zoom on device tiles",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(tmp_path, capsys, case):
    argv, message, out = _setup(tmp_path, case)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed


def test_debug_shows_the_traceback(tmp_path):
    argv, _, _ = _setup(tmp_path, "missing path")
    with pytest.raises(UserInputError):
        main(["--debug", *argv])


def test_max_pixels_can_be_raised(tmp_path):
    argv, _, out = _setup(tmp_path, "missing path")
    argv[-1] = str(tmp_path / "good.png")
    assert main(["--max-pixels", "100", *argv]) == 2
    assert main(["--max-pixels", "10000", *argv]) == 0 and (out / "good.png").exists()


@pytest.mark.parametrize(
    "name, array",
    [
        ("u16.tif", (np.random.default_rng(0).random((20, 30)) * 60000).astype(np.uint16)),
        ("f32.tif", np.random.default_rng(1).normal(100, 20, (20, 30)).astype(np.float32)),
        ("one.png", np.full((1, 1), 9, np.uint8)),
        ("row.png", np.arange(17, dtype=np.uint8)[None]),
    ],
)
def test_odd_but_valid_images_are_accepted(tmp_path, name, array):
    model = tmp_path / "m.pt"
    save_model(tiny_unet(width=4, depth=2), model)
    write_image(tmp_path / name, array)
    assert main(["predict", "--model", str(model), "--input", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 0
    out = next((tmp_path / "o").iterdir())
    assert read_image(out).shape[-2:] == array.shape


def test_rgb_is_accepted_with_channels_convert(tmp_path):
    model = tmp_path / "m.pt"
    save_model(tiny_unet(width=4, depth=2), model)
    write_image(tmp_path / "rgb.png", np.full((3, 20, 20), 100, np.uint8))
    args = ["predict", "--model", str(model), "--input", str(tmp_path / "rgb.png"), "--out", str(tmp_path / "o")]
    assert main(args + ["--channels", "convert"]) == 0
    assert read_image(tmp_path / "o" / "rgb.png").shape == (1, 1, 20, 20)
