"""U-Net (Ronneberger, Fischer, Brox 2015) for microscopy: train, segment any size, evaluate."""

from .checkpoint import load_model, save_model
from .errors import UserInputError
from .geometry import halo, output_size, valid_input_size
from .model import UNet, UNetConfig, init_he, probabilities
from .normalization import Normalization
from .tiling import predict_tiled

__version__ = "0.1.0"

__all__ = [
    "UNet",
    "UNetConfig",
    "Normalization",
    "UserInputError",
    "halo",
    "init_he",
    "load_model",
    "output_size",
    "predict_tiled",
    "probabilities",
    "save_model",
    "valid_input_size",
]
