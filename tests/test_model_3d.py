"""The 3D U-Net (Cicek et al. 2016) from the same code as the 2D one: shapes, per-axis
geometry (anisotropic plans), exact shift-equivariance on the pooling grid (what makes 3D
tiles seamless), BatchNorm folding, configs that survive a checkpoint."""

import numpy as np
import pytest
import torch

from unetile import UNet, UNetConfig, init_he
from unetile.nn.checkpoint import load_model, save_model
from unetile.nn.geometry import anisotropic_plan, halo, output_size, valid_input_size
from unetile.nn.model import fold_batch_norm


def net_3d(seed: int = 0, **kwargs) -> UNet:
    torch.manual_seed(seed)
    kwargs = {"width": 2, "depth": 2, "spatial_dims": 3, **kwargs}
    return init_he(UNet(config=UNetConfig(**kwargs))).eval()


def test_anisotropic_plans_by_hand():
    kernels, pools = anisotropic_plan((1.0, 1.0, 1.0), depth=2)
    assert kernels == ((3, 3, 3),) * 3 and pools == ((2, 2),) * 3  # isotropic: the paper's plan
    kernels, pools = anisotropic_plan((4.0, 1.0, 1.0), depth=3)  # z 4x coarser: skipped at level 0 only
    assert kernels == ((1, 3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3)) and pools == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    kernels, pools = anisotropic_plan((10.0, 1.0, 1.0), depth=3)  # 10 > 2, 4, 8: joins only at the bottom
    assert kernels[0] == (1, 1, 1, 3) and pools[0] == (1, 1, 1)
    kernels, pools = anisotropic_plan((2.0, 1.0, 1.0), depth=2)  # within a factor 2: isotropic plan
    assert pools == ((2, 2),) * 3


@pytest.mark.parametrize("padding, up_mode", [("valid", "transpose"), ("valid", "bilinear"), ("same", "transpose")])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
def test_output_shapes_follow_the_per_axis_geometry(padding, up_mode, spacing):
    kernels, pools = anisotropic_plan(spacing, depth=2)
    net = net_3d(padding=padding, up_mode=up_mode, kernels=kernels, pools=pools)
    wanted = (20, 45, 41)
    sizes = tuple(net.valid_input_size(n, "up", axis) for n, axis in zip(wanted, (-3, -2, -1)))
    with torch.no_grad():
        out = net(torch.randn(1, 1, *sizes))
    expected = tuple(net.output_size(n, axis) for n, axis in zip(sizes, (-3, -2, -1)))
    assert tuple(out.shape[2:]) == expected
    if padding == "same":
        assert expected == sizes
    for n, axis in zip(sizes, (-3, -2, -1)):  # a valid size loses exactly twice the axis's halo
        assert padding == "same" or n - net.output_size(n, axis) == 2 * net.axis_halo(axis)


def test_a_skipped_axis_has_a_smaller_halo_and_a_finer_grid():
    kernels, pools = anisotropic_plan((4.0, 1.0, 1.0), depth=2)
    net = net_3d(kernels=kernels, pools=pools)
    assert net.grid(-3) == 2 and net.grid(-1) == 4  # z pooled once, y and x twice
    assert net.axis_halo(-3) < net.axis_halo(-1)
    assert net.axis_halo(-1) == halo(2)  # in-plane: the 2D net's
    assert output_size(valid_input_size(30, 2), 2) == net.output_size(valid_input_size(30, 2), -1)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
def test_shifts_on_the_grid_give_the_same_voxels_and_off_the_grid_do_not(spacing):
    """The property seamless tiling rests on, in 3D: a sub-volume whose origin is a multiple
    of each axis's grid computes exactly the voxels of one pass over the whole volume."""
    kernels, pools = anisotropic_plan(spacing, depth=2)
    net = net_3d(seed=1, kernels=kernels, pools=pools)
    axes = (-3, -2, -1)
    wanted = (24 if spacing[0] > 2 else 56, 56, 56)  # a skipped z needs fewer sections
    whole = tuple(net.valid_input_size(n, "up", a) for n, a in zip(wanted, axes))
    volume = torch.randn(1, 1, *whole)
    with torch.no_grad():
        reference = net(volume)[0, 0]
    for shift in ((1, 1, 1), (0, 1, 2)):  # in grid steps per axis
        offset = tuple(s * net.grid(a) for s, a in zip(shift, axes))
        sub = tuple(net.valid_input_size(n - o, "down", a) for n, o, a in zip(whole, offset, axes))
        crop = volume[(..., *(slice(o, o + n) for o, n in zip(offset, sub)))]
        with torch.no_grad():
            out = net(crop)[0, 0]
        same_voxels = reference[tuple(slice(o, o + n) for o, n in zip(offset, out.shape))]
        assert torch.allclose(out, same_voxels, atol=1e-5), shift
    # one voxel off the grid in x: the poolings no longer line up and the voxels differ
    sub = tuple(net.valid_input_size(n - 4, "down", a) for n, a in zip(whole, axes))
    with torch.no_grad():
        off = net(volume[..., 4 : 4 + sub[0], 4 : 4 + sub[1], 5 : 5 + sub[2]])[0, 0]
    shifted = reference[4 : 4 + off.shape[0], 4 : 4 + off.shape[1], 5 : 5 + off.shape[2]]
    assert (off - shifted).abs().max() > 1e-3


