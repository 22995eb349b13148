"""`unetile export --format bioimageio`: a BioImage.IO model package (spec 0.5) that deepImageJ
(Fiji), ilastik, QuPath, napari and bioimageio.core run without this tool; and reading such a
package back (`load_package`) so that `unetile predict --model model.zip` runs it exactly as the
checkpoint it came from.

What the package holds (built with bioimageio.spec's own classes, written by its
`save_bioimageio_package`, which fills in every checksum):

* the input: (batch, channel, y, x) of any size min + k * step (for a valid-padding net the
  sizes 16k + 188 at depth 4, plus the shift's margin), preprocessed by the spec's
  ``scale_range`` with the checkpoint's percentiles per image and channel; a 3D net's
  (batch, channel, z, y, x), each axis with its own min and step (the axis' grid), its own
  halo, and the checkpoint's voxel size (in nanometres) as the axes' scale;
* the output: the calibrated probability, as `unetile predict` writes it (packaged_net.py puts
  the labels' sub-pixel shift, the sigmoid/softmax and the calibration in the network), the
  size of the input, with a ``halo`` that a consumer overlaps its tiles by and crops;
* weights as TorchScript and ONNX (self-contained), and a ``pytorch_state_dict`` whose
  architecture is a source file inside the package (package_architecture.py: the network
  and its pre/post-processing in one module that needs only torch), so every weight format
  runs where this tool is not installed;
* test tensors from a real image (``--sample``, or the run's first training image; a volume
  for a 3D net), a cover (of a volume: its middle z plane)
  (image | probability | overlay), a model card, citations, licence, authors, tags; and in
  ``config.unetile`` the checkpoint's config and metadata, which `load_package` reads
  (``config.unet`` in packages written before the rename).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch

from ..errors import UserInputError, reading
from ..io import match_channels, read_image
from ..nn.checkpoint import check_record, load_model, rebuild, safe_torch_load
from ..nn.model import UNet
from ..zoo import resolve_model
from .export import save_onnx, save_torchscript
from .model_card import cover_image, model_card, training_record
from .package_architecture import FILE_NAME, architecture_kwargs, architecture_source, packaged_net
from .packaged_net import PackagedNet

RONNEBERGER = ("Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image "
               "Segmentation. MICCAI 2015, LNCS 9351, 234-241.", "10.1007/978-3-319-24574-4_28")
_EPS = 1e-6  # bioimageio.core's scale_range: (x - low) / (high - low + eps)
CONFIG_KEYS = ("unetile", "unet")  # rdf.yaml's config key for this tool; "unet" before the rename


@dataclass(frozen=True)
class PackageInfo:
    """What a package says about itself beyond the checkpoint (the `unetile export` flags)."""

    authors: tuple[str, ...]
    license: str = "CC-BY-4.0"
    cite: tuple[str, ...] = ()  # "TEXT|DOI" or "TEXT|https://..." (the training data's, e.g.)
    name: str | None = None
    description: str | None = None
    sample: Path | None = None  # the image the test tensors and the cover are cut from


def export_package(model_path: str | Path, out: str | Path, info: PackageInfo) -> float:
    """Write the package ``out`` (a .zip); returns the largest difference between the
    TorchScript / ONNX weights and PyTorch on the test input."""
    model_path, out = resolve_model(model_path), Path(out)  # a shipped name: its folder holds no run record
    _check_request(out, info)
    model, metadata = load_model(model_path)
    packaged = packaged_net(model, metadata)
    record = training_record(model_path)
    sample_path, image = _sample_image(info.sample, record, model.config)
    test_input = _test_crop(image, packaged)
    test_output = _packaged_output(packaged, test_input, metadata)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "test_input.npy", test_input[None])
        np.save(work / "test_output.npy", test_output)
        tifffile.imwrite(work / "sample_input.tif", test_input, photometric="minisblack")  # for previews
        tifffile.imwrite(work / "sample_output.tif", test_output[0], photometric="minisblack")
        _cover(image, test_input, test_output[0], packaged, metadata, work / "cover.png")
        (work / "README.md").write_text(model_card(model_path, model, metadata, record, info, sample_path))
        difference = _write_weights(packaged, test_input, work)
        (work / FILE_NAME).write_text(architecture_source())
        descr = _describe(packaged, architecture_kwargs(model, metadata), metadata, info, work, model_path)
        _save(descr, out)
    return difference


def _packaged_output(packaged: PackagedNet, image: np.ndarray, metadata: dict) -> np.ndarray:
    """(C, H, W) or (C, Z, Y, X) raw -> the package's (1, C_out, ...) output on it."""
    with torch.no_grad():
        return packaged(torch.from_numpy(scale_range(image, metadata)[None])).numpy()


