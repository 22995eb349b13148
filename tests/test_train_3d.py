"""Training on volumes (issue 34, items 3-4): sparse labels, 3D tiles and augmentation, the physical
weight map, dims and voxel size chosen from the data, and a tiny 3D run end to end."""

import logging
import math

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from unetile import load_model, symmetries
from unetile.cli import main
from unetile.errors import UserInputError
from unetile.inference.tiling import predict_tiled
from unetile.nn.checkpoint import save_model
from unetile.nn.geometry import anisotropic_plan
from unetile.nn.model import UNet, UNetConfig, init_he
from unetile.normalization import Normalization
from unetile.training.augment import Augmentation, augment_region, draw_augmentation, elastic_margins
from unetile.training.config import TrainConfig, spatial_settings
from unetile.training.data import Targets, TileDataset, prepare, read_pairs, touching_borders
from unetile.training.losses import segmentation_loss
from unetile.training.validation import ValidationMap, score_validation
from unetile.training.weights import border_weight_map, nearest_two_distances


def blob_volume(seed: int, shape=(16, 32, 32), n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, instance ids uint16) of ``n`` ellipsoids, flatter along z (coarse sections)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    ids = np.zeros(shape, np.uint16)
    for k in range(1, n + 1):
        cz, cy, cx = (rng.uniform(2, s - 2) for s in shape)
        ids[((zz - cz) / 2.5) ** 2 + ((yy - cy) / 5) ** 2 + ((xx - cx) / 5) ** 2 < 1] = k
    image = ndimage.gaussian_filter((ids > 0).astype(np.float32), 1) * 180 + rng.normal(30, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8), ids


def write_volume(path, array: np.ndarray, voxel: tuple[float, float, float] | None) -> None:
    """An ImageJ TIFF volume (Z, Y, X), with its voxel size (um) in the metadata where given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if voxel is None:
        tifffile.imwrite(path, array, imagej=True, metadata={"axes": "ZYX"})
    else:
        z, y, x = voxel
        tifffile.imwrite(path, array, imagej=True, resolution=(1 / x, 1 / y),
                         metadata={"axes": "ZYX", "spacing": z, "unit": "um"})


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A training folder of two volumes and a validation folder of one, voxels 0.5 x 0.2 x 0.2 um."""
    root = tmp_path_factory.mktemp("vol")
    for folder, seeds in (("train", (0, 1)), ("val", (2,))):
        for seed in seeds:
            image, ids = blob_volume(seed)
            write_volume(root / folder / "images" / f"v{seed}.tif", image, (0.5, 0.2, 0.2))
            write_volume(root / folder / "labels" / f"v{seed}.tif", ids, (0.5, 0.2, 0.2))
    return root


def test_ignored_voxels_weigh_nothing_and_do_not_move_the_gradient():
    label = np.zeros((8, 12, 12), np.uint8)
    label[:, 3:9, 3:9] = 1
    label[4:, :, :6] = 7  # not annotated: the lower half of one side
    image = np.random.default_rng(0).normal(size=(8, 12, 12)).astype(np.float32)
    pair = [("v", image[None], label, "i.tif", "l.tif")]
    (item,) = prepare(pair, Targets(weight_map=True, w0=0.0, class_balance=True, ignore_label=7,
                      spacing=(1.0, 1.0, 1.0)))
    ignored = label == 7
    assert (item.weight[ignored] == 0).all() and (item.annotated == ~ignored).all()
    assert item.classes[ignored].max() == 0 and item.classes.max() == 1  # 7 is neither a class nor a cell
    # Class balance counts annotated voxels only: n / (2 * count) per class.
    n_fg = int(((label == 1) & ~ignored).sum())
    n_bg = int(((label == 0) & ~ignored).sum())
    n = n_fg + n_bg
    assert np.allclose(item.weight[(label == 1) & ~ignored], n / (2 * n_fg))
    assert np.allclose(item.weight[(label == 0) & ~ignored], n / (2 * n_bg))

    net = init_he(UNet(config=UNetConfig(width=4, depth=1, padding="same", spatial_dims=3, dropout=0.0)))
    x = torch.from_numpy(image)[None, None]
    w = torch.from_numpy(item.weight)[None]

    def loss_and_grad(target: np.ndarray) -> tuple[float, list[torch.Tensor]]:
        net.zero_grad()
        loss = segmentation_loss(net(x), torch.from_numpy(target)[None], w, "weighted-ce")
        loss.backward()
        return loss.item(), [p.grad.clone() for p in net.parameters()]

    changed = item.classes.copy()
    changed[ignored] = 1 - changed[ignored]  # other labels where nothing is annotated
    loss_a, grads_a = loss_and_grad(item.classes)
    loss_b, grads_b = loss_and_grad(changed)
    assert loss_a == loss_b and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    annotated_changed = item.classes.copy()
    annotated_changed[0, 0, 0] = 1  # an annotated voxel's label does change it
    assert loss_and_grad(annotated_changed)[0] != loss_a


