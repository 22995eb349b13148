"""The flips and 90-degree rotations that training augments with and ``--tta`` averages over.

A symmetry is a pair (k, flip): mirror left-right if ``flip``, then rotate by k x 90
degrees (as ``numpy.rot90`` / ``torch.rot90``). Three groups:

- ``dihedral``: all 8 symmetries of the square (the paper's augmentation and averaging);
- ``horizontal``: the identity and the left-right mirror;
- ``none``: the identity only.

Why not always all 8: hand-drawn labels often sit a fraction of a pixel off the image's
edges in one direction (the ISBI 2012 membranes are drawn about half a pixel above the dark
lines they trace). A net shown rotated and upside-down copies cannot learn such an offset,
because it no longer knows which way is up, and averaging over rotations at prediction
smears it out again. The default corrects the offset instead (registration.py: the images
are resampled onto the labels' grid), so all 8 stay true symmetries; ``horizontal`` or
``none`` let the net learn an offset itself. Training and TTA use the same group, stored
with the model.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserInputError

Symmetry = tuple[int, bool]

GROUPS: dict[str, tuple[Symmetry, ...]] = {
    "dihedral": tuple((k, f) for f in (False, True) for k in range(4)),
    "horizontal": ((0, False), (0, True)),
    "none": ((0, False),),
}


def group(name: str) -> tuple[Symmetry, ...]:
    """The symmetries of a group by name (see the module docstring)."""
    if name not in GROUPS:
        raise UserInputError(f"--flips {name}: choose one of {', '.join(GROUPS)}")
    return GROUPS[name]


def apply(x: np.ndarray | torch.Tensor, s: Symmetry) -> np.ndarray | torch.Tensor:
    """Transform the last two axes of an array or tensor (..., H, W) by the symmetry ``s``."""
    k, flip = s
    if isinstance(x, torch.Tensor):
        x = torch.flip(x, dims=(-1,)) if flip else x
        return torch.rot90(x, k, dims=(-2, -1))
    x = x[..., ::-1] if flip else x
    return np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))


def undo(x: torch.Tensor, s: Symmetry) -> torch.Tensor:
    """The inverse of `apply`: undo(apply(x, s), s) == x."""
    k, flip = s
    x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def turn_vectors(vectors: np.ndarray | torch.Tensor, symmetry: Symmetry,
                 inverse: bool = False) -> np.ndarray | torch.Tensor:
    """The components (..., 2, H, W) (y, x) of vectors in an image that `apply` transformed by
    ``symmetry`` (a flows net's output, flows.py): the flip negates x, each rotation sends
    (y, x) to (-x, y). ``inverse``: the components back (`undo`).
    Only the components change; where the vectors sit is the caller's (`apply`)."""
    k, flip = symmetry
    y, x = vectors[..., 0, :, :], vectors[..., 1, :, :]
    if not inverse and flip:
        x = -x
    for _ in range(k % 4):
        y, x = (-x, y) if not inverse else (x, -y)
    if inverse and flip:
        x = -x
    stack = torch.stack if isinstance(vectors, torch.Tensor) else np.stack
    return stack([y, x], -3)


# Volumes (Z, Y, X): the in-plane group acts on (y, x) as above; a z flip joins it (sections
# have no up or down that a label could sit off by), and where the voxels are isotropic the
# axes may also be swapped, so that rotations across z join as well (the cube's 48 symmetries
# with ``dihedral``). Along a coarse z a swap would mix sampling densities: never there.
#: Axis orders a volume symmetry may first put (z, y, x) into: kept, z <-> y, z <-> x. With
#: the in-plane transpose (in ``dihedral``) these give all 6 orders of the three axes.
AXIS_ORDERS = ((0, 1, 2), (1, 0, 2), (2, 1, 0))
VolumeSymmetry = tuple[int, bool, Symmetry]  # (AXIS_ORDERS index, flip z, the in-plane symmetry)
VOLUME_IDENTITY: VolumeSymmetry = (0, False, (0, False))


def volume_group(flips: str, axis_swaps: bool = False) -> tuple[VolumeSymmetry, ...]:
    """The symmetries of a volume for the in-plane group ``flips``: those times a z flip
    (none for ``none``), and with ``axis_swaps`` (isotropic voxels, cubic tiles; ``dihedral``
    only) times the swaps of z with y or x: 48 symmetries, the cube's."""
    plane = group(flips)
    z_flips = (False,) if flips == "none" else (False, True)
    orders = range(len(AXIS_ORDERS)) if axis_swaps and flips == "dihedral" else (0,)
    return tuple((order, z_flip, s) for order in orders for z_flip in z_flips for s in plane)


def apply_volume(x: np.ndarray, s: VolumeSymmetry) -> np.ndarray:
    """Transform the last three axes of an array (..., Z, Y, X) by the volume symmetry ``s``:
    reorder the axes, flip z, then the in-plane symmetry (`apply`) on the last two."""
    order, z_flip, plane = s
    lead = x.ndim - 3
    x = np.transpose(x, (*range(lead), *(lead + a for a in AXIS_ORDERS[order])))
    return apply(x[..., ::-1, :, :] if z_flip else x, plane)
