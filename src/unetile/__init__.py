"""U-Net (Ronneberger, Fischer, Brox 2015) for microscopy: train, segment any size, evaluate.

The package is laid out by stage of the data flow (docs/architecture.md):
``nn`` (the network), ``training``, ``inference`` and ``evaluation``; what every stage
shares (io, normalisation, flips, label offsets, devices, processes, errors) sits here.
"""

from .errors import UserInputError
from .evaluation import metrics
from .inference.predictor import PredictOptions, Predictor
from .inference.tiling import predict_tiled
from .nn.checkpoint import load_model, save_model
from .nn.geometry import halo, output_size, valid_input_size
from .nn.model import UNet, UNetConfig, init_he, probabilities
from .normalization import Normalization

__version__ = "0.1.0"

__all__ = [
    "UNet",
    "UNetConfig",
    "Normalization",
    "PredictOptions",
    "Predictor",
    "UserInputError",
    "halo",
    "init_he",
    "load_model",
    "metrics",
    "output_size",
    "predict_tiled",
    "probabilities",
    "save_model",
    "valid_input_size",
]