def _cover(image: np.ndarray, test_input: np.ndarray, test_output: np.ndarray, packaged: PackagedNet,
           metadata: dict, path: Path) -> None:
    """The cover: the test tensors (C, H, W), or for a volume the middle z plane of a crop up
    to 256 px wide and as thin as allowed (a volume's test crop is too small in-plane to show)."""
    if image.ndim == 3:
        cover_image(test_input, test_output, path)
        return
    plane_input = _test_crop(image, packaged, caps=(1, 256, 256))
    plane_output = _packaged_output(packaged, plane_input, metadata)[0]
    middle = plane_input.shape[1] // 2
    cover_image(plane_input[:, middle], plane_output[:, middle], path)


def scale_range(image: np.ndarray, metadata: dict) -> np.ndarray:
    """(C, H, W) or (C, Z, Y, X) -> float32, as the package's preprocessing computes it
    (bioimageio.core: linear percentiles per channel over the spatial axes, then
    (x - low) / (high - low + 1e-6))."""
    norm = metadata.get("normalization", {"low": 1.0, "high": 99.0})
    spatial = tuple(range(1, image.ndim))
    low, high = np.percentile(image, [norm["low"], norm["high"]], axis=spatial, keepdims=True)
    return ((image - low) / (high - low + _EPS)).astype(np.float32)


def _input_text(spatial_dims: int) -> str:
    """The input tensor's description: what is scaled, and the floor `scale_range` leaves out."""
    text = ("the raw image; each channel scaled by its own percentiles" if spatial_dims == 2
            else "the raw volume; each channel scaled by its own percentiles over the whole volume")
    return text + " (unetile predict floors it: see card)"


def _check_request(out: Path, info: PackageInfo) -> None:
    if not info.authors or not all(a.strip() for a in info.authors):
        raise UserInputError("--author is required for a BioImage.IO package (give each author's name; repeat it)")
    if out.suffix.lower() != ".zip":
        raise UserInputError(f"{out}: a BioImage.IO package is a .zip file; name it e.g. model.zip")
    if out.exists():
        raise UserInputError(f"{out}: already exists; choose another --out (an export never replaces a file)")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UserInputError(f"{out.parent}: not a writable folder")
    for entry in info.cite:
        if "|" not in entry:
            raise UserInputError(f"--cite {entry!r}: give 'TEXT|DOI' or 'TEXT|URL'")


def _sample_image(sample: Path | None, record: dict, config) -> tuple[Path | None, np.ndarray]:
    """(path, (C, H, W)) of the image the test tensors come from: ``sample``, else the run's
    first training image, else (no such file here) a fixed random image; for a 3D net
    (``config.spatial_dims``), a volume (C, Z, Y, X) (a TIFF stack's pages are z)."""
    channels, volume = config.in_channels, config.spatial_dims == 3
    path = sample or _first_training_image(record)
    if path is None:
        rng = np.random.default_rng(0)
        return None, rng.gamma(2.0, 50.0, size=(channels, *((64, 128, 128) if volume else (512, 512)))).astype(
            np.float32)
    pages = read_image(path)  # (N, C, H, W): a stack's pages are z
    pages = match_channels(pages if volume else pages[:1], channels, path, convert=False).astype(np.float32)
    if not volume:
        return path, pages[0]
    if pages.shape[0] < 2:
        raise UserInputError(f"{path}: a 3D model's sample must be a volume, and this image has one plane; "
                             "give a TIFF stack (its pages are z) with --sample")
    return path, np.ascontiguousarray(np.moveaxis(pages, 0, 1))


