"""Named training recipes. Each is a dict of `TrainConfig` fields; explicit options win.

- ``fast`` (default): tuned to learn well in minutes on a laptop CPU (bf16 where the CPU
  has it): width 16, "same" padding with random 256-px tiles in batches of 4 (1.7x the
  labelled pixels per second of valid 572-px tiles, and 3.5 steps/s), all 8 flips and
  rotations, grey values and elastic deformation done in a DataLoader worker, the paper's
  border weight map (the paper's w0 = 10 with balanced classes for instance-id labels,
  where it keeps touching cells apart; for masks and membrane maps w0 = 5 without class
  balancing, so that only the thin gaps between cells weigh more: on ISBI 2012 it lowered
  the pixel error in each of three seeds against w0 = 3 balanced, 0.0662 -> 0.0659 on
  average, and the adapted Rand error, 0.077 -> 0.073), Adam with cosine decay, a moving
  average of the weights (decay 0.995), best.pt by the validation loss, and the decision
  threshold calibrated on the validation images.
  Prediction still sees full context: the tiler discards the tile border that sees zero
  padding.
  Labels drawn a fraction of a pixel off the image's grid (ISBI 2012: 0.6 px up) are
  handled by ``label_offset="auto"``: the images are resampled onto the labels' grid, in
  training and in prediction (registration.py), so that rotations stay true symmetries.
  On ISBI 2012 (15 minutes, 2 cores, ``unetile predict --tta``): pixel error 0.072-0.073 with
  the labels as drawn -> 0.067 with the offset corrected.
- ``paper``: Ronneberger et al. 2015: full width, batch 1 of large tiles, SGD with
  momentum 0.99, elastic deformation, the border weight map (w0 = 10, sigma = 5 px).
- ``seed``: the blog post this project started from: 100 epochs, batch 4, each image's
  centre crop at the valid size nearest 512 (508 -> 324), labels centre-cropped to the
  output, no augmentation, BCE, Adam.
"""

from __future__ import annotations

from ..errors import UserInputError

# What the paper trains with and `fast` keeps: the weighted loss, elastic deformation, all 8
# flips and rotations, grey-value changes.
_PAPER_TRAINING = dict(loss="weighted-ce", weight_map=True, elastic=True, flips="dihedral", grey=True)

PRESETS: dict[str, dict] = {
    "fast": dict(
        _PAPER_TRAINING,
        width=16, padding="same", dropout=0.1,  # the net
        tile_size=256, batch_size=4, samples_per_epoch=384, epochs=1000,  # tiles and schedule
        optimizer="adam", lr=2e-3, ema=0.995,  # optimisation
        # Decided from the training data (setup.py): the labels' offset; w0 = 10 and balanced
        # classes for instance-id labels, w0 = 5 unbalanced otherwise (automatic_weight_map).
        label_offset="auto", w0="auto", class_balance="auto",
    ),
    "paper": dict(
        _PAPER_TRAINING,
        width=64, padding="valid", dropout=0.5,
        tile_size=572, batch_size=1, samples_per_epoch=100, epochs=100,
        optimizer="sgd", lr=0.01, momentum=0.99,
        w0=10.0, sigma=5.0,
    ),
    "seed": dict(
        width=64, padding="valid", dropout=0.5,
        tile_size=508, batch_size=4, epochs=100,
        samples_per_epoch=0, centre_crop=True,  # one centre crop per training image
        loss="bce", weight_map=False, optimizer="adam", lr=1e-3,
        elastic=False, flips="none", grey=False,
    ),
}


#: Volumes (``dims=3``): what each preset changes from its 2D recipe (a preset not named here
#: trains volumes with its 2D settings).
#: ``fast``: the 3D U-Net in CPU minutes. Width 8 and depth 3 (Cicek et al. 2016 pool 3 times);
#: "same" padding so that the whole tile is labelled (valid convolutions at depth 3 lose 88 voxels
#: per in-plane axis: a 64-voxel tile would keep none); 64 voxels a side, a multiple of the
#: pooling grid on every axis of the anisotropic plans, in batches of 2. Why width 8 at 64^3: a
#: step of 2 x 64^3 at width 8 costs about what 2 x 48^3 costs at width 16 (4.2 against 4.4 s on one
#: core) and labels 2.4x the voxels; in 15 CPU-minutes on the PlantSeg nuclei (docs/results.md,
#: "a 3D recipe that beats the 2D maps") it made 1.8x the steps, reached a higher validation Dice,
#: and its 3D cells scored AP@0.5 0.572 +- 0.025, mean AP 0.230 (3 runs), against 0.411 +- 0.040,
#: 0.130 (3 seeds) for width 16 at 48^3. 15 minutes give a few hundred steps, hence a faster
#: weight average (0.99). Elastic displacements of 2 in-plane px on the 3 x 3 x 3
#: grid: the strain of 2D fast's 10 px over its 256-px tiles. 96 samples an epoch: 48 steps
#: between validations of ~20 s (a 100^3 volume and the BatchNorm refresh).
#: ``paper``: Cicek et al.'s 3D U-Net: width 32, depth 3, valid convolutions, 132-voxel tiles
#: (their 132 x 132 x 116 input), batch 1.
VOLUME_PRESETS: dict[str, dict] = {
    "fast": dict(width=8, depth=3, tile_size=64, batch_size=2, samples_per_epoch=96, ema=0.99, elastic_sigma=2.0,
                 label_offset="none"),
    "paper": dict(width=32, depth=3, tile_size=132, batch_size=1, samples_per_epoch=50),
}


def preset(name: str, dims: int = 2) -> dict:
    """The settings of preset ``name`` for images (``dims=2``) or volumes (3: `VOLUME_PRESETS`)."""
    if name not in PRESETS:
        raise UserInputError(f"--preset {name}: unknown; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **(VOLUME_PRESETS.get(name, {}) if dims == 3 else {})}
