import pytest
import torch

from unetile import UNet, UNetConfig, probabilities

from .conftest import tiny_unet


def test_default_is_the_paper_net():
    net = UNet()
    assert sum(p.numel() for p in net.parameters()) == 31_042_369
    assert net.config == UNetConfig(1, 1, 4, 64, "valid", True, "transpose", 0.5)
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 572, 572)).shape == (1, 1, 388, 388)
        assert net(torch.zeros(1, 1, 512, 512)).shape == (1, 1, 324, 324)


def test_structure_follows_the_paper():
    net = UNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    three = [m for m in convs if m.kernel_size == (3, 3)]
    assert len(three) == 18 and all(m.padding == (0, 0) for m in three)
    assert [m.out_channels for m in three[:10:2]] == [64, 128, 256, 512, 1024]
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.kernel_size, m.stride, m.out_channels) for m in ups] == [((2, 2), (2, 2), c) for c in (512, 256, 128, 64)]
    assert net.head.kernel_size == (1, 1)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 18
    assert isinstance(net.dropout, torch.nn.Dropout2d) and net.dropout.p == 0.5


@pytest.mark.parametrize(
    "kwargs, size, out_shape",
    [
        (dict(padding="same"), 64, (1, 1, 64, 64)),
        (dict(up_mode="bilinear", padding="same"), 32, (1, 1, 32, 32)),
        (dict(out_channels=3, depth=2), 60, (1, 3, 20, 20)),
        (dict(in_channels=3, batch_norm=False, dropout=0.0), 188, (1, 1, 4, 4)),
    ],
)
def test_options(kwargs, size, out_shape):
    net = tiny_unet(**kwargs)
    with torch.no_grad():
        y = net(torch.zeros(1, net.config.in_channels, size, size))
    assert y.shape == out_shape
    if not net.config.batch_norm:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_probabilities_sigmoid_or_softmax():
    one = probabilities(torch.zeros(2, 1, 3, 3))
    assert torch.allclose(one, torch.full_like(one, 0.5))
    many = probabilities(torch.randn(2, 4, 3, 3))
    assert torch.allclose(many.sum(1), torch.ones(2, 3, 3))


@pytest.mark.parametrize("bad", [dict(padding="full"), dict(up_mode="nearest"), dict(depth=0), dict(dropout=1.0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError):
        UNetConfig(**bad)


def test_config_round_trip_ignores_unknown_keys():
    c = UNetConfig(width=8, depth=3)
    assert UNetConfig.from_dict({**c.to_dict(), "future_option": 1}) == c


def test_folded_batch_norm_is_the_same_function():
    from unetile.nn.model import fold_batch_norm

    net = tiny_unet(width=4, depth=3).train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            net(torch.randn(2, 1, 124, 124) * 3 + 1)
    net.eval()
    folded = fold_batch_norm(net)
    assert not folded.config.batch_norm and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 1, 140, 132)
    with torch.no_grad():
        a, b = net(x), folded(x)
    assert torch.allclose(a, b, atol=1e-4 * a.abs().max().item())