def _first_training_image(record: dict) -> Path | None:
    train = record.get("train", {})
    folder = Path(train["data"]) / "images" if train.get("data") else None
    names = record.get("train_images") or []
    if folder is None or not folder.is_dir() or not names:
        return None
    return next((p for p in sorted(folder.iterdir()) if p.stem == names[0]), None)


def _test_crop(image: np.ndarray, packaged: PackagedNet, caps: tuple[int, ...] | None = None) -> np.ndarray:
    """The centre of ``image`` at the largest allowed size up to ``caps`` (the largest side per
    spatial axis; default 512 px and a square, or 48 voxels per axis for a volume: test tensors
    of a few hundred kB), mirrored up to the smallest allowed size where the image is smaller."""
    axes = range(-(image.ndim - 1), 0)
    if caps is None:
        caps = (min(*image.shape[1:], 512),) * 2 if image.ndim == 3 else (48,) * 3
    caps = [min(n, cap) for n, cap in zip(image.shape[1:], caps)]
    sides = []
    for axis, fits in zip(axes, caps):
        low, step = input_size_rule(packaged, axis)
        sides.append(low if fits < low else low + (fits - low) // step * step)
    if any(n < side for n, side in zip(image.shape[1:], sides)):
        image = np.pad(image, [(0, 0)] + [(max(0, side - n) // 2 + 1,) * 2 for n, side in zip(image.shape[1:], sides)],
                       mode="reflect")
    corner = [(n - side) // 2 for n, side in zip(image.shape[1:], sides)]
    return np.ascontiguousarray(image[(slice(None), *(slice(c, c + side) for c, side in zip(corner, sides)))])


def input_size_rule(packaged: PackagedNet, axis: int = -1) -> tuple[int, int]:
    """(min, step) of the input sizes the package takes along ``axis`` (-1 x, -2 y, -3 z):
    each leaves output beyond the halo."""
    net, halo = packaged.net, packaged.axis_halo(axis)
    step = net.grid(axis)
    taps = 2 * (halo - net.axis_halo(axis)) if packaged.valid else 0
    wanted = 2 * halo + step
    return net.valid_input_size(max(wanted - taps, step), "up", axis) + taps, step


def _write_weights(packaged: PackagedNet, test_input: np.ndarray, work: Path) -> float:
    torch.save(packaged.state_dict(), work / "weights.pt")
    example = torch.from_numpy(scale_range(test_input, {})[None])
    save_torchscript(packaged, example, work / "weights_torchscript.pt", {})
    save_onnx(packaged, example, work / "weights.onnx", {})
    import onnxruntime

    with torch.no_grad():
        reference = packaged(example).numpy()
        scripted = torch.jit.load(str(work / "weights_torchscript.pt"))(example).numpy()
    session = onnxruntime.InferenceSession(str(work / "weights.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"image": example.numpy()})[0]
    return float(max(np.abs(scripted - reference).max(), np.abs(onnx - reference).max()))


def _describe(packaged: PackagedNet, kwargs: dict, metadata: dict, info: PackageInfo, work: Path,
              model_path: Path):
    """The spec 0.5 `ModelDescr` of the package in ``work``; ``kwargs``: `PackagedNet`'s."""
    from bioimageio.spec.model import v0_5 as spec

    config = packaged.net.config
    norm = metadata.get("normalization", {"low": 1.0, "high": 99.0})
    image = spec.TensorId("image")
    spatial, input_axes, output_axes = _space_axes(packaged, metadata, image)
    inputs = [spec.InputTensorDescr(
        id=image, description=_input_text(config.spatial_dims),
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(f"channel{i}")
                                                                for i in range(config.in_channels)]), *input_axes],
        test_tensor=spec.FileDescr(source=work / "test_input.npy"),
        sample_tensor=spec.FileDescr(source=work / "sample_input.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        pad=spec.ReflectPadding(mode="reflect"),  # mode given, or the writer drops it (spec 0.5.12)
        preprocessing=[spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
            axes=spatial, min_percentile=float(norm["low"]), max_percentile=float(norm["high"]), eps=_EPS))])]
    names, description = _output_channels(config)
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId("probability"), description=description,
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in names]), *output_axes],
        test_tensor=spec.FileDescr(source=work / "test_output.npy"),
        sample_tensor=spec.FileDescr(source=work / "sample_output.tif"),
        # a flows net's flows are vectors of about unit length, not probabilities
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(None, None) if config.flows else (0.0, 1.0)))]
    return spec.ModelDescr(
        name=info.name or f"U-Net {model_path.parent.name or model_path.stem}"[:128],
        description=info.description or "A U-Net (Ronneberger et al. 2015) trained with the unetile tool.",
        authors=[spec.Author(name=a) for a in info.authors],
        cite=_citations(info.cite), license=spec.LicenseId(info.license),
        documentation=spec.FileDescr(source=work / "README.md"), covers=[spec.FileDescr(source=work / "cover.png")],
        tags=["unet", "segmentation", f"{config.spatial_dims}d", "pytorch", "microscopy"],
        inputs=inputs, outputs=outputs, weights=_weights(kwargs, work),
        config={CONFIG_KEYS[0]: {"config": config.to_dict(), "metadata": metadata}})