def test_ignored_pixels_in_2d_and_the_scores_that_leave_them_out():
    label = np.array([[0, 0, 1, 1], [0, 9, 9, 1], [0, 9, 9, 1]], np.uint8)
    (item,) = prepare([("i", np.ones((1, 3, 4), np.float32), label, "i.png", "l.png")],
                      Targets(weight_map=True, w0=0.0, ignore_label=9))
    assert (item.weight[label == 9] == 0).all() and np.allclose(item.weight[label != 9], 1.0)  # 4 and 4: balanced
    truth = item.classes > 0
    wrong_where_unlabelled = np.where(label == 9, 0.9, truth * 0.8 + 0.1).astype(np.float32)
    scores = score_validation([ValidationMap("i", wrong_where_unlabelled, truth, 0.0, None, item.annotated)])
    assert scores.pixel_error == 0.0 and scores.dice == 1.0
    everywhere = score_validation([ValidationMap("i", wrong_where_unlabelled, truth, 0.0, None, None)])
    assert everywhere.pixel_error > 0


def test_weight_map_measures_distances_physically():
    cells = np.zeros((5, 3, 3), np.int32)
    cells[:2], cells[3:] = 1, 2  # two slabs with a one-section gap at z = 2
    d1, d2 = nearest_two_distances(cells, 100.0, spacing=(0.8, 0.2, 0.2))
    assert d1[2, 1, 1] == d2[2, 1, 1] == 4.0  # one section = 4 in-plane px
    d1_iso, _ = nearest_two_distances(cells, 100.0)
    assert d1_iso[2, 1, 1] == 1.0
    iso = border_weight_map(cells, w0=10, sigma=5, class_balance=False)
    aniso = border_weight_map(cells, w0=10, sigma=5, class_balance=False, spacing=(0.8, 0.2, 0.2))
    assert math.isclose(iso[2, 1, 1], 1 + 10 * math.exp(-4 / 50), rel_tol=1e-6)
    assert math.isclose(aniso[2, 1, 1], 1 + 10 * math.exp(-64 / 50), rel_tol=1e-6)
    assert aniso[0, 1, 1] == iso[0, 1, 1] == 1.0  # inside a cell: no border term


def test_touching_borders_in_3d_count_corners():
    ids = np.zeros((2, 2, 2), np.int32)
    ids[0, 0, 0], ids[1, 1, 1] = 1, 2  # touching at a corner only
    assert touching_borders(ids).sum() == 1 and touching_borders(ids)[1, 1, 1]


def test_elastic_margins_and_displacements_are_physical():
    aug = Augmentation(elastic_sigma=5.0, spacing=(4.0, 1.0, 1.0))
    assert elastic_margins(aug, 3) == (5, 20, 20)
    coarse = np.stack([draw_augmentation(np.random.default_rng(k), aug).coarse for k in range(400)])
    ratio = coarse[:, 1:].std() / coarse[:, 0].std()
    assert 3.6 < ratio < 4.4  # z displacements a quarter of the in-plane ones, in voxels


