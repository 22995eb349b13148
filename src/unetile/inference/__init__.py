"""From a trained net to segmented files: the overlap-tile algorithm (`tiling`), a predictor
that holds a loaded model and its stored settings (`predictor`), `unetile predict` over files
(`predict`), resumable TIFF streaming, cells from probabilities (`instances`), export to
ONNX / TorchScript, and the speed benchmark."""
