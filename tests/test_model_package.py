"""BioImage.IO model packages: `unetile export --format bioimageio`, validated by bioimageio.core,
predicted through this tool and through bioimageio.core, against the checkpoint."""

import json
import os
import zipfile

import numpy as np
import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # bioimageio.core's per-block bars
core = pytest.importorskip("bioimageio.core")

from unetile import save_model
from unetile.cli import main
from unetile.packaging.model_package import predict_with_core
from unetile.packaging.package_architecture import architecture_kwargs, architecture_source, packaged_net
from unetile.packaging.portable_check import check_without_unetile, run_without_unetile
from unetile.io import read_image, write_image
from unetile.registration import shift_image
from unetile.synthetic import write_dataset
from unetile.training.loop import train

from .conftest import tiny_train_config, tiny_unet

# Larger than one tile of the tiny nets below (76 px) and than core's blocks; multiples of the
# depth-2 nets' pooling grid (4 px): core moves its last blocks to end at the image's edge,
# off that grid unless the sides fit, and there a U-Net's output differs (docs/results.md).
SIDE = (300, 260)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Two tiny trained runs: a valid-padding net and a same-padding one with a label offset."""
    root = tmp_path_factory.mktemp("runs")
    data = write_dataset(root / "data", 4, 96, seed=0)
    runs = {}
    for padding, offset in (("valid", "none"), ("same", "-0.6,-0.15")):
        cfg = tiny_train_config(data, root / padding, padding=padding, label_offset=offset, tile_size=76 if
                                padding == "same" else 92, epochs=2)
        runs[padding] = train(cfg)
    return runs


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_package_validates_and_predicts_as_the_checkpoint(tmp_path, trained_runs, rng, padding):
    run = trained_runs[padding]
    package = tmp_path / "model.zip"
    assert main(["export", "--model", str(run / "best.pt"), "--format", "bioimageio", "--out", str(package),
                 "--author", "A. Tester", "--cite", "Synthetic data|https://example.org/data"]) == 0
    status, checks = check_without_unetile(package)  # bioimageio.core's own check, where unetile is not importable
    assert status == "passed", checks
    assert set(checks) >= {f"Reproduce test outputs from test inputs ({w})"
                           for w in ("onnx", "pytorch_state_dict", "torchscript")}
    with zipfile.ZipFile(package) as archive:  # the test tensors come from the run's first training image
        card = archive.read("README.md").decode()
        assert "cover.png" in archive.namelist() and "data/images/00.png" in card and "## Validation" in card

    image = (rng.random(SIDE) * 200 + 20).astype(np.uint8)
    write_image(tmp_path / "img.tif", image)
    for model, out in ((run / "best.pt", "pt"), (package, "zip")):
        # a field of pure noise: without the noise floor, which the package's scale_range cannot hold (its card says so)
        assert main(["predict", "--model", str(model), "--input", str(tmp_path / "img.tif"), "--out",
                     str(tmp_path / out), "--precision", "fp32", "--tile-size", "76" if padding == "same" else "92",
                     "--format", "tif", "--normalization-noise-floor", "0"]) == 0
    expected = read_image(tmp_path / "pt" / "img.tif")[0, 0]
    assert np.array_equal(read_image(tmp_path / "zip" / "img.tif")[0, 0], expected)  # the same model, the same run
    for weights in ("pytorch_state_dict", "torchscript", "onnx"):
        difference = np.abs(predict_with_core(package, image[None], weights)[0] - expected)
        print(f"{padding} {weights}: max |dprob| {difference.max():.2e}")  # measured: 3e-7 to 5e-7
        assert difference.max() < 1e-5, weights


def test_packaged_net_shifts_and_calibrates_as_predict_does(rng):
    """The shift as a fixed convolution equals SciPy's cubic-spline shift (mirror) to 1e-6."""
    image = rng.normal(size=(1, 120, 100)).astype(np.float32)
    net = tiny_unet(width=4, depth=2, padding="same")
    packaged = packaged_net(net, {"threshold": 0.4, "input_shift": (-0.6, -0.15)})
    with torch.no_grad():
        prob = torch.sigmoid(net(torch.from_numpy(shift_image(image, (-0.6, -0.15)))[None]))[0].numpy()
        got = packaged(torch.from_numpy(image)[None])[0].numpy()
    calibrated = np.where(prob <= 0.4, prob * 0.5 / 0.4, 0.5 + (prob - 0.4) * 0.5 / 0.6)
    assert np.abs(got - calibrated).max() < 1e-6