@pytest.mark.parametrize("flips", ["dihedral", "none"])
def test_3d_elastic_keeps_image_label_and_weight_aligned(flips):
    """An image equal to its label warps (trilinearly) to the soft-warped label and weight: the
    same coordinates, the same window, the same flips."""
    _, ids = blob_volume(3, shape=(14, 30, 30), n=5)
    label = (ids > 0).astype(np.float32)
    tile, out = (10, 20, 20), (6, 12, 12)
    aug = Augmentation(elastic_sigma=2.0, spacing=(2.0, 1.0, 1.0), flips=flips, grey=False, soft_labels=True)
    margins = elastic_margins(aug, 3)
    region = tuple(slice(0, t + 2 * m) for t, m in zip(tile, margins))
    image, lab, weight = augment_region(label[None][(slice(None), *region)], label[region], label[region], tile, out,
                                        margins, aug, np.random.default_rng(4))
    centre = image[0, 2:8, 4:16, 4:16]
    assert image.shape == (1, *tile) and lab.shape == out
    np.testing.assert_allclose(centre, lab, atol=1e-6)
    np.testing.assert_allclose(centre, weight, atol=1e-6)
    unwarped = label[tuple(slice(m + lo, m + lo + o) for m, lo, o in zip(margins, (2, 4, 4), out))]
    assert 0.05 < lab.mean() < 0.95 and np.abs(lab - unwarped).max() > 0.5  # the warp moved the labels
    hard = augment_region(label[None][(slice(None), *region)], label[region].astype(np.int64), label[region], tile, out,
                          margins, Augmentation(elastic_sigma=2.0, spacing=(2.0, 1.0, 1.0), flips=flips, grey=False),
                          np.random.default_rng(4))
    assert ((centre > 0.5) == (hard[1] > 0)).mean() > 0.95  # nearest labels sit where the image is


def test_volume_symmetries_rotate_across_z_only_when_allowed():
    cube = np.random.default_rng(0).normal(size=(4, 4, 4))
    for swaps, count in ((True, 48), (False, 16)):
        group = symmetries.volume_group("dihedral", swaps)
        assert len({symmetries.apply_volume(cube, s).tobytes() for s in group}) == len(group) == count
    moved = [s for s in symmetries.volume_group("dihedral") if s[0] != 0]
    assert not moved  # anisotropic voxels: z stays z (a flip at most)
    assert symmetries.apply_volume(cube, (1, False, (0, False)))[1, 2, 3] == cube[2, 1, 3]  # z <-> y
    assert len(symmetries.volume_group("none", True)) == 1


def test_volume_tile_is_a_function_of_seed_and_index():
    image, ids = blob_volume(5)
    (item,) = prepare([("v", image[None], ids, "i.tif", "l.tif")], Targets(weight_map=True, w0=10.0,
                      spacing=(0.5, 0.2, 0.2)))
    aug = Augmentation(elastic_sigma=3.0, spacing=(2.5, 1.0, 1.0))
    tiles = [TileDataset([item], (12, 20, 20), (12, 20, 20), aug, seed=s) for s in (7, 7, 8)]
    a, b, c = (ds[3] for ds in tiles)
    assert a[0].shape == (1, 12, 20, 20) and a[1].shape == a[2].shape == (12, 20, 20) and a[1].dtype == torch.int64
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], tiles[0][4][0])


def test_dims_and_voxel_size_come_from_the_data(volumes, tmp_path, caplog, isbi):
    with caplog.at_level(logging.INFO, logger="unetile.training.config"):
        assert spatial_settings(TrainConfig(data=str(volumes / "train"))) == (3, [0.5, 0.2, 0.2])
    assert "carries a z voxel size" in caplog.text
    assert spatial_settings(TrainConfig(data=str(volumes / "train"), voxel_size="1,0.5,0.5")) == (3, [1, 0.5, 0.5])
    assert spatial_settings(TrainConfig(data=str(isbi / "train"))) == (2, None)  # PNG slices stay 2D
    image, ids = blob_volume(0)
    write_volume(tmp_path / "plain" / "images" / "a.tif", image, None)
    assert spatial_settings(TrainConfig(data=str(tmp_path / "plain"))) == (2, None)  # a stack without a z size
    assert spatial_settings(TrainConfig(data=str(tmp_path / "plain"), dims=3)) == (3, None)  # isotropic, logged
    save_model(UNet(config=UNetConfig(width=4, depth=1, spatial_dims=3)), tmp_path / "m.pt", voxel_size=[2.0, 1, 1])
    from_init = TrainConfig(data=str(tmp_path / "plain"), init=str(tmp_path / "m.pt"))
    assert spatial_settings(from_init) == (3, [2.0, 1.0, 1.0])  # 3D by the model, its voxels where the files say none
    cfg = TrainConfig(data=str(volumes / "train"), preset="fast").resolved()
    assert (cfg.dims, cfg.width, cfg.depth, cfg.tile_size, cfg.label_offset) == (3, 8, 3, 64, "none")
    with pytest.raises(UserInputError, match="--tiles-on device"):
        TrainConfig(data=str(volumes / "train"), tiles_on="device").resolved()
    with pytest.raises(UserInputError, match="--zoom is for 2D images"):
        TrainConfig(data=str(volumes / "train"), zoom=2.0).resolved()
    with pytest.raises(UserInputError, match="not a volume"):
        read_pairs(isbi / "train", dims=3)