def _output_channels(config) -> tuple[list[str], str]:
    """(the output's channel names, its description) for a net's `UNetConfig`."""
    if config.flows:
        return ["cell", "flow_y", "flow_x"], ("the cell probability, then Cellpose-style flows (y, x): unit vectors "
                                              "towards each cell's centre; `unetile predict --instances` follows them "
                                              "to cut cells")
    if config.out_channels == 1:
        return ["foreground"], "calibrated probability: foreground where > 0.5"
    return [f"class{i}" for i in range(config.out_channels)], "class probabilities (softmax)"


def _space_axes(packaged: PackagedNet, metadata: dict, image) -> tuple[tuple, list, list]:
    """(the spatial axis ids, the input's spatial axes, the output's) of the package: (y, x),
    or (z, y, x) for a 3D net; each axis with its own size rule and halo, and for a volume
    the checkpoint's ``voxel_size`` (um) as its scale (in nm, `_nanometers`)."""
    from bioimageio.spec.model import v0_5 as spec

    dims = packaged.net.config.spatial_dims
    ids = tuple(spec.AxisId(a) for a in ("z", "y", "x")[3 - dims:])
    voxel = metadata.get("voxel_size") if dims == 3 else None
    physical = [{"scale": _nanometers(v), "unit": "nanometer"} for v in voxel] if voxel else [{}] * dims
    inputs, outputs = [], []
    for axis, a, extent in zip(range(-dims, 0), ids, physical):
        low, step = input_size_rule(packaged, axis)
        inputs.append(spec.SpaceInputAxis(id=a, size=spec.ParameterizedSize(min=low, step=step), **extent))
        size, halo = spec.SizeReference(tensor_id=image, axis_id=a), packaged.axis_halo(axis)
        outputs.append(spec.SpaceOutputAxisWithHalo(id=a, halo=halo, size=size, **extent) if halo  # the spec: >= 1
                       else spec.SpaceOutputAxis(id=a, size=size, **extent))
    return ids, inputs, outputs


def _nanometers(micrometres: float) -> float:
    """A voxel size as an axis' scale: in nm, rounded to 1/64 nm. The spec sizes an output axis
    as ``size * scale / scale`` in floating point, exact only where ``size * scale`` is (a
    scale of few significant bits: 200 nm, 162.5 nm); 0.2 um gives 47.99.. or 48.00..1 for
    some sizes, which the spec's validation refuses and core's floor makes one px short."""
    return max(round(float(micrometres) * 1000 * 64), 1) / 64


def _weights(kwargs: dict, work: Path):
    from bioimageio.spec.model import v0_5 as spec

    version = spec.Version(torch.__version__.split("+")[0])
    architecture = spec.ArchitectureFromFileDescr(  # the writer fills in its sha256
        source=work / FILE_NAME, callable=spec.Identifier("PackagedNet"), kwargs=kwargs)
    return spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(source=work / "weights.pt", architecture=architecture,
                                                             pytorch_version=version),
        torchscript=spec.TorchscriptWeightsDescr(source=work / "weights_torchscript.pt", pytorch_version=version,
                                                 parent="pytorch_state_dict"),
        onnx=spec.OnnxWeightsDescr(source=work / "weights.onnx", opset_version=17, parent="pytorch_state_dict"))


