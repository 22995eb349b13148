"""Export a trained model to ONNX or TorchScript, and run an ONNX model with the same tiling.

The exported graph takes a normalised image batch (N, C, H, W) float32 of any valid size
(dynamic height and width; a 3D net's (N, C, Z, Y, X) with dynamic depth, height and width,
each valid on its own axis) and returns probabilities (sigmoid or softmax included), so
any runtime gets exactly what `predict_tiled` computes. The checkpoint's config, threshold
and normalisation travel in the ONNX file's metadata, so `unetile predict --model m.onnx`
needs nothing else.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import UserInputError, reading
from ..io import atomic_path
from ..nn.checkpoint import check_record, load_model
from ..nn.model import UNet, UNetConfig, output_maps


class _WithProbabilities(torch.nn.Module):
    def __init__(self, model: UNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return output_maps(self.model(x), self.model.config.flows)


def export_model(model_path: str | Path, out: str | Path, fmt: str = "onnx") -> float:
    """Export ``model_path`` to ``out``; returns the max |Δprobability| of the parity check
    (the exported model against PyTorch fp32 on a random valid input)."""
    model, meta = load_model(model_path)
    wrapped = _WithProbabilities(model).eval()
    example, check = _parity_inputs(model)
    out = Path(out)
    with torch.no_grad():
        reference = wrapped(check).numpy()
    if fmt == "onnx":
        save_onnx(wrapped, example, out, {"unet_config": json.dumps(model.config.to_dict()),
                                          "unet_metadata": json.dumps(meta)})
        got = OnnxModel(out)(torch.from_numpy(check.numpy())).numpy()
    elif fmt == "torchscript":
        save_torchscript(wrapped, example, out, {"unet.json": json.dumps({"config": model.config.to_dict(),
                                                                          "metadata": meta})})
        with torch.no_grad():
            got = torch.jit.load(str(out))(check).numpy()
    else:
        raise UserInputError(f"--format {fmt}: choose onnx, torchscript or bioimageio")
    return float(np.abs(got - reference).max())


def _parity_inputs(model: UNet) -> tuple[torch.Tensor, torch.Tensor]:
    """A valid input to trace with, and a batch of two of another valid size to check on."""
    channels = model.config.in_channels
    if model.config.spatial_dims == 2:
        size = model.valid_input_size(300)
        example = torch.randn(1, channels, size, size)
        check = torch.randn(2, channels, model.valid_input_size(size + 40), size)
        return example, check
    # A volume: per axis the smallest valid size with output beyond the halo (volumes cost the
    # cube of a side), checked one grid step larger on z and x so each axis is seen to vary.
    axes = (-3, -2, -1)
    sizes = [model.valid_input_size(2 * model.axis_halo(a) + model.grid(a), "up", a) for a in axes]
    larger = [model.valid_input_size(n + (model.grid(a) if a != -2 else 0), "up", a) for n, a in zip(sizes, axes)]
    return torch.randn(1, channels, *sizes), torch.randn(2, channels, *larger)


def save_onnx(module: torch.nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, str]) -> None:
    """``module`` as ONNX (opset 17; batch and every spatial axis of ``example`` dynamic: height
    and width, and depth before them for a volume), with ``metadata``."""
    import onnx

    spatial = ("depth", "height", "width")[5 - example.dim():]  # (height, width) for an image
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        # The TorchScript-based exporter handles the data-dependent centre crops of the
        # skip connections with symbolic sizes; dynamic H and W stay dynamic.
        torch.onnx.export(
            module, (example,), str(tmp), dynamo=False, input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch", **dict(enumerate(spatial, 2))},
                          "probabilities": {0: "batch", **{i: f"out_{n}" for i, n in enumerate(spatial, 2)}}},
            opset_version=17,
        )
        proto = onnx.load(str(tmp))
        for k, v in metadata.items():
            proto.metadata_props.add(key=k, value=v)
        onnx.save(proto, str(tmp))


def save_torchscript(module: torch.nn.Module, example: torch.Tensor, out: Path, extra_files: dict[str, str]) -> None:
    """``module`` traced and frozen as TorchScript, with ``extra_files`` inside."""
    with atomic_path(out) as tmp:
        scripted = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False))
        torch.jit.save(scripted, str(tmp), _extra_files=extra_files)


class OnnxModel:
    """An exported ONNX model behind the small interface `predict_tiled` uses.

    Calling it returns probabilities (the export includes the sigmoid/softmax).
    """

    outputs_probabilities = True

    def __init__(self, path: str | Path, threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        with reading(path, "not a readable ONNX model"):
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        props = self.session.get_modelmeta().custom_metadata_map
        if "unet_config" not in props:
            raise UserInputError(f"{path}: an ONNX file not exported by `unetile export` (no unet_config)")
        with reading(path, "damaged unet_config / unet_metadata in the ONNX file"):  # JSON, kept under these keys
            self.config = UNetConfig.from_dict(json.loads(props["unet_config"]))
            self.metadata = json.loads(props.get("unet_metadata", "{}"))
        check_record({"config": self.config.to_dict(), "metadata": self.metadata, "state_dict": {}}, str(path))
        self._geometry = UNet(config=UNetConfig(**{**self.config.to_dict(), "width": 1}))  # sizes only
        self.training = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": batch.float().cpu().numpy()})[0]
        return torch.from_numpy(out)

    # The geometry `predict_tiled` needs, from a 1-channel twin of the net.
    def output_size(self, n: int, axis: int = -1) -> int:
        return self._geometry.output_size(n, axis)

    def valid_input_size(self, n: int, direction: str = "nearest", axis: int = -1) -> int:
        return self._geometry.valid_input_size(n, direction, axis)

    @property
    def halo(self) -> int:
        return self._geometry.halo

    def axis_halo(self, axis: int) -> int:
        return self._geometry.axis_halo(axis)

    def grid(self, axis: int = -1) -> int:
        return self._geometry.grid(axis)

    def eval(self) -> "OnnxModel":
        return self

    def train(self, mode: bool = True) -> "OnnxModel":
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        return self

    def parameters(self):
        return iter([torch.zeros(0)])