def test_folded_batch_norm_computes_the_same_in_3d():
    net = net_3d(seed=2, kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3)), pools=((1, 2), (2, 2), (2, 2)))
    for module in net.modules():  # BatchNorm with statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    volume = torch.randn(1, 1, *(net.valid_input_size(n, "up", a) for n, a in ((10, -3), (40, -2), (40, -1))))
    with torch.no_grad():
        assert torch.allclose(fold_batch_norm(net)(volume), net(volume), atol=1e-5)


def test_a_3d_config_survives_a_checkpoint(tmp_path):
    net = net_3d(kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3)), pools=((1, 2), (2, 2), (2, 2)), up_mode="bilinear")
    save_model(net, tmp_path / "m.pt")
    back, _ = load_model(tmp_path / "m.pt")
    assert back.config == net.config and back.config.kernels[0] == (1, 3, 3)
    volume = torch.randn(1, 1, *(net.valid_input_size(n, "up", a) for n, a in ((8, -3), (30, -2), (30, -1))))
    with torch.no_grad():
        assert torch.equal(back(volume), net(volume))


@pytest.mark.parametrize("bad", [dict(spatial_dims=4), dict(pools=((2, 2),) * 2),
                                 dict(kernels=((3, 3, 2),) * 3), dict(pools=((2, 3),) * 3)])
def test_bad_3d_configs_are_refused(bad):
    with pytest.raises(ValueError):
        UNetConfig(depth=2, **{"spatial_dims": 3, **bad})


def test_the_2d_net_keeps_its_layer_names_and_size():
    """Checkpoints of 2D nets load by name: the 3D work must not rename a 2D layer."""
    net = UNet()
    names = list(net.state_dict())
    assert names[:3] == ["down.0.0.weight", "down.0.0.bias", "down.0.1.weight"] and names[-2:] == ["head.weight",
                                                                                                     "head.bias"]
    assert sum(p.numel() for p in net.parameters()) == 31_042_369
    assert np.all([isinstance(m, torch.nn.Conv2d) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
                   and not isinstance(m, torch.nn.ConvTranspose2d)])


# --- tiles in 3D: the 2D proof (tiled == one pass over the mirror-extended input), in 3D ---

def _one_pass(net: UNet, volume: np.ndarray) -> np.ndarray:
    """The net over the whole volume, mirror-extended by each axis's context, in one pass."""
    from unetile.inference.layout import _context_and_kept

    pads, sizes = [], []
    for axis, length in zip((-3, -2, -1), volume.shape):
        context = _context_and_kept(net, net.valid_input_size(1, "up", axis), axis)[0]
        size = net.valid_input_size(length + 2 * context, "up", axis)
        pads.append((context, size - length - context))
        sizes.append(size)
    extended = np.pad(volume, pads, mode="reflect")
    with torch.no_grad():
        probs = torch.sigmoid(net(torch.from_numpy(extended)[None, None].float()))[0, 0].numpy()
    if net.config.padding == "same":
        probs = probs[tuple(slice(before, before + n) for (before, _), n in zip(pads, volume.shape))]
    return probs[tuple(slice(0, n) for n in volume.shape)]


def _smallest_tile(net: UNet, axis: int) -> int:
    """The smallest tile that keeps at least one grid step of output along ``axis``."""
    from unetile.inference.layout import _context_and_kept

    n = net.valid_input_size(1, "up", axis)
    while _context_and_kept(net, n, axis)[1] < net.grid(axis):
        n = net.valid_input_size(n + 1, "up", axis)
    return n


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0)])
def test_tiled_volumes_equal_one_pass_whatever_the_tiles(padding, spacing):
    from unetile import predict_tiled

    kernels, pools = anisotropic_plan(spacing, depth=2)
    net = net_3d(seed=3, padding=padding, kernels=kernels, pools=pools)
    volume = np.random.default_rng(0).normal(size=(15, 37, 30)).astype(np.float32)
    small = tuple(net.valid_input_size(_smallest_tile(net, axis) + 2 * net.grid(axis), "up", axis)
                  for axis in (-3, -2, -1))  # several tiles on every axis
    from unetile.inference.tiling import image_layouts

    assert all(len(layout.origins) > 1 for layout in image_layouts(net, volume.shape, small))  # seams on every axis
    tiled_small = predict_tiled(net, volume, tile_size=small, batch_size=3)[0]
    tiled_default = predict_tiled(net, volume)[0]
    assert tiled_small.shape == volume.shape
    assert np.abs(tiled_small - tiled_default).max() < 1e-5  # any tiles, any batch
    if padding == "valid":  # the reference pass is only defined for valid convolutions' context
        assert np.abs(tiled_small - _one_pass(net, volume)).max() < 1e-5


def test_3d_tta_averages_in_plane_and_stays_seamless():
    from unetile import predict_tiled

    net = net_3d(seed=4)
    volume = np.random.default_rng(1).normal(size=(10, 30, 30)).astype(np.float32)
    small = tuple(net.valid_input_size(_smallest_tile(net, axis) + 2 * net.grid(axis), "up", axis)
                  for axis in (-3, -2, -1))
    plain, tta = predict_tiled(net, volume)[0], predict_tiled(net, volume, tta=True)[0]
    assert np.abs(predict_tiled(net, volume, tta=True, tile_size=small)[0] - tta).max() < 1e-5
    assert np.abs(tta - plain).max() > 1e-4  # it did average something
