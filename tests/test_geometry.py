import pytest
from hypothesis import given
from hypothesis import strategies as st

from unetile import output_size, valid_input_size
from unetile.nn.geometry import halo, is_valid_input_size

from .conftest import tiny_unet


@pytest.mark.parametrize(
    "n, depth, padding, expected",
    [(572, 4, "valid", 388), (512, 4, "valid", 324), (508, 4, "valid", 324), (188, 4, "valid", 4),
     (204, 4, "valid", 20), (140, 3, "valid", 52), (512, 4, "same", 512), (100, 2, "same", 100)],
)
def test_output_size_table(n, depth, padding, expected):
    assert output_size(n, depth, padding) == expected


def test_valid_sizes_of_the_paper_net_are_16k_plus_188():
    valid = [n for n in range(1, 700) if is_valid_input_size(n)]
    assert valid == list(range(188, 700, 16))
    assert valid_input_size(512) == 508
    assert valid_input_size(572) == 572
    assert valid_input_size(570) == 572
    assert valid_input_size(1) == 188
    assert halo() == 92


def test_too_small_input_is_an_error():
    with pytest.raises(ValueError, match="smallest valid input is 188"):
        output_size(150)


@given(st.integers(1, 1200), st.integers(1, 5), st.sampled_from(["valid", "same"]), st.sampled_from(["transpose", "bilinear"]))
def test_valid_input_size_is_valid_and_nearest(n, depth, padding, up_mode):
    v = valid_input_size(n, depth, padding, up_mode)
    assert is_valid_input_size(v, depth, padding, up_mode)
    # No valid size strictly closer to n.
    for m in range(max(1, n - abs(v - n) + 1), n + abs(v - n)):
        if m != v and abs(m - n) < abs(v - n):
            assert not is_valid_input_size(m, depth, padding, up_mode)
    assert valid_input_size(n, depth, padding, up_mode, "up") >= n
    down = valid_input_size(n, depth, padding, up_mode, "down")
    assert down <= n or down == valid_input_size(1, depth, padding, up_mode, "up")


@given(st.integers(0, 6), st.integers(2, 3), st.sampled_from(["valid", "same"]), st.sampled_from(["transpose", "bilinear"]))
def test_model_output_matches_output_size(k, depth, padding, up_mode):
    import torch

    net = tiny_unet(depth=depth, padding=padding, up_mode=up_mode, width=2)
    n = valid_input_size(1, depth, padding, up_mode, "up") + k * 2**depth
    with torch.no_grad():
        y = net(torch.zeros(1, 1, n, n + 2**depth))
    assert y.shape[-2:] == (output_size(n, depth, padding, up_mode), output_size(n + 2**depth, depth, padding, up_mode))
    if padding == "valid":
        assert (n - y.shape[-2]) // 2 == halo(depth, padding, up_mode)