@pytest.mark.parametrize("padding, metadata", [("same", {"threshold": 0.4, "input_shift": (-0.6, -0.15)}),
                                               ("valid", {"threshold": 0.7})])
def test_the_architecture_file_runs_alone_as_a_plain_file(tmp_path, rng, padding, metadata):
    """Loaded by importlib's basic recipe where unetile and SciPy cannot be imported, the
    package's architecture file computes what `PackagedNet` computes here."""
    net = tiny_unet(width=4, depth=2, padding=padding)
    packaged = packaged_net(net, metadata)
    (tmp_path / "architecture.py").write_text(architecture_source())
    batch = torch.from_numpy(rng.normal(size=(2, 1, 92, 108)).astype(np.float32))
    with torch.no_grad():
        expected = packaged(batch)
    got = run_without_unetile(tmp_path / "architecture.py", architecture_kwargs(net, metadata),
                              packaged.state_dict(), batch)
    assert got.shape == expected.shape == (2, 1, 92, 108)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.fixture
def checkpoint(tmp_path):
    save_model(tiny_unet(width=4, depth=2), tmp_path / "m.pt")
    return tmp_path / "m.pt"


def _not_a_unet(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    return tmp_path / "other.pt"


@pytest.mark.parametrize("case, message", [
    ("no author", "--author is required"),
    ("not a unetile", "other.pt"),
    ("exists", "already exists"),
])
def test_bad_export_is_one_line_nothing_written(tmp_path, checkpoint, capsys, case, message):
    out = tmp_path / "model.zip"
    args = ["export", "--format", "bioimageio", "--out", str(out), "--author", "A"]
    model = _not_a_unet(tmp_path) if case == "not a unetile" else checkpoint
    if case == "no author":
        args = args[:-2]
    if case == "exists":
        out.write_bytes(b"keep me")
    assert main([*args, "--model", str(model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert (out.read_bytes() == b"keep me") if case == "exists" else not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no half-written file


def test_a_package_from_elsewhere_is_one_line(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("rdf.yaml", json.dumps({"type": "model", "format_version": "0.5.4", "config": {}}))
    write_image(tmp_path / "img.png", np.zeros((40, 40), np.uint8))
    assert main(["predict", "--model", str(tmp_path / "other.zip"), "--input", str(tmp_path / "img.png"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.unetile" in err[0] and "bioimageio" in err[0]
    assert not (tmp_path / "o").exists()


class _RunsCodeWhenUnpickled:
    """A pickled object that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_package_whose_weights_hold_objects_is_one_line_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"net.head.weight": torch.zeros(1), "evil": _RunsCodeWhenUnpickled(marker)}, tmp_path / "weights.pt")
    rdf = {"type": "model", "format_version": "0.5.4", "config": {"unetile": {"config": {}, "metadata": {}}},
           "weights": {"pytorch_state_dict": {"source": "weights.pt"}}}
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("rdf.yaml", json.dumps(rdf))
        archive.write(tmp_path / "weights.pt", "weights.pt")
    write_image(tmp_path / "img.png", np.zeros((40, 40), np.uint8))
    assert main(["predict", "--model", str(tmp_path / "evil.zip"), "--input", str(tmp_path / "img.png"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.zip:weights.pt" in err[0] and "refused" in err[0], err
    assert not marker.exists() and not (tmp_path / "o").exists()


def _hand_made_package(tmp_path, key="unetile", config=None, metadata=None, weights=None, rdf_text=None):
    """A package as `load_package` reads it (rdf.yaml + weights.pt) around a tiny net; each
    part may be replaced by a damaged one. Returns (package, the net)."""
    net = tiny_unet(width=4, depth=2)
    torch.save({f"net.{k}": v for k, v in net.state_dict().items()}, tmp_path / "weights.pt")
    record = {"config": net.config.to_dict() if config is None else config,
              "metadata": {"threshold": 0.4} if metadata is None else metadata}
    rdf = json.dumps({"config": {key: record}, "weights": {"pytorch_state_dict": {"source": "weights.pt"}}})
    package = tmp_path / "model.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rdf.yaml", rdf if rdf_text is None else rdf_text)
        archive.writestr("weights.pt", (tmp_path / "weights.pt").read_bytes() if weights is None else weights)
    return package, net


DAMAGE = {  # what is damaged -> (the hand-made package's arguments, what the one line must say)
    "truncated weights": ({"weights": b"PK\x03\x04" + bytes(100)}, "model.zip:weights.pt: not a readable PyTorch file"),
    "bad yaml": ({"rdf_text": "config: [unclosed"}, "model.zip: not a readable BioImage.IO package (ParserError"),
    "config a list": ({"config": [1, 2]}, "without this tool's config.unetile"),
    "metadata a list": ({"metadata": [0.4]}, "its metadata is not a mapping"),
    "threshold a word": ({"metadata": {"threshold": "high"}}, "its threshold 'high' is not a number"),
    "percentiles a word": ({"metadata": {"normalization": "x"}}, "its normalization 'x' is not"),
    "config that does not fit": ({"config": {"width": 8, "depth": 2}}, "weights do not fit its config"),
}


@pytest.mark.parametrize("damage", [*DAMAGE, "not a zip"])
def test_a_damaged_package_is_one_line_naming_the_damage(tmp_path, capsys, damage):
    if damage == "not a zip":
        package, message = tmp_path / "model.zip", "model.zip: not a readable BioImage.IO package (BadZipFile"
        package.write_bytes(b"PK\x03\x04 but not really")
    else:
        package, _ = _hand_made_package(tmp_path, **DAMAGE[damage][0])
        message = DAMAGE[damage][1]
    write_image(tmp_path / "img.png", np.zeros((40, 40), np.uint8))
    assert main(["predict", "--model", str(package), "--input", str(tmp_path / "img.png"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_package_written_before_the_rename_predicts_as_its_net(tmp_path, rng):
    """Packages from before the rename keep this tool's record under config.unet."""
    image = (rng.random((64, 64)) * 200).astype(np.uint8)
    write_image(tmp_path / "img.tif", image)
    outputs = []
    for key in ("unet", "unetile"):
        folder = tmp_path / key
        folder.mkdir()
        package, net = _hand_made_package(folder, key=key)
        save_model(net, folder / "m.pt", threshold=0.4)
        for model in (package, folder / "m.pt"):
            assert main(["predict", "--model", str(model), "--input", str(tmp_path / "img.tif"), "--out",
                         str(folder / model.suffix[1:]), "--format", "tif", "--precision", "fp32"]) == 0
            outputs.append(read_image(folder / model.suffix[1:] / "img.tif")[0, 0])
    assert all(np.array_equal(out, outputs[0]) for out in outputs[1:]) and outputs[0].std() > 0


def test_a_flows_net_packaged_gives_its_cell_probability_and_flows(tmp_path, rng):
    """The package's own file (no unetile) computes a flows net's maps as `predict_tiled` does:
    the cell probability and unit-scale flows (`output_maps`), not a softmax."""
    from unetile import UNet, UNetConfig, init_he
    from unetile.nn.model import output_maps

    torch.manual_seed(0)
    net = init_he(UNet(config=UNetConfig(width=4, depth=2, padding="same", out_channels=3, flows=True))).eval()
    packaged = packaged_net(net, {"cell_target": "flows"})
    (tmp_path / "architecture.py").write_text(architecture_source())
    batch = torch.from_numpy(rng.normal(size=(1, 1, 92, 108)).astype(np.float32))
    with torch.no_grad():
        expected = output_maps(net(batch), flows=True)
    got = run_without_unetile(tmp_path / "architecture.py", architecture_kwargs(net, {"cell_target": "flows"}),
                              packaged.state_dict(), batch)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got[:, 1:].sum(1), torch.ones(1))  # not class probabilities


def test_a_flows_models_card_says_its_cells_follow_the_flows():
    from unetile.packaging.model_card import _cells_line

    assert "flows to their sinks" in _cells_line({"cell_target": "flows"}) and "watershed" not in \
        _cells_line({"cell_target": "flows"})
    assert "seeded watershed" in _cells_line({"cell_target": "foreground"})
