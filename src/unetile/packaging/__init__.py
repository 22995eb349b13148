"""Models for other tools: ONNX, TorchScript and BioImage.IO packages, their model cards."""
