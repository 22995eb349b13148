"""Export parity (ONNX, TorchScript), ONNX prediction through the tiling, the benchmark table."""

import json

import numpy as np
import pytest
import torch

from unetile import predict_tiled, save_model
from unetile.cli import main
from unetile.inference.benchmark import format_table, reference_predict, run_benchmark
from unetile.packaging.export import OnnxModel, export_model
from unetile.io import read_image, write_image

from .conftest import tiny_unet

onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.pt"
    save_model(tiny_unet(width=4, depth=3, seed=2), path, threshold=0.5)
    return path


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("torchscript", "m.ts")])
def test_export_parity(tmp_path, model_path, fmt, name):
    diff = export_model(model_path, tmp_path / name, fmt)
    assert diff <= 1e-4


def test_onnx_model_predicts_like_pytorch_with_the_same_tiling(tmp_path, model_path, rng):
    export_model(model_path, tmp_path / "m.onnx")
    onnx = OnnxModel(tmp_path / "m.onnx")
    torch_model = tiny_unet(width=4, depth=3, seed=2)
    image = rng.random((130, 70)).astype(np.float32)
    a = predict_tiled(onnx, image, tile_size=124)
    b = predict_tiled(torch_model, image, tile_size=124)
    assert a.shape == (1, 130, 70) and np.abs(a - b).max() <= 1e-4
    write_image(tmp_path / "x.png", (image * 255).astype(np.uint8))
    assert main(["predict", "--model", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "o"), "--format", "tif"]) == 0
    assert read_image(tmp_path / "o" / "x.tif").shape == (1, 1, 130, 70)


def test_fast_paths_stay_within_the_stated_bound(rng):
    """bf16 + channels_last against fp32: < 0.1% of pixels change class."""
    model = tiny_unet(width=8)
    image = rng.random((300, 260)).astype(np.float32)
    exact = predict_tiled(model, image)
    fast = predict_tiled(model, image, precision="bf16", channels_last=True, batch_size=3)
    assert fast.shape == exact.shape
    assert ((fast > 0.5) != (exact > 0.5)).mean() < 1e-3
    assert np.abs(fast - exact).max() < 0.1


def test_reference_loop_matches_the_tiled_prediction(rng):
    """Within one 388-px output tile the seed-style loop computes exactly what we do."""
    model = tiny_unet(width=8)
    image = rng.random((200, 300)).astype(np.float32)
    ref = reference_predict(model, image, tile=model.valid_input_size(572))
    assert ref.shape == (1, 200, 300)
    assert np.abs(ref - predict_tiled(model, image, tile_size=572)).max() < 1e-5


def test_benchmark_rows_and_json(tmp_path, rng):
    images = {"96x96": [rng.random((96, 96), dtype=np.float32)]}
    result = run_benchmark(width=4, json_path=tmp_path / "b.json", precision="fp32", workloads=images,
                           methods=("reference", "predict_tiled", "predict_tiled+compile", "onnxruntime", "limit"),
                           device="cpu")
    saved = json.loads((tmp_path / "b.json").read_text())
    # On a CPU the compiled row (a CUDA graphs trial) is left out; no row has GPU memory.
    assert [r["method"] for r in saved["rows"]] == ["reference", "predict_tiled", "onnxruntime", "limit"]
    assert saved["machine"]["device"] == "cpu" and all(r["peak_gpu_mb"] is None for r in saved["rows"])
    for r in saved["rows"]:
        assert r["seconds"] > 0 and r["mpix_per_s"] > 0 and r["workload"] == "96x96"
    # predict_tiled runs the BatchNorm-folded copy: the same function to fp32 rounding.
    assert saved["rows"][1]["max_abs_diff"] <= 1e-4 and saved["rows"][2]["max_abs_diff"] <= 1e-4
    assert "vs ref" in format_table(result)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_benchmark_on_cuda_without_cuda_is_one_line(capsys):
    assert main(["benchmark", "--device", "cuda", "--quick"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