def test_train_a_3d_net_end_to_end(volumes, tmp_path):
    out = tmp_path / "run"
    assert not main(["-q", "train", "--data", str(volumes / "train"), "--val", str(volumes / "val"), "--dims", "3",
          "--voxel-size", "0.6,0.2,0.2", "--width", "4", "--depth", "2", "--tile-size", "24", "--batch-size", "1",
          "--samples-per-epoch", "2", "--epochs", "2", "--workers", "0", "--device", "cpu", "--precision", "fp32",
          "--no-calibrate-tta", "--out", str(out)])
    model, meta = load_model(out / "best.pt")
    kernels, pools = anisotropic_plan((0.6, 0.2, 0.2), 2)
    assert model.config.spatial_dims == 3 and model.config.pools == pools and model.config.kernels == kernels
    assert pools[0] == (1, 2) and meta["voxel_size"] == [0.6, 0.2, 0.2]
    assert meta["tile_size"] == [24, 24, 24] and 0 < meta["threshold"] < 1
    assert {"sigma", "seed_threshold", "min_size"} <= set(meta["instances"])  # cells chosen on the val volume
    image, _ = blob_volume(2)
    prob = predict_tiled(model, image.astype(np.float32), normalization=Normalization(), batch_size=1)
    assert prob.shape == (1, 16, 32, 32) and np.isfinite(prob).all()
    assert not main(["-q", "train", "--resume", str(out), "--epochs", "3"])  # resumes in 3D from the run folder
    assert load_model(out / "last.pt")[0].config.spatial_dims == 3
    tuned = tmp_path / "tuned"  # --init a 3D model: 3D and its plan, without --dims
    assert not main(["-q", "train", "--data", str(volumes / "train"), "--val", str(volumes / "val"), "--init",
                     str(out / "best.pt"), "--tile-size", "24", "--batch-size", "1", "--samples-per-epoch", "1",
                     "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32",
                     "--no-calibrate-tta", "--out", str(tuned)])
    model, meta = load_model(tuned / "best.pt")
    assert model.config.pools == pools and model.config.width == 4 and meta["voxel_size"] == [0.5, 0.2, 0.2]


def test_batch_norm_statistics_are_re_estimated_on_fixed_tiles():
    """`refresh_batch_norm`: the first BatchNorm's running mean and variance become the statistics
    of its inputs over exactly the fixed tiles (whatever they were before), the momentum and the
    net's mode are restored, and a second refresh gives the same numbers (exact resume)."""
    import torch

    from unetile.nn.model import UNet, UNetConfig
    from unetile.training.validation import REFRESH_INDEX, refresh_batch_norm

    torch.manual_seed(0)
    net = UNet(config=UNetConfig(width=4, depth=1, spatial_dims=3, padding="same")).train()
    tiles = {REFRESH_INDEX + i: (torch.randn(1, 8, 8, 8) * (i + 1),) for i in range(5)}
    first_norm = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    first_norm.running_mean.fill_(7.0)
    refresh_batch_norm(net, tiles, batch_size=2, device=torch.device("cpu"), tiles=5)
    with torch.no_grad():
        conv_out = net.down[0][0](torch.stack([t[0] for t in tiles.values()]))
    # a cumulative average over the batches (2, 2, 1 tiles), each batch's mean weighted alike
    batches = [conv_out[0:2], conv_out[2:4], conv_out[4:5]]
    cumulative = torch.stack([b.mean(dim=(0, 2, 3, 4)) for b in batches]).mean(0)
    assert torch.allclose(first_norm.running_mean, cumulative, atol=1e-5)
    assert first_norm.momentum == 0.1 and net.training
    again = first_norm.running_mean.clone()
    refresh_batch_norm(net, tiles, batch_size=2, device=torch.device("cpu"), tiles=5)
    assert torch.equal(first_norm.running_mean, again)
