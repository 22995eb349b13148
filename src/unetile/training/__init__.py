"""From labelled images to a checkpoint: settings and presets (`config`, `presets`), training
tiles (`data`), augmentation, the border weight map (`weights`), losses, validation with
threshold calibration (`validation`), the run folder's logs (`logbook`) and the loop (`loop`).
Images and volumes alike: ``dims=3`` trains the 3D U-Net on (C, Z, Y, X) volumes (`config.spatial_settings`)."""

from .config import TrainConfig
from .loop import train

__all__ = ["TrainConfig", "train"]