def _citations(extra: tuple[str, ...]) -> list:
    from bioimageio.spec.model import v0_5 as spec

    entries = [spec.CiteEntry(text=RONNEBERGER[0], doi=spec.Doi(RONNEBERGER[1]))]
    for entry in extra:
        text, where = (s.strip() for s in entry.split("|", 1))
        link = {"url": where} if where.startswith("http") else {"doi": spec.Doi(where.removeprefix("doi:"))}
        entries.append(spec.CiteEntry(text=text, **link))
    return entries


def _save(descr, out: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    from ..io import atomic_path

    with atomic_path(out) as tmp:  # tmp ends in .zip, as the writer wants
        save_bioimageio_package(descr, output_path=tmp)


def predict_with_core(package: Path, image: np.ndarray, weights: str, blocksize: int = 1) -> np.ndarray:
    """bioimageio.core's own blockwise prediction of (C, H, W) ``image`` (a 3D package's
    (C, Z, Y, X) volume) with one weight format (``pytorch_state_dict``, ``torchscript`` or
    ``onnx``) -> (C_out, H, W) (or (C_out, Z, Y, X)): the reference a package is checked against."""
    from bioimageio.core import Tensor, create_prediction_pipeline, load_model_description, predict
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec.model.v0_5 import AxisId, TensorId

    model = load_model_description(package)
    pipeline = create_prediction_pipeline(model, weight_format=weights, devices=["cpu"])
    dims = ("batch", "channel", *("z", "y", "x")[4 - image.ndim:])  # (C, H, W) or (C, Z, Y, X)
    tensor = Tensor.from_numpy(image[None].astype(np.float32), dims=tuple(AxisId(a) for a in dims))
    sample = create_sample_for_model(model, inputs={TensorId("image"): tensor}, sample_id="check")
    out = predict(model=pipeline, inputs=sample, blocksize_parameter=blocksize)
    return out.members[TensorId("probability")].data.to_numpy()[0]


# --- reading a package back ----------------------------------------------------------------

def load_package(path: Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """A package from `unetile export --format bioimageio` -> (model, metadata), as from its
    checkpoint; another package, or one that is damaged or unsafe -> one line naming it."""
    import yaml

    if not path.is_file():
        raise UserInputError(f"{path}: no such model file")
    with reading(path, "not a readable BioImage.IO package"):
        archive = zipfile.ZipFile(path)
    with archive:
        with reading(path, "not a readable BioImage.IO package"):  # only the decoders are inside `reading`
            rdf = yaml.safe_load(archive.read("rdf.yaml"))
        record, weights = _own_config(rdf, path), _weights_file(rdf, path)
        with reading(path, f"cannot read {weights}"), archive.open(weights) as member:
            state = safe_torch_load(member, f"{path}:{weights}")
    record = {"config": record.get("config"), "metadata": record.get("metadata", {}), "state_dict": state}
    check_record(record, f"{path} (config.{CONFIG_KEYS[0]} and {weights})")
    net_state = {k.removeprefix("net."): v for k, v in state.items()}  # PackagedNet's keys -> the UNet's
    model = rebuild({**record, "state_dict": net_state}, f"{path}: the package's weights do not fit its config")
    return model.to(device).eval(), dict(record["metadata"])


def _weights_file(rdf: dict, path: Path) -> str:
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict") or {}
    source = weights.get("source") if isinstance(weights, dict) else None
    if not isinstance(source, str):
        raise UserInputError(f"{path}: the package has no weights.pytorch_state_dict file")
    return source


def _own_config(rdf: object, path: Path) -> dict:
    """This tool's record in an rdf.yaml (config.unetile, or config.unet before the rename)."""
    config = rdf.get("config") if isinstance(rdf, dict) else None
    config = config if isinstance(config, dict) else {}
    # ours: a mapping with the net's config (another tool may use a key "unet" too)
    record = next((config[key] for key in CONFIG_KEYS if isinstance(config.get(key), dict)
                   and isinstance(config[key].get("config"), dict)), None)
    if record is None:
        raise UserInputError(f"{path}: a BioImage.IO model without this tool's config.{CONFIG_KEYS[0]} (not made "
                             "by `unetile export`); run it with bioimageio.core (`bioimageio predict`)")
    return record
